"""The FastAPI application: routers, problem+json errors, body limit and metrics."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from tidings import __version__
from tidings.api import (
    admin,
    campaigns,
    events,
    inbox,
    notifications,
    ops,
    preferences,
    presence,
    problems,
    realtime,
    schedules,
    segments,
    subscribers,
    templates,
    webhooks,
)
from tidings.api.middleware import BodyLimit, Metrics
from tidings.services.container import Services

DESCRIPTION = """Tidings accepts authoritative business events exactly once and feeds them to
the real-time gateway and the notification orchestrator.

Authenticate with an API key: `Authorization: Bearer tdg_...` (create one with
`tidings apikey create --scope publish`). Every error is an RFC 9457 problem+json document.
"""


def create_api(
    services: Services,
    *,
    max_body_bytes: int,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]] | None = None,
    unavailable: tuple[type[Exception], Callable[[BaseException], bool]] | None = None,
) -> FastAPI:
    """The API. `unavailable`: which unexpected errors mean a backing service is out of
    reach (a 503, see `problems.install`)."""
    app = FastAPI(
        title="Tidings",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    registry = CollectorRegistry()
    app.state.services = services
    app.state.registry = registry
    app.state.queue_gauges = ops.QueueGauges(registry)
    problems.install(app, unavailable)
    app.include_router(events.router)
    app.include_router(realtime.router)
    app.include_router(presence.router)
    app.include_router(templates.router)
    app.include_router(schedules.router)
    app.include_router(campaigns.router)
    app.include_router(segments.router)
    app.include_router(subscribers.router)
    app.include_router(inbox.server)
    app.include_router(inbox.browser)
    app.include_router(preferences.server)
    app.include_router(preferences.browser)
    app.include_router(preferences.suppressions)
    app.include_router(webhooks.router)
    app.include_router(notifications.router)
    app.include_router(admin.router)
    app.include_router(ops.router)
    app.add_middleware(BodyLimit, limit=max_body_bytes)
    app.add_middleware(Metrics, registry=registry)
    return app
