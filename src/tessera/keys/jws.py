"""Compact JWS serialisation (RFC 7515 §7.1) over a `Signer`.

Written by hand because the signature may be made inside an HSM, where joserfc cannot hold
the key; verification everywhere else uses joserfc.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from tessera.keys.ports import Signer


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _json(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def sign_compact(signer: Signer, payload: dict[str, Any], typ: str = "JWT",
                 extra_header: dict[str, Any] | None = None) -> str:
    header: dict[str, Any] = {"alg": signer.alg, "typ": typ, "kid": signer.kid}
    if extra_header:
        header.update(extra_header)
    signing_input = f"{b64u(_json(header))}.{b64u(_json(payload))}"
    return f"{signing_input}.{b64u(signer.sign(signing_input.encode()))}"
