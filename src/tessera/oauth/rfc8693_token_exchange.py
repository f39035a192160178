"""OAuth 2.0 Token Exchange — https://www.rfc-editor.org/rfc/rfc8693

The protocol rules only: request parameters (§2.1), the `act` claim and its nesting (§4.1),
scope narrowing, and the error codes (§2.2.2). The grant handler in `oauth.lifecycle` supplies
the storage and the delegation rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from tessera.errors import InvalidRequest, OAuthError

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
REFRESH_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:refresh_token"
# Token types a subject or actor token may have: Tessera access tokens (JWTs). Federated
# subject tokens (an external issuer's JWT or ID token) plug in through `SubjectTokenResolver`.
SUBJECT_TOKEN_TYPES = frozenset({ACCESS_TOKEN_TYPE, JWT_TYPE})
# §2.2.1: what this server issues.
ISSUED_TOKEN_TYPES = frozenset({ACCESS_TOKEN_TYPE})


@dataclass(frozen=True)
class ExchangeRequest:
    """§2.1 parameters, checked for presence and form."""

    subject_token: str
    subject_token_type: str
    actor_token: str | None
    actor_token_type: str | None
    requested_token_type: str
    scope: str | None
    audiences: list[str]
    resources: list[str]


def parse(form: dict[str, str], resources: list[str]) -> ExchangeRequest:
    subject_token = form.get("subject_token")
    subject_token_type = form.get("subject_token_type")
    # §2.1: subject_token and subject_token_type are REQUIRED.
    if not subject_token or not subject_token_type:
        raise InvalidRequest("subject_token and subject_token_type are required")
    if subject_token_type not in SUBJECT_TOKEN_TYPES:
        raise InvalidRequest("unsupported subject_token_type")
    actor_token = form.get("actor_token") or None
    actor_token_type = form.get("actor_token_type") or None
    # §2.1: actor_token_type is REQUIRED when actor_token is present, and MUST NOT be
    # included otherwise.
    if (actor_token is None) != (actor_token_type is None):
        raise InvalidRequest("actor_token and actor_token_type go together")
    if actor_token_type is not None and actor_token_type not in SUBJECT_TOKEN_TYPES:
        raise InvalidRequest("unsupported actor_token_type")
    requested = form.get("requested_token_type") or ACCESS_TOKEN_TYPE
    if requested not in ISSUED_TOKEN_TYPES:
        raise InvalidRequest("unsupported requested_token_type")
    audience = form.get("audience")
    audiences = [audience] if audience else []
    for r in resources:
        parts = urlsplit(r)
        # §2.1: resource is an absolute URI without a fragment (as in RFC 8707).
        if not parts.scheme or parts.fragment:
            raise OAuthError("invalid_target", "resource must be an absolute URI")
    return ExchangeRequest(subject_token, subject_token_type, actor_token, actor_token_type,
                           requested, form.get("scope"), audiences, list(resources))


def act_depth(act: Any) -> int:
    """How many actors a nested `act` claim holds (0 for none)."""
    depth = 0
    while isinstance(act, dict):
        depth += 1
        act = act.get("act")
    return depth


def nest_act(actor: dict[str, Any], previous: dict[str, Any] | None,
             max_depth: int) -> dict[str, Any]:
    """§4.1: the current actor is outermost; earlier actors nest inside it."""
    act = dict(actor)
    if previous:
        act["act"] = previous
    if act_depth(act) > max_depth:
        # §2.2.2: unacceptable by policy -> invalid_request.
        raise InvalidRequest("delegation chain exceeds the allowed depth")
    return act


def narrow_scope(requested: str | None, subject_scope: str | None,
                 actor_allowed: list[str]) -> str:
    """The intersection of the subject token's scope, the actor's rights and the request."""
    available = set((subject_scope or "").split()) & set(actor_allowed)
    if requested is None:
        granted = sorted(available)
    else:
        wanted = [s for s in requested.split(" ") if s]
        if not wanted:
            raise OAuthError("invalid_scope", "scope is malformed")
        outside = sorted(set(wanted) - available)
        if outside:
            raise OAuthError("invalid_scope",
                             f"scope exceeds what may be delegated: {' '.join(outside)}")
        granted = list(dict.fromkeys(wanted))
    if not granted:
        raise OAuthError("invalid_scope", "no scope can be delegated")
    return " ".join(granted)
