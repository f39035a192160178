"""OAuth 2.0 Demonstrating Proof of Possession (DPoP) — https://www.rfc-editor.org/rfc/rfc9449

Proof validation (§4.3), key binding through the JWK thumbprint `cnf.jkt` (§6.1, RFC 7638),
access-token hash `ath` (§4.2, §7.1) and server-provided nonces (§8). The replay cache is the
`ReplayCache` port, which the server backs with a table every node shares.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, JWKRegistry, OKPKey, RSAKey
from joserfc.jws import extract_compact

from tessera.errors import OAuthError
from tessera.identity.jwk_policy import PRIVATE_MEMBERS, algorithms_for
from tessera.jwt_peek import valid_jti
from tessera.oauth.ports import ReplayCache

TYP = "dpop+jwt"
HEADER = "dpop"
# Asymmetric algorithms only (§4.2: MUST NOT be none or a MAC-based algorithm).
ASYMMETRIC_ALGS = frozenset({"ES256", "ES384", "ES512", "EdDSA", "Ed25519", "RS256", "RS384",
                             "RS512", "PS256", "PS384", "PS512"})
MAX_PROOF_BYTES = 8 * 1024


class InvalidDPoPProof(OAuthError):
    """§5 and §7.1: the proof is missing, malformed or does not fit the request."""

    def __init__(self, reason: str, *, status: int = 400) -> None:
        super().__init__("invalid_dpop_proof", "the DPoP proof is invalid", status=status)
        self.reason = reason


class UseDPoPNonce(OAuthError):
    """§8: the client must retry with the nonce carried in the DPoP-Nonce header."""

    def __init__(self, nonce: str, *, status: int = 400) -> None:
        super().__init__("use_dpop_nonce",
                         "Authorization server requires nonce in DPoP proof", status=status,
                         headers={"DPoP-Nonce": nonce})
        self.nonce = nonce
        self.reason = "missing or stale nonce"


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def ath_of(access_token: str) -> str:
    """§4.2: base64url SHA-256 of the ASCII access token."""
    return b64u(hashlib.sha256(access_token.encode("ascii")).digest())


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint of a public JWK (the value of `cnf.jkt`)."""
    return str(JWKRegistry.import_key(dict(jwk)).thumbprint())


def normalise_htu(url: str) -> str:
    """§4.3 item 9: compare without query and fragment, case-insensitive scheme and host."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    port = parts.port
    if port is not None and not ((scheme == "https" and port == 443) or
                                 (scheme == "http" and port == 80)):
        host = f"{host}:{port}"
    return f"{scheme}://{host}{parts.path or '/'}"


class HMACNonces:
    """Stateless server nonces any node can check: a time window and its HMAC."""

    def __init__(self, secret: bytes, ttl: int) -> None:
        self._secret = secret
        self._ttl = ttl

    def _mac(self, window: int) -> str:
        return b64u(hmac.new(self._secret, struct.pack(">Q", window), "sha256").digest()[:18])

    def current(self, now: datetime) -> str:
        window = int(now.timestamp()) // self._ttl
        return f"{window:x}.{self._mac(window)}"

    def valid(self, nonce: str, now: datetime) -> bool:
        window_hex, _, mac = nonce.partition(".")
        try:
            window = int(window_hex, 16)
        except ValueError:
            return False
        current = int(now.timestamp()) // self._ttl
        # The current window and the one before it: a nonce lives between ttl and 2*ttl.
        if window not in (current, current - 1):
            return False
        return hmac.compare_digest(mac, self._mac(window))


@dataclass(frozen=True)
class DPoPProof:
    jkt: str
    jwk: dict[str, Any]
    claims: dict[str, Any]


class DPoPVerifier:
    """Validates DPoP proofs (RFC 9449 §4.3) against one request."""

    def __init__(self, replay: ReplayCache, *, algs: Iterable[str], max_age: int = 300,
                 leeway: int = 30, nonces: HMACNonces | None = None) -> None:
        self.algs = sorted(set(algs) & ASYMMETRIC_ALGS)
        self._replay = replay
        self._max_age = max_age
        self._leeway = leeway
        self.nonces = nonces

    def verify(self, proof: str | None, *, method: str, urls: Iterable[str], now: datetime,
               access_token: str | None = None, jkt: str | None = None,
               status: int = 400) -> DPoPProof:
        def fail(reason: str) -> InvalidDPoPProof:
            return InvalidDPoPProof(reason, status=status)

        # §4.3 item 1: exactly one DPoP header (the transport joins repeats with a comma).
        if not proof or "," in proof:
            raise fail("missing or repeated DPoP header")
        if len(proof) > MAX_PROOF_BYTES:
            raise fail("proof too large")
        # Items 2-3: a well-formed JWS with the required members.
        try:
            compact = extract_compact(proof.encode("ascii"))
            header = dict(compact.protected)
            claims = json.loads(compact.payload)
        except (JoseError, ValueError, TypeError, UnicodeEncodeError) as exc:
            raise fail("malformed proof") from exc
        if not isinstance(claims, dict):
            raise fail("malformed proof")
        # Item 4: typ MUST be dpop+jwt.
        if header.get("typ") != TYP:
            raise fail("typ is not dpop+jwt")
        # Item 5: alg is asymmetric, not none, and on the allow-list.
        alg = header.get("alg")
        if alg not in self.algs:
            raise fail(f"alg {alg!r} not allowed")
        # Item 7: the jwk header is a public key (checked before the key is used at all).
        jwk = header.get("jwk")
        if not isinstance(jwk, dict):
            raise fail("jwk header missing")
        if PRIVATE_MEMBERS & jwk.keys() or jwk.get("kty") == "oct":
            raise fail("jwk header holds private or symmetric key material")
        try:
            key = JWKRegistry.import_key(dict(jwk))
        except (JoseError, ValueError, TypeError, KeyError) as exc:
            raise fail("jwk header is not a usable key") from exc
        if not isinstance(key, (ECKey, OKPKey, RSAKey)) or key.is_private:
            raise fail("jwk header is not a public key")
        if alg not in algorithms_for(jwk):
            raise fail("alg does not fit the key")
        # Item 6: the signature verifies with that key.
        try:
            jws.deserialize_compact(proof, key, algorithms=[alg])
        except (JoseError, ValueError, TypeError) as exc:
            raise fail("signature does not verify") from exc
        jti, htm, htu, iat = (claims.get("jti"), claims.get("htm"), claims.get("htu"),
                              claims.get("iat"))
        if not valid_jti(jti):
            raise fail("jti missing or invalid")
        if not isinstance(iat, (int, float)) or isinstance(iat, bool):
            raise fail("iat missing")
        # Item 8: htm matches the request method.
        if htm != method.upper():
            raise fail("htm does not match")
        # Item 9: htu matches the request URI (no query, no fragment).
        if not isinstance(htu, str) or normalise_htu(htu) not in {normalise_htu(u)
                                                                  for u in urls}:
            raise fail("htu does not match")
        # Item 11: iat within an acceptable window.
        ts = now.timestamp()
        if iat > ts + self._leeway or iat < ts - self._max_age:
            raise fail("iat outside the acceptable window")
        # Item 12: when presenting an access token, ath is its hash.
        if access_token is not None:
            ath = claims.get("ath")
            if not isinstance(ath, str) or not hmac.compare_digest(ath, ath_of(access_token)):
                raise fail("ath does not match the access token")
        proof_jkt = str(key.thumbprint())
        # Item 13: the key is the one the token is bound to.
        if jkt is not None and not hmac.compare_digest(proof_jkt, jkt):
            raise fail("proof key does not match the token's cnf.jkt")
        # Item 10 (§8): a server nonce, when this server asks for them.
        if self.nonces is not None:
            nonce = claims.get("nonce")
            if not isinstance(nonce, str) or not self.nonces.valid(nonce, now):
                raise UseDPoPNonce(self.nonces.current(now), status=status)
        # §11.1: a proof is single-use; the jti cache is shared by every node.
        expires = datetime.fromtimestamp(iat, UTC) + timedelta(
            seconds=self._max_age + self._leeway)
        if not self._replay.use_once(f"dpop:{proof_jkt}", jti, expires):
            raise fail("proof jti replayed")
        return DPoPProof(jkt=proof_jkt, jwk=dict(jwk), claims=claims)
