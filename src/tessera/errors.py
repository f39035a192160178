"""Typed errors. Each hierarchy maps to its protocol's own error format at the edge.

Messages are client-safe: no secret, token or key material, no internal detail.
"""

from __future__ import annotations

from typing import Any


class AppError(Exception):
    """A management-API error; rendered as problem+json (RFC 9457)."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.extra = extra or {}


class ValidationFailed(AppError):
    status = 422
    code = "validation_failed"


class NotFound(AppError):
    status = 404
    code = "not_found"


class Conflict(AppError):
    status = 409
    code = "conflict"


class Unauthenticated(AppError):
    status = 401
    code = "unauthenticated"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        # The challenge (RFC 6750 §3, RFC 9449 §7.1); a plain bearer one by default.
        self.headers = headers or {"WWW-Authenticate": 'Bearer error="invalid_token"'}


class Forbidden(AppError):
    status = 403
    code = "forbidden"


class WouldBlock(Exception):
    """An in-memory path met something that needs the database (a cache miss, a key reload);
    the caller redoes the work where blocking is allowed (a worker thread)."""


class OAuthError(Exception):
    """An OAuth 2.0 error response (RFC 6749 §5.2 and the extension RFCs)."""

    def __init__(self, error: str, description: str | None = None, *, status: int = 400,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.error = error
        self.description = description
        self.status = status
        self.headers = headers or {}


class InvalidClient(OAuthError):
    """Uniform client-authentication failure: never says which check failed."""

    def __init__(self, description: str = "client authentication failed") -> None:
        super().__init__("invalid_client", description, status=401)


class InvalidGrant(OAuthError):
    def __init__(self, description: str = "the grant is invalid") -> None:
        super().__init__("invalid_grant", description)


class InvalidRequest(OAuthError):
    def __init__(self, description: str) -> None:
        super().__init__("invalid_request", description)


class Refused(AppError):
    """Refused after the refusal was audited: the caller commits the event, then re-raises."""

    status = 403
    code = "forbidden"
