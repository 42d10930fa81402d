"""RFC 9457 problem details for every 4xx and 5xx the API answers."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from tidings.errors import (
    Conflict,
    Forbidden,
    IdempotencyConflict,
    InvalidInput,
    NotFound,
    TidingsError,
    Unauthorized,
)

log = logging.getLogger(__name__)

PROBLEM_BASE = "https://tidings.dev/problems/"
CONTENT_TYPE = "application/problem+json"


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """A route's `responses=` for OpenAPI: these statuses answer with problem+json."""
    return {s: {"content": {CONTENT_TYPE: {}}} for s in statuses}


_STATUS: list[tuple[type[TidingsError], int]] = [
    (IdempotencyConflict, 409),
    (Conflict, 409),
    (NotFound, 404),
    (InvalidInput, 422),
    (Unauthorized, 401),
    (Forbidden, 403),
]

_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Content too large",
    415: "Unsupported media type",
    422: "Invalid request",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
}


def problem(
    status: int,
    detail: str,
    *,
    kind: str | None = None,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + (kind or _TITLES.get(status, "error").lower().replace(" ", "-")),
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update(extra)
    return Response(
        orjson.dumps(body), status_code=status, media_type=CONTENT_TYPE, headers=headers
    )


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def _error(e: Mapping[str, Any]) -> dict[str, Any]:
    """One pydantic error as `{field, message, type}`. A body that is not JSON at all is
    the `body` field (pydantic's location is the character position); a `ValueError` raised
    by a validator is its own message, without pydantic's "Value error, " in front."""
    kind = e.get("type")
    ctx = e.get("ctx") or {}
    loc = tuple(e.get("loc", ()))
    if kind == "json_invalid":
        at = f" at position {loc[-1]}" if len(loc) > 1 else ""
        reason = ctx.get("error") or "cannot be decoded"
        return {
            "field": "body",
            "message": f"request body is not valid JSON: {reason}{at}",
            "type": kind,
        }
    message = str(e.get("msg", ""))
    if kind == "value_error" and "error" in ctx:
        message = str(ctx["error"])
    return {"field": _field(loc), "message": message, "type": kind}


def _unprefixed(message: str, field: str) -> str:
    """`message` without a leading `field: ` (errors that carry their location in the
    message too, for the command line), so the detail names the field once."""
    prefix = f"{field}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def install(
    app: FastAPI,
    unavailable: tuple[type[Exception], Callable[[BaseException], bool]] | None = None,
) -> None:
    """The problem+json handlers. `unavailable`: an exception class of a backing service's
    library and which of its errors mean the service is out of reach (the database
    connection lost): those answer 503 with `Retry-After`, the others 500."""

    async def validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = [_error(e) for e in exc.errors()]
        first = errors[0] if errors else {"field": "body", "message": "invalid"}
        detail = (
            first["message"]
            if first.get("type") == "json_invalid"
            else f"{first['field']}: {first['message']}"
        )
        return problem(
            422,
            detail,
            kind="validation",
            instance=request.url.path,
            errors=errors,
        )

    async def domain(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, TidingsError)
        status = next((s for cls, s in _STATUS if isinstance(exc, cls)), 400)
        extra: dict[str, Any] = {}
        message = _unprefixed(exc.message, exc.field) if exc.field else exc.message
        if exc.field:
            extra["errors"] = [{"field": exc.field, "message": message, "type": exc.code}]
        headers = {"WWW-Authenticate": 'Bearer realm="tidings"'} if status == 401 else None
        detail = f"{exc.field}: {message}" if exc.field and status == 422 else exc.message
        return problem(
            status,
            detail,
            kind=exc.code.replace("_", "-"),
            instance=request.url.path,
            headers=headers,
            **extra,
        )

    async def http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return problem(
            exc.status_code, detail, instance=request.url.path, headers=dict(exc.headers or {})
        )

    async def crash(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error", extra={"path": request.url.path})
        return problem(500, "internal error", instance=request.url.path)

    async def out_of_reach(request: Request, exc: Exception) -> Response:
        assert unavailable is not None
        if not unavailable[1](exc):
            return await crash(request, exc)
        log.warning("backing service unavailable", exc_info=True, extra={"path": request.url.path})
        return problem(
            503,
            "the database is unavailable; retry shortly",
            kind="unavailable",
            instance=request.url.path,
            headers={"Retry-After": "1"},
        )

    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(TidingsError, domain)
    app.add_exception_handler(StarletteHTTPException, http)
    app.add_exception_handler(Exception, crash)
    if unavailable is not None:
        app.add_exception_handler(unavailable[0], out_of_reach)
