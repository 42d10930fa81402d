"""RFC 9457 problem details for every 4xx and 5xx the API answers."""

from __future__ import annotations

import logging
from collections.abc import Callable
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


def install(
    app: FastAPI,
    unavailable: tuple[type[Exception], Callable[[BaseException], bool]] | None = None,
) -> None:
    """The problem+json handlers. `unavailable`: an exception class of a backing service's
    library and which of its errors mean the service is out of reach (the database
    connection lost): those answer 503 with `Retry-After`, the others 500."""

    async def validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {"field": _field(e.get("loc", ())), "message": e.get("msg", ""), "type": e.get("type")}
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"field": "body", "message": "invalid"}
        return problem(
            422,
            f"{first['field']}: {first['message']}",
            kind="validation",
            instance=request.url.path,
            errors=errors,
        )

    async def domain(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, TidingsError)
        status = next((s for cls, s in _STATUS if isinstance(exc, cls)), 400)
        extra: dict[str, Any] = {}
        if exc.field:
            extra["errors"] = [{"field": exc.field, "message": exc.message, "type": exc.code}]
        headers = {"WWW-Authenticate": 'Bearer realm="tidings"'} if status == 401 else None
        detail = f"{exc.field}: {exc.message}" if exc.field and status == 422 else exc.message
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
