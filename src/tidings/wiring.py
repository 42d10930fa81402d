"""The composition root: settings -> adapters -> services -> ASGI app and background tasks.

The only module that chooses adapters."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings.adapters import sql
from tidings.adapters.clock import SystemClock
from tidings.adapters.memory import MemoryBroker
from tidings.api import create_api
from tidings.config import Settings
from tidings.ports.broker import Broker
from tidings.ports.clock import Clock
from tidings.services.apikeys import ApiKeyService
from tidings.services.channels import BrokerFanout
from tidings.services.container import Services
from tidings.services.dispatch import Dispatcher
from tidings.services.ingest import DISPATCH_JOB, IngestService
from tidings.services.worker import WorkerPool
from tidings.types import Priority

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Everything one process runs, built from settings; `start`/`stop` own the lifecycle."""

    settings: Settings
    clock: Clock
    engine: AsyncEngine
    broker: Broker
    services: Services
    dispatcher: Dispatcher
    pools: list[WorkerPool] = field(default_factory=list)

    async def start(self) -> None:
        await self.broker.start(_ignore_publication, _ignore_join_leave)
        if self.settings.worker.enabled:
            for pool in self.pools:
                await pool.start()
            pending = await self.services.ingest.redispatch_pending()
            if pending:
                log.info("re-dispatching events accepted before a stop", extra={"count": pending})

    async def stop(self) -> None:
        for pool in self.pools:
            await pool.stop()
        await self.broker.close()
        await self.engine.dispose()

    def wake_workers(self) -> None:
        for pool in self.pools:
            pool.notify()


async def _ignore_publication(_pub: object) -> None:
    return None


async def _ignore_join_leave(_channel: str, _info: object, _joined: bool) -> None:
    return None


def build_runtime(settings: Settings, clock: Clock | None = None) -> Runtime:
    clock = clock or SystemClock()
    engine = sql.create_engine(settings.database_url)
    events = sql.SqlEventStore(engine, clock)
    jobs = sql.SqlJobQueue(engine, clock)
    apikeys = sql.SqlApiKeyStore(engine, clock)
    broker = build_broker(settings, clock)
    dispatcher = Dispatcher(events, BrokerFanout(broker))
    pools: list[WorkerPool] = []

    def wake() -> None:
        for pool in pools:
            pool.notify()

    ingest = IngestService(
        events, jobs, clock, max_payload_bytes=settings.max_payload_bytes, on_enqueue=wake
    )

    async def store_ready() -> None:
        await sql.check(engine)

    services = Services(
        clock=clock,
        ingest=ingest,
        apikeys=ApiKeyService(apikeys, clock),
        jobs=jobs,
        ready_checks={"store": store_ready},
    )
    w = settings.worker
    handlers = {DISPATCH_JOB: dispatcher.handle}
    on_dead = {DISPATCH_JOB: dispatcher.fail}
    # Two pools: one only for transactional work, one that takes transactional first and bulk
    # after, so a flood of bulk jobs can never occupy every slot.
    for name, lanes, share in (
        ("tx", (Priority.TRANSACTIONAL,), max(1, w.concurrency // 2)),
        (
            "all",
            (Priority.TRANSACTIONAL, Priority.BULK),
            max(1, w.concurrency - w.concurrency // 2),
        ),
    ):
        pools.append(
            WorkerPool(
                jobs,
                clock,
                handlers,
                lanes=lanes,
                on_dead=on_dead,
                concurrency=share,
                batch=w.batch,
                lease_seconds=w.lease_seconds,
                poll_interval=w.poll_interval,
                name=name,
            )
        )
    return Runtime(
        settings=settings,
        clock=clock,
        engine=engine,
        broker=broker,
        services=services,
        dispatcher=dispatcher,
        pools=pools,
    )


def build_broker(settings: Settings, clock: Clock) -> Broker:
    if settings.broker == "memory":
        return MemoryBroker(clock)
    raise ValueError(f"unknown broker {settings.broker!r}")


def create_app(settings: Settings, runtime: Runtime | None = None) -> FastAPI:
    rt = runtime or build_runtime(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await rt.start()
        try:
            yield
        finally:
            await rt.stop()

    app = create_api(rt.services, max_body_bytes=settings.max_body_bytes, lifespan=lifespan)
    app.state.runtime = rt
    return app


def migrate(settings: Settings) -> str:
    """Bring the database to the newest migration; returns that revision."""
    sql.upgrade(settings.database_url)
    return sql.head()


def migration_state(settings: Settings) -> tuple[str | None, str]:
    """(the database's migration, the one this code needs)."""
    return sql.current(settings.database_url), sql.head()
