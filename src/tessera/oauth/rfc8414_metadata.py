"""OAuth 2.0 Authorization Server Metadata — https://www.rfc-editor.org/rfc/rfc8414

Advertises exactly what this server supports, nothing more.
"""

from __future__ import annotations

from typing import Any

from tessera.oauth.rfc7523_client_assertion import ASSERTION_ALGS
from tessera.oauth.rfc9449_dpop import ASYMMETRIC_ALGS


def metadata(issuer: str, *, grant_types: list[str] | None = None,
             dpop_algs: list[str] | None = None, auth_methods: list[str] | None = None,
             certificate_bound_tokens: bool = False) -> dict[str, Any]:
    auth_methods = list(auth_methods or ["private_key_jwt"])
    auth_algs = sorted(ASSERTION_ALGS)
    doc: dict[str, Any] = {
        "issuer": issuer,
        "token_endpoint": f"{issuer}/oauth2/token",
        "jwks_uri": f"{issuer}/oauth2/jwks",
        "grant_types_supported": sorted(grant_types or ["client_credentials"]),
        "token_endpoint_auth_methods_supported": auth_methods,
        "token_endpoint_auth_signing_alg_values_supported": auth_algs,
        "response_types_supported": [],
        "scopes_supported": [],
    }
    if grant_types is not None:
        # RFC 7662 §4 / RFC 8414 §2: introspection endpoint and its client authentication.
        doc["introspection_endpoint"] = f"{issuer}/oauth2/introspect"
        doc["introspection_endpoint_auth_methods_supported"] = auth_methods
        doc["introspection_endpoint_auth_signing_alg_values_supported"] = auth_algs
        # RFC 7009 §4 / RFC 8414 §2: revocation endpoint and its client authentication.
        doc["revocation_endpoint"] = f"{issuer}/oauth2/revoke"
        doc["revocation_endpoint_auth_methods_supported"] = auth_methods
        doc["revocation_endpoint_auth_signing_alg_values_supported"] = auth_algs
    if certificate_bound_tokens:
        # RFC 8705 §3.3: tokens requested over mutual TLS carry cnf.x5t#S256.
        doc["tls_client_certificate_bound_access_tokens"] = True
    if dpop_algs:
        # RFC 9449 §5.1: the JWS algorithms accepted in DPoP proofs.
        doc["dpop_signing_alg_values_supported"] = sorted(set(dpop_algs) & ASYMMETRIC_ALGS)
    return doc
