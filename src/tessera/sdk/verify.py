"""Resource-server token verification: Tessera access tokens (RFC 9068), bearer (RFC 6750) or
DPoP-bound (RFC 9449), checked against the issuer's JWKS.

The JWKS is cached (`jwks_ttl`) and refetched when a token names an unknown `kid` — at most
once per `min_refetch_interval`, so a flood of forged kids cannot turn into a flood of fetches.
"""

from __future__ import annotations

import asyncio
import hmac
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, JWKRegistry, KeySet, OKPKey, RSAKey

from tessera.sdk._jose import PRIVATE_MEMBERS, ath_of, unverified

TOKEN_ALGS = ("ES256", "EdDSA")
DPOP_ALGS = ("ES256", "ES384", "ES512", "EdDSA", "PS256", "RS256")
# Keyed by (kty, crv) as a JWK holds them, so looked up with members of any JSON type.
DPOP_KEY_ALGS: dict[tuple[object, object], set[str]] = {
    ("EC", "P-256"): {"ES256"}, ("EC", "P-384"): {"ES384"},
    ("EC", "P-521"): {"ES512"}, ("OKP", "Ed25519"): {"EdDSA", "Ed25519"},
    ("RSA", None): {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}}


class TokenVerificationError(Exception):
    """The request's credentials are not acceptable; render as 401 with `www_authenticate`."""

    def __init__(self, error: str, description: str, *, scheme: str = "Bearer",
                 nonce: str | None = None, status: int = 401) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.scheme = scheme
        self.status = status
        self.nonce = nonce

    @property
    def www_authenticate(self) -> str:
        return f'{self.scheme} error="{self.error}", error_description="{self.description}"'


@dataclass(frozen=True)
class VerifiedToken:
    """The claims of a verified access token, with the usual questions answered."""

    claims: dict[str, Any]
    token_type: str  # "Bearer" or "DPoP"

    @property
    def subject(self) -> str:
        return str(self.claims["sub"])

    @property
    def client_id(self) -> str | None:
        value = self.claims.get("client_id")
        return str(value) if value is not None else None

    @property
    def scopes(self) -> frozenset[str]:
        return frozenset(str(self.claims.get("scope", "")).split())

    @property
    def actor(self) -> dict[str, Any] | None:
        """RFC 8693 §4.1 `act`: who is acting for the subject (None when nobody is)."""
        act = self.claims.get("act")
        return act if isinstance(act, dict) else None

    def has_scope(self, *scopes: str) -> bool:
        return set(scopes) <= self.scopes


class ProofReplayCache(Protocol):
    def use_once(self, key: str, jti: str, expires_at: float) -> bool: ...


@dataclass
class MemoryReplayCache:
    """Per-process DPoP jti cache, bounded. Several replicas need a shared one (e.g. Redis)."""

    max_entries: int = 100_000
    clock: Callable[[], float] = time.time
    _seen: OrderedDict[tuple[str, str], float] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def use_once(self, key: str, jti: str, expires_at: float) -> bool:
        now = self.clock()
        with self._lock:
            while self._seen:
                oldest_key, oldest_exp = next(iter(self._seen.items()))
                if oldest_exp > now and len(self._seen) < self.max_entries:
                    break
                self._seen.pop(oldest_key)
            if (key, jti) in self._seen:
                return False
            self._seen[(key, jti)] = expires_at
            return True


def _norm_url(url: str) -> str:
    parts = urlsplit(url)
    scheme, host, port = parts.scheme.lower(), (parts.hostname or "").lower(), parts.port
    if port is not None and (scheme, port) not in (("https", 443), ("http", 80)):
        host = f"{host}:{port}"
    return f"{scheme}://{host}{parts.path or '/'}"


class Verifier:
    """Verifies Tessera access tokens for one resource server (one audience)."""

    def __init__(self, issuer: str, audience: str, *, jwks_uri: str | None = None,
                 http: httpx.Client | None = None, async_http: httpx.AsyncClient | None = None,
                 leeway: int = 30, jwks_ttl: float = 300, min_refetch_interval: float = 30,
                 dpop_algs: Iterable[str] = DPOP_ALGS, dpop_max_age: int = 300,
                 require_dpop: bool = False, replay: ProofReplayCache | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.issuer = issuer.rstrip("/")
        self.audience = audience
        self.jwks_uri = jwks_uri or f"{self.issuer}/oauth2/jwks"
        self._http = http
        self._async_http = async_http
        self.leeway = leeway
        self._jwks_ttl = jwks_ttl
        self._min_refetch = min_refetch_interval
        self._dpop_algs = frozenset(dpop_algs)
        self._dpop_max_age = dpop_max_age
        self.require_dpop = require_dpop
        self._replay = replay if replay is not None else MemoryReplayCache(clock=clock)
        self._clock = clock
        self._keyset: KeySet | None = None
        self._kids: frozenset[str] = frozenset()
        self._fetched_at = -1e18
        self._lock = threading.Lock()
        self._alock: asyncio.Lock | None = None
        self.fetches = 0

    # -- JWKS -------------------------------------------------------------------------------

    def load_jwks(self, jwks: dict[str, Any]) -> None:
        """Install a JWKS (fetched, or handed in by a test or an offline deployment)."""
        keys = [k for k in jwks.get("keys", []) if isinstance(k, dict)
                and not PRIVATE_MEMBERS & k.keys()]
        self._keyset = KeySet.import_key_set({"keys": keys})
        self._kids = frozenset(str(k.get("kid")) for k in keys)
        self._fetched_at = self._clock()

    def _needs_fetch(self, kid: str | None) -> bool:
        age = self._clock() - self._fetched_at
        if self._keyset is None or age >= self._jwks_ttl:
            return True
        # Unknown kid: refetch, but never more often than min_refetch_interval.
        return kid is not None and kid not in self._kids and age >= self._min_refetch

    def _fetch(self) -> None:
        http = self._http or httpx.Client(timeout=10)
        try:
            resp = http.get(self.jwks_uri)
            resp.raise_for_status()
            self.fetches += 1
            self.load_jwks(resp.json())
        except (httpx.HTTPError, ValueError) as exc:
            if self._keyset is None:
                raise TokenVerificationError("invalid_token", "signing keys unavailable") \
                    from exc
            self._fetched_at = self._clock()  # keep the old keys; do not hammer the issuer
        finally:
            if self._http is None:
                http.close()

    async def _afetch(self) -> None:
        if self._async_http is None and self._http is not None:
            await asyncio.to_thread(self._fetch)  # only a sync client was given
            return
        http = self._async_http or httpx.AsyncClient(timeout=10)
        try:
            resp = await http.get(self.jwks_uri)
            resp.raise_for_status()
            self.fetches += 1
            self.load_jwks(resp.json())
        except (httpx.HTTPError, ValueError) as exc:
            if self._keyset is None:
                raise TokenVerificationError("invalid_token", "signing keys unavailable") \
                    from exc
            self._fetched_at = self._clock()
        finally:
            if self._async_http is None:
                await http.aclose()

    # -- verification -----------------------------------------------------------------------

    def verify(self, authorization: str | None, *, method: str, url: str,
               dpop: str | None = None) -> VerifiedToken:
        """Check the Authorization header (and DPoP proof) of one request; raises
        TokenVerificationError."""
        scheme, token = self._split(authorization)
        kid = self._kid(token)
        if self._needs_fetch(kid):
            with self._lock:
                if self._needs_fetch(kid):
                    self._fetch()
        return self._check(scheme, token, method=method, url=url, dpop=dpop)

    async def averify(self, authorization: str | None, *, method: str, url: str,
                      dpop: str | None = None) -> VerifiedToken:
        scheme, token = self._split(authorization)
        kid = self._kid(token)
        if self._needs_fetch(kid):
            self._alock = self._alock or asyncio.Lock()
            async with self._alock:
                if self._needs_fetch(kid):
                    await self._afetch()
        return self._check(scheme, token, method=method, url=url, dpop=dpop)

    def _split(self, authorization: str | None) -> tuple[str, str]:
        scheme, _, token = (authorization or "").partition(" ")
        scheme = scheme.lower()
        if scheme not in ("bearer", "dpop") or not token.strip():
            raise TokenVerificationError(
                "invalid_request" if authorization else "invalid_token",
                "an access token is required", scheme=self._challenge())
        return scheme, token.strip()

    def _challenge(self) -> str:
        return "DPoP" if self.require_dpop else "Bearer"

    @staticmethod
    def _kid(token: str) -> str | None:
        try:
            kid = unverified(token)[0].get("kid")
        except ValueError:
            return None
        return kid if isinstance(kid, str) else None

    def _check(self, scheme: str, token: str, *, method: str, url: str,
               dpop: str | None) -> VerifiedToken:
        challenge = "DPoP" if scheme == "dpop" else self._challenge()

        def fail(description: str, error: str = "invalid_token") -> TokenVerificationError:
            return TokenVerificationError(error, description, scheme=challenge)

        if self._keyset is None:
            raise fail("signing keys unavailable")
        try:
            decoded = jwt.decode(token, self._keyset, algorithms=list(TOKEN_ALGS))
        except (JoseError, ValueError, TypeError) as exc:
            raise fail("the access token does not verify") from exc
        header, claims = decoded.header, dict(decoded.claims)
        if str(header.get("typ", "")).lower() not in ("at+jwt", "application/at+jwt"):
            raise fail("not an access token")
        if claims.get("iss") != self.issuer:
            raise fail("wrong issuer")
        aud = claims.get("aud")
        auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if self.audience not in auds:
            raise fail("wrong audience")
        now = self._clock()
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)) or isinstance(exp, bool) or exp <= now - self.leeway:
            raise fail("the access token has expired")
        nbf = claims.get("nbf", claims.get("iat"))
        if isinstance(nbf, (int, float)) and nbf > now + self.leeway:
            raise fail("the access token is not yet valid")
        if not isinstance(claims.get("sub"), str):
            raise fail("no subject")
        cnf = claims.get("cnf")
        jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
        if scheme == "bearer":
            # RFC 9449 §7.1: a DPoP-bound token MUST NOT be accepted as a bearer token.
            if jkt is not None:
                raise fail("a DPoP-bound token was presented as a bearer token")
            if self.require_dpop:
                raise fail("this resource requires DPoP")
            return VerifiedToken(claims, "Bearer")
        if not isinstance(jkt, str):
            raise fail("the access token is not DPoP-bound")
        self._check_proof(dpop, token=token, jkt=jkt, method=method, url=url, now=now)
        return VerifiedToken(claims, "DPoP")

    def _check_proof(self, proof: str | None, *, token: str, jkt: str, method: str, url: str,
                     now: float) -> None:
        def fail(description: str) -> TokenVerificationError:
            return TokenVerificationError("invalid_dpop_proof", description, scheme="DPoP")

        if not proof or "," in proof:
            raise fail("exactly one DPoP proof is required")
        try:
            header, claims = unverified(proof)
        except ValueError as exc:
            raise fail("malformed proof") from exc
        alg, jwk = header.get("alg"), header.get("jwk")
        if header.get("typ") != "dpop+jwt" or alg not in self._dpop_algs:
            raise fail("wrong typ or algorithm")
        if not isinstance(jwk, dict) or PRIVATE_MEMBERS & jwk.keys():
            raise fail("the proof must carry a public jwk")
        crv = jwk.get("crv") if jwk.get("kty") in ("EC", "OKP") else None
        if alg not in DPOP_KEY_ALGS.get((jwk.get("kty"), crv), set()):
            raise fail("algorithm does not fit the key")
        try:
            key = JWKRegistry.import_key(dict(jwk))
            if not isinstance(key, (ECKey, OKPKey, RSAKey)) or key.is_private:
                raise fail("the proof must carry a public jwk")
            jws.deserialize_compact(proof, key, algorithms=[str(alg)])
        except (JoseError, ValueError, TypeError, KeyError) as exc:
            raise fail("the proof does not verify") from exc
        if not hmac.compare_digest(str(key.thumbprint()), jkt):
            raise fail("the proof key is not the token's key")
        if claims.get("htm") != method.upper():
            raise fail("htm does not match")
        htu = claims.get("htu")
        if not isinstance(htu, str) or _norm_url(htu) != _norm_url(url):
            raise fail("htu does not match")
        iat = claims.get("iat")
        if not isinstance(iat, (int, float)) or isinstance(iat, bool) or \
                not now - self._dpop_max_age <= iat <= now + self.leeway:
            raise fail("iat outside the acceptable window")
        ath = claims.get("ath")
        if not isinstance(ath, str) or not hmac.compare_digest(ath, ath_of(token)):
            raise fail("ath does not match the access token")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti or not self._replay.use_once(
                jkt, jti, iat + self._dpop_max_age + self.leeway):
            raise fail("the proof was already used")
