"""JWT client authentication, `private_key_jwt` — https://www.rfc-editor.org/rfc/rfc7523#section-2.2

Also RFC 7521 §4.2 (parameters) and §5.2 (assertion content). Every failure raises
`InvalidClient` with the same message: the client learns nothing about which check failed.
The precise reason goes to the audit log through `AssertionRejected.reason`.
"""

from __future__ import annotations

import json
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import JWKRegistry, Key

from tessera.errors import InvalidClient
from tessera.identity.jwk_policy import algorithms_for
from tessera.jwt_peek import MalformedJWT, PeekedJWS, peek_compact, valid_jti
from tessera.oauth.ports import Client, ClientKey, ClientStore, ReplayCache
from tessera.text import identifier

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# Asymmetric algorithms only: `none` and HMAC (the key-confusion attack) never verify.
ASSERTION_ALGS = frozenset({"ES256", "ES384", "ES512", "EdDSA", "Ed25519", "RS256", "RS384",
                            "RS512", "PS256", "PS384", "PS512"})
MAX_ASSERTION_BYTES = 8 * 1024
# joserfc's algorithm objects, used directly: `peek_compact` has already applied every header
# rule `jws.validate_compact` would (its registry check), and `verify_signature` does the rest
# of what it does (the key check, then the algorithm's verify), without its per-call overhead.
_ALGORITHMS = {alg: jws.JWSRegistry.algorithms[alg] for alg in ASSERTION_ALGS
               if alg in jws.JWSRegistry.algorithms}
_IMPORTED_MAX = 4096
# id(jwk) -> (jwk, key): the registry's views hand out the same JWK dict for as long as they are
# cached, so the dict itself identifies the import; keeping the dict in the value keeps its id
# from being reused while the entry lives. (Such dicts are never mutated.)
_imported: dict[int, tuple[dict[str, Any], Key]] = {}


@lru_cache(maxsize=_IMPORTED_MAX)
def _import_cached(jwk_json: str) -> Key:
    return JWKRegistry.import_key(json.loads(jwk_json))


def import_public_key(jwk: dict[str, Any]) -> Key:
    """Import a registered public JWK once and reuse it (imports cost as much as a verify)."""
    hit = _imported.get(id(jwk))
    if hit is not None and hit[0] is jwk:
        return hit[1]
    key = _import_cached(json.dumps(jwk, sort_keys=True))
    if len(_imported) >= _IMPORTED_MAX:
        _imported.clear()
    _imported[id(jwk)] = (jwk, key)
    return key


def verify_signature(peeked: PeekedJWS, alg: str, key: Key) -> bool:
    """The JWS's signature checks out with `key` under `alg` (an `ASSERTION_ALGS` member,
    which the header must name; `peek_compact` checked the rest of the header)."""
    algorithm = _ALGORITHMS.get(alg)
    if algorithm is None or peeked.header.get("alg") != alg:
        return False
    try:
        algorithm.check_key(key)  # key type, curve, its own `use` and `alg`
        return bool(algorithm.verify(peeked.signing_input, peeked.signature, key))
    except (JoseError, ValueError, TypeError):
        return False


class AssertionRejected(InvalidClient):
    """Uniform `invalid_client` to the caller; `reason` is for the audit log only."""

    def __init__(self, reason: str, client_id: str | None = None) -> None:
        super().__init__()
        self.reason = reason
        self.client_id = client_id


@dataclass
class AuthenticatedClient:
    client: Client
    key: ClientKey
    method: str
    claims: dict[str, Any]


def _int_claim(claims: dict[str, Any], name: str) -> int | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AssertionRejected(f"{name} is not a number")
    try:
        return int(value)
    except (ValueError, OverflowError) as exc:  # NaN, Infinity (peek_compact refuses them too)
        raise AssertionRejected(f"{name} is not a finite number") from exc


class ClientAssertionVerifier:
    """Checks a client assertion against the client's registered keys and the replay cache."""

    def __init__(self, clients: ClientStore, replay: ReplayCache, *, audiences: AbstractSet[str],
                 max_age: int = 300, leeway: int = 30) -> None:
        self._clients = clients
        self._replay = replay
        self._audiences = audiences
        self._max_age = max_age
        self._leeway = leeway

    def authenticate(self, form: dict[str, str], now: datetime) -> AuthenticatedClient:
        assertion_type = form.get("client_assertion_type")
        assertion = form.get("client_assertion")
        if assertion_type is None and assertion is None:
            raise AssertionRejected("no client authentication")
        if assertion_type != ASSERTION_TYPE or not assertion:
            raise AssertionRejected("unsupported client_assertion_type")
        if len(assertion) > MAX_ASSERTION_BYTES:
            raise AssertionRejected("assertion too large")
        try:
            peeked = peek_compact(assertion, ASSERTION_ALGS)
        except MalformedJWT as exc:
            raise AssertionRejected(str(exc)) from exc
        header, claims = peeked.header, peeked.claims
        alg = header["alg"]
        iss, sub = claims.get("iss"), claims.get("sub")
        if not isinstance(iss, str) or iss != sub:
            raise AssertionRejected("iss and sub must both be the client id")
        if not identifier(iss):
            # No client id holds a control character or a NUL (PostgreSQL could not even be
            # asked): refused like an unknown client, before any lookup.
            raise AssertionRejected("iss is not a possible client id", iss)
        form_client = form.get("client_id")
        if form_client is not None and form_client != iss:
            raise AssertionRejected("client_id does not match the assertion", iss)
        client = self._clients.find_client(iss)
        if client is None:
            raise AssertionRejected("unknown client", iss)
        if not client.usable:
            raise AssertionRejected("client is not active", iss)
        kid = header.get("kid")
        if kid is not None and not identifier(kid):
            raise AssertionRejected("kid is not a possible key id", iss)
        keys = self._clients.client_keys(client, kid)
        if not keys:
            raise AssertionRejected("no usable key" + (f" with kid {kid}" if kid else ""), iss)
        verified: dict[str, Any] | None = None
        used: ClientKey | None = None
        for key in keys:
            if alg not in algorithms_for(key.jwk):
                continue
            # `claims` came from this very payload: they are verified once the signature is.
            if verify_signature(peeked, alg, import_public_key(key.jwk)):
                verified, used = claims, key
                break
        if verified is None or used is None:
            raise AssertionRejected("signature does not verify with a registered key", iss)
        self._check_claims(verified, now, iss)
        return AuthenticatedClient(client=client, key=used, method="private_key_jwt",
                                   claims=verified)

    def _check_claims(self, claims: dict[str, Any], now: datetime, client_id: str) -> None:
        ts = now.timestamp()  # compared with the claims' seconds: no datetime per claim
        aud = claims.get("aud")
        if isinstance(aud, str):
            ours = aud in self._audiences
        else:
            ours = isinstance(aud, list) and any(isinstance(a, str) and a in self._audiences
                                                 for a in aud)
        if not ours:
            raise AssertionRejected("aud is not this server", client_id)
        exp = _int_claim(claims, "exp")
        iat = _int_claim(claims, "iat")
        nbf = _int_claim(claims, "nbf")
        if exp is None:
            raise AssertionRejected("missing exp", client_id)
        if exp <= ts:
            raise AssertionRejected("assertion expired", client_id)
        if iat is not None:
            if iat > ts + self._leeway:
                raise AssertionRejected("iat is in the future", client_id)
            if exp - iat > self._max_age:
                raise AssertionRejected("assertion lifetime exceeds the maximum", client_id)
        elif exp - ts > self._max_age:
            raise AssertionRejected("assertion lifetime exceeds the maximum", client_id)
        if nbf is not None and nbf > ts + self._leeway:
            raise AssertionRejected("assertion not yet valid", client_id)
        jti = claims.get("jti")
        if not valid_jti(jti):
            raise AssertionRejected("missing or invalid jti", client_id)
        # RFC 7523 §3 item 7: a jti is single-use until the assertion expires.
        expires = datetime.fromtimestamp(exp + self._leeway, UTC)
        if not self._replay.use_once(client_id, jti, expires):
            raise AssertionRejected("jti replayed", client_id)
