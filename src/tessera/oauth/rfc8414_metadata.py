"""OAuth 2.0 Authorization Server Metadata — https://www.rfc-editor.org/rfc/rfc8414

Advertises exactly what this server supports, nothing more.
"""

from __future__ import annotations

from typing import Any

from tessera.oauth.rfc7523_client_assertion import ASSERTION_ALGS


def metadata(issuer: str) -> dict[str, Any]:
    return {
        "issuer": issuer,
        "token_endpoint": f"{issuer}/oauth2/token",
        "jwks_uri": f"{issuer}/oauth2/jwks",
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": sorted(ASSERTION_ALGS),
        "response_types_supported": [],
        "scopes_supported": [],
    }
