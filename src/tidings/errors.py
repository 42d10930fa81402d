"""Errors the domain raises. Interfaces map them to wire errors (problem+json, protocol codes)."""

from __future__ import annotations


class TidingsError(Exception):
    """Base of every error Tidings raises on purpose."""

    code: str = "error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class NotFound(TidingsError):
    code = "not_found"


class Conflict(TidingsError):
    code = "conflict"


class IdempotencyConflict(Conflict):
    """The same idempotency key arrived with a different body."""

    code = "idempotency_conflict"


class InvalidInput(TidingsError):
    code = "invalid"


class LeaseLost(TidingsError):
    """A worker tried to settle a job whose lease it no longer holds."""

    code = "lease_lost"


class Unauthorized(TidingsError):
    code = "unauthorized"


class Forbidden(TidingsError):
    code = "forbidden"
