"""RFC 8935 Push-Based Security Event Token Delivery Using HTTP —
https://www.rfc-editor.org/rfc/rfc8935
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

CONTENT_TYPE = "application/secevent+jwt"


@dataclass
class PushResult:
    delivered: bool
    retry: bool
    error: str | None = None


def push(client: httpx.Client, url: str, set_jws: str) -> PushResult:
    """POST one SET; 202 means accepted (§2.2), 400 with an error code is final (§2.3)."""
    try:
        # §2.1: the SET is the body, media type application/secevent+jwt.
        resp = client.post(url, content=set_jws, headers={"Content-Type": CONTENT_TYPE,
                                                          "Accept": "application/json"})
    except httpx.HTTPError as exc:
        return PushResult(False, True, f"transport error: {type(exc).__name__}")
    if resp.status_code == 202:  # §2.2: the recipient MUST answer 202 Accepted
        return PushResult(True, False)
    if resp.status_code == 400:
        try:
            err = str(resp.json().get("err", "invalid_request"))[:100]
        except ValueError:
            err = "invalid_request"
        # §2.3: the SET was refused as such: sending it again will not help.
        return PushResult(False, False, f"refused: {err}")
    return PushResult(False, True, f"HTTP {resp.status_code}")
