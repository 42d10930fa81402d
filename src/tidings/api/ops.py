"""Health, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from starlette.responses import Response

from tidings.api.auth import services
from tidings.types import Priority

router = APIRouter(tags=["operations"])


class QueueGauges:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.jobs = Gauge(
            "tidings_queue_jobs",
            "Jobs in the durable queue by lane and state",
            ["lane", "state"],
            registry=registry,
        )
        self.dead = Gauge("tidings_queue_dead_jobs", "Dead-lettered jobs", registry=registry)


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: the store and broker answer")
async def readyz(request: Request) -> JSONResponse:
    checks: dict[str, Any] = {}
    ok = True
    for name, check in services(request).ready_checks.items():
        try:
            await asyncio.wait_for(check(), timeout=2.0)
            checks[name] = "ok"
        except Exception as exc:
            ok = False
            checks[name] = f"failed: {type(exc).__name__}: {exc}"
    status = 200 if ok else 503
    return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    gauges: QueueGauges = request.app.state.queue_gauges
    depth = await services(request).jobs.depth()
    gauges.jobs.clear()
    for state, per_lane in (("queued", depth.queued), ("running", depth.running)):
        # every lane and state, zeros included: an empty queue is a value, not a gap that
        # an alert on the series would read as "no data"
        for lane in {p.value for p in Priority} | set(per_lane):
            gauges.jobs.labels(lane, state).set(per_lane.get(lane, 0))
    gauges.dead.set(depth.dead)
    registry: CollectorRegistry = request.app.state.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
