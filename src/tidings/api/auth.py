"""Bearer API keys with scopes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from tidings.errors import Unauthorized
from tidings.services.container import Services
from tidings.types import ApiKey, Scope

bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer tdg_...`")


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def require(scope: Scope) -> Callable[..., Awaitable[ApiKey]]:
    """A dependency: the request's API key, which must carry `scope` (or admin)."""

    async def dependency(request: Request) -> ApiKey:
        credentials: HTTPAuthorizationCredentials | None = await bearer(request)
        if credentials is None:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        svc = services(request)
        key = await svc.apikeys.authenticate(credentials.credentials)
        svc.apikeys.authorize(key, scope)
        return key

    return dependency
