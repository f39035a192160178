"""Tessera SDK for agents and resource servers. Imports nothing from the Tessera server.

Agents: `TesseraClient` (private_key_jwt, DPoP, renewal, token exchange) and `TesseraAuth`
(httpx). Resource servers: `Verifier` (`verify`/`averify`) and `TesseraMiddleware` (ASGI).
"""

from tessera.sdk.client import TesseraAuth, TesseraClient, Token, TokenError
from tessera.sdk.middleware import TesseraMiddleware
from tessera.sdk.verify import MemoryReplayCache, TokenVerificationError, VerifiedToken, Verifier

__all__ = ["MemoryReplayCache", "TesseraAuth", "TesseraClient", "TesseraMiddleware", "Token",
           "TokenError", "TokenVerificationError", "VerifiedToken", "Verifier"]
