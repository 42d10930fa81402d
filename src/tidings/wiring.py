"""The composition root: settings -> adapters -> services -> ASGI app and background tasks.

The only module that chooses adapters."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import uvicorn
from fastapi import FastAPI
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from tidings import __version__
from tidings.adapters import sql
from tidings.adapters.clock import SystemClock
from tidings.adapters.memory import MemoryBroker, MemoryPresenceStore
from tidings.adapters.memory.online import MemoryDeviceStore
from tidings.adapters.providers import HttpWebhookProvider, SmtpConfig, SmtpProvider
from tidings.adapters.redis import RedisBroker, RedisPresenceStore
from tidings.adapters.redis.online import RedisDeviceStore
from tidings.adapters.sql.campaigns import SqlCampaignStore
from tidings.adapters.sql.checkpoint import WalCheckpointer
from tidings.adapters.sql.engine import lost_connection, sqlite_path
from tidings.adapters.sql.inbox import SqlInboxStore
from tidings.adapters.sql.notify import SqlRunStore, SqlWorkflowStore
from tidings.adapters.sql.online import SqlPresenceRecords
from tidings.adapters.sql.preferences import SqlPreferenceStore, SqlSuppressionStore
from tidings.adapters.sql.schedules import SqlScheduleStore
from tidings.adapters.sql.segments import SqlAudiences, SqlSegmentStore
from tidings.adapters.sql.subscribers import SqlSubscriberStore, SqlTopicStore
from tidings.adapters.sql.templates import SqlTemplateStore
from tidings.adapters.sql.webhooks import SqlWebhookEndpointStore
from tidings.api import create_api
from tidings.config import Settings
from tidings.core.channels import ChannelResolver
from tidings.core.delivery.breaker import BreakerConfig
from tidings.core.delivery.webhooks import DisablePolicy
from tidings.core.notify import CapAction, FrequencyCap
from tidings.core.notify import Channel as NotifyChannel
from tidings.core.online import PresenceConfig
from tidings.core.protocol.limits import SessionConfig
from tidings.core.templates import Renderer
from tidings.core.tokens import TokenKeys
from tidings.ports.broker import Broker
from tidings.ports.clock import Clock
from tidings.ports.online import DeviceStore
from tidings.ports.presence import PresenceStore
from tidings.services.apikeys import ApiKeyService
from tidings.services.campaigns import TICK_JOB, CampaignService
from tidings.services.container import Services
from tidings.services.dispatch import Dispatcher
from tidings.services.gateway import GatewayOptions, Hub
from tidings.services.gcpolicy import GcPolicy
from tidings.services.inbox import InboxService
from tidings.services.ingest import DISPATCH_JOB, EventInput, IngestService
from tidings.services.lanes import LaneGate
from tidings.services.notify import (
    BATCH_JOB,
    DELIVER_BATCH_JOB,
    DELIVER_JOB,
    RUN_JOB,
    NotifyConfig,
    Orchestrator,
)
from tidings.services.online import GatewayPresence, OnlineService
from tidings.services.preferences import PreferenceService
from tidings.services.providers import (
    GuardedProvider,
    ProviderRegistry,
    RateLimit,
    WebhookService,
)
from tidings.services.retention import Retention, history_steps, job_steps
from tidings.services.schedules import FIRE_JOB, ScheduleService
from tidings.services.segments import SegmentService
from tidings.services.subscriber_auth import SubscriberAuth
from tidings.services.subscribers import SubscriberService
from tidings.services.templates import TemplateService
from tidings.services.testsend import TemplateTestSender
from tidings.services.worker import Handoffs, WorkerPool
from tidings.services.workflows import WorkflowRegistry
from tidings.tasks import cancel
from tidings.transports import longpoll, sse
from tidings.transports.websocket import websocket_protocol
from tidings.types import Priority

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Everything one process runs, built from settings; `start`/`stop` own the lifecycle."""

    settings: Settings
    clock: Clock
    engine: AsyncEngine
    broker: Broker
    hub: Hub
    services: Services
    pools: list[WorkerPool] = field(default_factory=list)
    key_watcher: KeySetWatcher | None = None
    gate: LaneGate = field(default_factory=LaneGate)  # transactional work in flight
    retention: Retention | None = None  # old done jobs and history (with the workers)
    checkpointer: WalCheckpointer | None = None  # SQLite: WAL checkpoints off commits

    async def start(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.start()
        await self.hub.start()
        self.services.online.start(self.settings.presence.sweep_interval)
        if self.settings.gateway.token_jwks_file:
            self.key_watcher = KeySetWatcher(self.settings, self.hub)
            self.key_watcher.start()
        if self.settings.worker.enabled:
            for pool in self.pools:
                await pool.start()
            if self.retention is not None:
                self.retention.start()
            pending = await self.services.ingest.redispatch_pending()
            if pending:
                log.info("re-dispatching events accepted before a stop", extra={"count": pending})

    async def stop(self) -> None:
        if self.key_watcher is not None:
            await self.key_watcher.stop()
        await self.hub.drain()
        await self.services.online.stop()
        if self.retention is not None:
            await self.retention.stop()
        for pool in self.pools:
            await pool.stop()
        await self.hub.stop()
        await self.hub.presence_store.close()
        await self.services.online.devices.close()
        await self.services.providers.aclose()
        if self.checkpointer is not None:
            await self.checkpointer.stop()
        await self.engine.dispose()


def build_runtime(settings: Settings, clock: Clock | None = None) -> Runtime:
    clock = clock or SystemClock()
    engine = sql.create_engine(settings.database_url)
    db_file = sqlite_path(settings.database_url)
    events = sql.SqlEventStore(engine, clock)
    jobs = sql.SqlJobQueue(engine, clock)
    apikeys = sql.SqlApiKeyStore(engine, clock)
    broker = build_broker(settings, clock)
    hub = Hub(
        broker,
        build_presence(settings, clock),
        channel_resolver(settings),
        clock,
        gateway_options(settings),
    )
    dispatcher = Dispatcher(events, hub)
    pools: list[WorkerPool] = []
    handoffs = Handoffs(pools)  # the pools are made below, once every handler exists

    def wake() -> None:
        for pool in pools:
            pool.notify()

    gate = LaneGate()  # transactional work goes first on the event loop too
    ingest = IngestService(
        events,
        jobs,
        clock,
        max_payload_bytes=settings.max_payload_bytes,
        on_enqueue=wake,
        check_channel=hub.channels.options,
        handoffs=handoffs,
        gate=gate,
    )

    async def emit(kind: str, key: str, payload: dict[str, object]) -> None:
        user = payload.get("user")
        actor = user if isinstance(user, str) else None
        await ingest.ingest(EventInput(type=kind, payload=payload, actor=actor), key)

    async def members(channel: str) -> int:
        return (await hub.presence_stats(channel)).num_users

    online = OnlineService(
        build_device_store(settings, clock),
        SqlPresenceRecords(engine),
        clock,
        presence_config(settings),
        emit=emit,
        publish=hub.signal,
        members=members,
        contacts_namespace=settings.presence.contacts_namespace,
    )
    hub.observer = GatewayPresence(online, hub)

    schedules = ScheduleService(SqlScheduleStore(engine), jobs, ingest, clock, on_enqueue=wake)

    async def publish_inbox(channel: str, data: bytes, key: str | None) -> None:
        await hub.publish(channel, data, idempotency_key=key)

    inbox = InboxService(
        SqlInboxStore(engine),
        clock,
        publish_inbox,
        namespace=settings.inbox.namespace,
        max_data_bytes=settings.inbox.max_data_bytes,
        gate=gate,
    )
    preference_store = SqlPreferenceStore(engine)
    suppression_store = SqlSuppressionStore(engine)
    subscribers = SubscriberService(
        SqlSubscriberStore(engine),
        SqlTopicStore(engine),
        inbox.store,
        clock,
        max_data_bytes=settings.inbox.max_data_bytes,
        preferences=preference_store,
    )
    subscriber_auth = SubscriberAuth(
        clock,
        hmac_secret=settings.inbox.hmac_secret,
        token_secret=token_secret(settings),
        keys=lambda: hub.options.keys,
        token_ttl=settings.inbox.token_ttl,
    )
    preferences = PreferenceService(preference_store, suppression_store, subscribers.store, clock)

    async def store_ready() -> None:
        await sql.check(engine)

    providers, webhooks = build_providers(settings, clock, engine)
    templates = TemplateService(
        SqlTemplateStore(engine, clock), Renderer(settings.template_layouts)
    )
    workflows = WorkflowRegistry(SqlWorkflowStore(engine), clock, settings.notify.workflow_refresh)
    workflows.load_files(settings.notify.workflows)

    async def active(user: str) -> bool:
        return await online.active(user)

    notify = Orchestrator(
        SqlRunStore(engine, clock),
        workflows,
        events,
        subscribers.store,
        subscribers.topics,
        preference_store,
        suppression_store,
        inbox,
        templates,
        providers,
        webhooks,
        clock,
        notify_config(settings),
        enqueue=jobs.enqueue,
        on_enqueue=wake,
        active=active,
        gate=gate,
        handoffs=handoffs,
    )
    dispatcher.notify = notify.start
    # inbox marks record their engagement on the items' messages (reports mark the items)
    inbox.on_engaged = notify.inbox_marked
    ingest.check_recipients = notify.check_trigger
    ingest.on_cancel = notify.cancel
    segments = SegmentService(
        SqlSegmentStore(engine), SqlAudiences(engine), subscribers.topics, clock
    )
    campaigns = CampaignService(
        SqlCampaignStore(engine),
        ingest,
        subscribers.topics,
        workflows,
        notify.runs,
        clock,
        on_enqueue=wake,
        audiences=segments.audiences,
        segments=segments.store,
        batch_size=notify_config(settings).bulk_batch_size,
    )

    services = Services(
        clock=clock,
        ingest=ingest,
        apikeys=ApiKeyService(apikeys, clock),
        jobs=jobs,
        hub=hub,
        online=online,
        templates=templates,
        template_tests=TemplateTestSender(
            templates,
            providers,
            webhooks,
            inbox,
            subscribers.store,
            clock,
            sender=settings.notify.sender,
        ),
        schedules=schedules,
        webhooks=webhooks,
        providers=providers,
        subscribers=subscribers,
        inbox=inbox,
        subscriber_auth=subscriber_auth,
        preferences=preferences,
        ready_checks={"store": store_ready},
        notify=notify,
        campaigns=campaigns,
        segments=segments,
    )
    w = settings.worker
    handlers = {
        DISPATCH_JOB: dispatcher.handle,
        FIRE_JOB: schedules.fire,
        BATCH_JOB: notify.handle_batch,
        RUN_JOB: notify.handle_run,
        DELIVER_JOB: notify.handle_deliver,
        DELIVER_BATCH_JOB: notify.handle_deliver_batch,
        TICK_JOB: campaigns.tick,
    }
    on_dead = {
        DISPATCH_JOB: dispatcher.fail,
        BATCH_JOB: notify.fail_batch,
        DELIVER_JOB: notify.fail_delivery,
        DELIVER_BATCH_JOB: notify.fail_delivery_batch,
    }
    # Two pools: one only for transactional work, one that takes transactional first and bulk
    # after, so a flood of bulk jobs can never occupy every slot. Hand-offs try the first
    # pool first (`Handoffs`).
    for name, lanes, share in (
        ("tx", (Priority.TRANSACTIONAL,), w.transactional_concurrency),
        ("all", (Priority.TRANSACTIONAL, Priority.BULK), w.concurrency),
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
                policy=notify.config.retry,  # one backoff for jobs and batched messages
                name=name,
                gate=gate,
                inline_sqlite=db_file is not None,
            )
        )
    return Runtime(
        settings=settings,
        clock=clock,
        engine=engine,
        broker=broker,
        hub=hub,
        services=services,
        pools=pools,
        gate=gate,
        retention=Retention(
            clock,
            [
                *job_steps(jobs, w.done_job_retention),
                *history_steps(notify.runs, events, settings.notify.history_retention),
            ],
        ),
        checkpointer=None if db_file is None else WalCheckpointer(db_file),
    )


def build_providers(
    settings: Settings, clock: Clock, engine: AsyncEngine
) -> tuple[ProviderRegistry, WebhookService]:
    """The channel providers, each behind its circuit breaker and rate limit: webhooks
    always, email when `smtp.host` is set."""
    p = settings.providers
    breaker = BreakerConfig(
        failure_threshold=p.failure_threshold,
        failure_rate=p.failure_rate,
        window=p.window,
        min_calls=p.min_calls,
        cooldown=p.cooldown,
        half_open_probes=p.half_open_probes,
        success_threshold=p.success_threshold,
    )

    def limit(channel: Literal["email", "webhook"]) -> RateLimit | None:
        found = p.rate_limits.get(channel)
        return None if found is None else RateLimit(found.rate, found.burst)

    w = settings.webhooks
    webhook = GuardedProvider(
        HttpWebhookProvider(
            clock,
            timeout=w.timeout,
            connect_timeout=w.connect_timeout,
            max_connections=w.max_connections,
            block_private=not w.allow_private_addresses,
        ),
        clock,
        breaker=breaker,
        rate_limit=limit("webhook"),
        key=lambda m: m.endpoint_id,
    )
    registry = ProviderRegistry([webhook])
    m = settings.smtp
    if m.host:
        smtp = SmtpProvider(
            SmtpConfig(
                host=m.host,
                port=m.port,
                security=m.security,
                username=m.username,
                password=m.password,
                validate_certs=m.validate_certs,
                timeout=m.timeout,
                pool_size=m.pool_size,
                max_messages_per_connection=m.max_messages_per_connection,
                idle_timeout=m.idle_timeout,
                noop_after=m.noop_after,
                local_hostname=m.local_hostname,
                envelope_from=m.envelope_from,
                message_id_domain=m.message_id_domain,
            ),
            clock,
        )
        registry.register(GuardedProvider(smtp, clock, breaker=breaker, rate_limit=limit("email")))
    webhooks = WebhookService(
        SqlWebhookEndpointStore(engine),
        webhook,
        clock,
        policy=DisablePolicy(w.disable_after_failures, w.disable_after_seconds),
        allow_private=w.allow_private_addresses,
        rotation_grace=w.rotation_grace,
    )
    return registry, webhooks


def notify_config(settings: Settings) -> NotifyConfig:
    n = settings.notify
    return NotifyConfig(
        sender=n.sender,
        batch_size=n.batch_size,
        bulk_batch_size=n.bulk_batch_size,
        bulk_commit_size=n.bulk_commit_size,
        bulk_concurrency=n.bulk_concurrency
        or (1 if settings.database_url.startswith("sqlite") else 4),
        max_recipients=n.max_recipients,
        caps=tuple(
            FrequencyCap(
                c.limit,
                c.window,
                NotifyChannel(c.channel) if c.channel else None,
                CapAction(c.on_exceed),
            )
            for c in n.frequency_caps
        ),
        delivery_attempts=n.delivery_attempts,
        send_batch=n.send_batch,
        workflow_refresh=n.workflow_refresh,
    )


def build_broker(settings: Settings, clock: Clock) -> Broker:
    if settings.broker == "redis":
        return RedisBroker(settings.redis_url, clock, prefix=settings.redis_prefix)
    return MemoryBroker(clock)


def build_device_store(settings: Settings, clock: Clock) -> DeviceStore:
    if settings.broker == "redis":
        return RedisDeviceStore(settings.redis_url, clock, prefix=settings.redis_prefix)
    return MemoryDeviceStore(clock)


def presence_config(settings: Settings) -> PresenceConfig:
    p = settings.presence
    return PresenceConfig(
        idle_after=p.idle_after,
        probably_offline_after=p.probably_offline_after,
        offline_after=p.offline_after,
        last_seen_interval=p.last_seen_interval,
        update_interval=p.update_interval,
        typing_ttl=p.typing_ttl,
        typing_throttle=p.typing_throttle,
        typing_max_members=p.typing_max_members,
        max_devices=p.max_devices,
        max_contacts=p.max_contacts,
    )


def build_presence(settings: Settings, clock: Clock) -> PresenceStore:
    if settings.broker == "redis":
        return RedisPresenceStore(settings.redis_url, clock, prefix=settings.redis_prefix)
    return MemoryPresenceStore(clock)


def channel_resolver(settings: Settings) -> ChannelResolver:
    channels = with_inbox_namespace(settings.gateway.channels, settings.inbox.namespace)
    return ChannelResolver.from_config(
        with_namespace(channels, settings.presence.contacts_namespace, CONTACTS_NAMESPACE)
    )


# The personal inbox channels `inbox:#<subscriber>`: only that subscriber's connections may
# subscribe; a short history lets a reconnecting browser recover the live updates it missed.
INBOX_NAMESPACE: dict[str, Any] = {
    "allow_user_limited": True,
    "history_size": 50,
    "history_ttl": "10m",
}


# The personal channels `presence:#<user>` through which a user hears of their contacts'
# presence changes: only that user may subscribe; nothing is kept.
CONTACTS_NAMESPACE: dict[str, Any] = {"allow_user_limited": True, "history_size": 0}


def with_inbox_namespace(channels: dict[str, Any], namespace: str) -> dict[str, Any]:
    """The channel configuration with the inbox namespace added, unless configured."""
    return with_namespace(channels, namespace, INBOX_NAMESPACE)


def with_namespace(
    channels: dict[str, Any], namespace: str, options: dict[str, Any]
) -> dict[str, Any]:
    """The channel configuration with `namespace` added with `options`, unless configured."""
    raw = channels.get("namespaces") or {}
    if isinstance(raw, dict):
        if namespace in raw:
            return channels
        return {**channels, "namespaces": {**raw, namespace: options}}
    if isinstance(raw, list):
        if any(isinstance(t, dict) and t.get("name") == namespace for t in raw):
            return channels
        return {**channels, "namespaces": [*raw, {"name": namespace, **options}]}
    return channels  # not a table or a list: ChannelResolver names the error


def token_secret(settings: Settings) -> str:
    """The HMAC secret for JWTs: configured, or generated once into `var/token_secret`."""
    if settings.token_secret:
        return settings.token_secret
    path = settings.secret_file()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


def token_keys(settings: Settings) -> TokenKeys:
    g = settings.gateway
    return TokenKeys.from_config(
        hmac_secret=token_secret(settings),
        rsa_public_key=_read(g.token_rsa_public_key_file),
        ecdsa_public_key=_read(g.token_ecdsa_public_key_file),
        jwks=_read(g.token_jwks_file),
        audience=g.token_audience,
        issuer=g.token_issuer,
    )


def _read(path: str | None) -> str | None:
    return Path(path).read_text() if path else None


class KeySetWatcher:
    """Re-reads the gateway's JWKS file when it changes, so keys rotate without a restart.
    A file that cannot be used is logged and the keys in force stay."""

    def __init__(self, settings: Settings, hub: Hub, every: float = 5.0) -> None:
        self.settings, self.hub, self.every = settings, hub, every
        self.path = Path(settings.gateway.token_jwks_file or "")
        self._seen = self._stamp()
        self._task: asyncio.Task[None] | None = None

    def _stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def check(self) -> bool:
        """Reload if the file changed; True when new keys are in force."""
        stamp = self._stamp()
        if stamp is None or stamp == self._seen:
            return False
        self._seen = stamp
        try:
            keys = token_keys(self.settings)
        except (OSError, ValueError) as exc:
            log.error("key set not reloaded", extra={"path": str(self.path), "error": str(exc)})
            return False
        self.hub.options = dataclasses.replace(self.hub.options, keys=keys)
        log.info("key set reloaded", extra={"path": str(self.path), "keys": len(keys.jwks or {})})
        return True

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="jwks-watch")

    async def stop(self) -> None:
        await cancel(self._task)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            self.check()


def gateway_options(settings: Settings) -> GatewayOptions:
    g = settings.gateway
    return GatewayOptions(
        session=SessionConfig(
            max_subscriptions=g.max_subscriptions,
            max_command_size=g.max_message_bytes,
            max_frame_size=g.max_message_bytes,
            commands_per_second=g.commands_per_second,
            ping_interval=g.ping_interval,
            pong_timeout=g.pong_timeout,
            server_version=__version__,
        ),
        keys=token_keys(settings),
        max_buffer_bytes=g.max_buffer_bytes,
        presence_ttl=g.presence_ttl,
        allow_anonymous=g.allow_anonymous,
        max_messages_in_frame=g.max_messages_in_frame,
    )


def create_app(
    settings: Settings, runtime: Runtime | None = None, *, manage_gc: bool = False
) -> FastAPI:
    """The ASGI app around a runtime. `manage_gc`: this process is the server, so apply the
    garbage-collector policy (`settings.gc_freeze_interval`) to it."""
    rt = runtime or build_runtime(settings)
    gc_policy = (
        # A full collection waits (up to its limit) for a moment without transactional work.
        GcPolicy(settings.gc_freeze_interval, quiet=lambda: not rt.gate.busy())
        if manage_gc
        else None
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await rt.start()
        if gc_policy is not None:
            gc_policy.start()
        try:
            yield
        finally:
            if gc_policy is not None:
                await gc_policy.stop()
            await rt.stop()

    app = create_api(
        rt.services,
        max_body_bytes=settings.max_body_bytes,
        lifespan=lifespan,
        unavailable=(DBAPIError, lost_connection),
    )
    app.include_router(sse.router)
    app.include_router(longpoll.router)
    app.state.runtime = rt
    app.state.gc_policy = gc_policy
    return app


def uvicorn_config(settings: Settings, app: FastAPI) -> uvicorn.Config:
    """uvicorn serving the API and, natively on the same port, the gateway's WebSocket."""
    rt: Runtime = app.state.runtime
    ws = websocket_protocol(
        rt.hub,
        path=settings.gateway.path,
        fallback=WebSocketsSansIOProtocol,
        max_size=settings.gateway.max_message_bytes,
        origins=settings.gateway.allowed_origins or None,
    )
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        ws=ws,
        log_config=None,
        access_log=False,
        lifespan="on",
        proxy_headers=True,
        timeout_graceful_shutdown=10,
    )


def migrate(settings: Settings) -> str:
    """Bring the database to the newest migration; returns that revision."""
    sql.upgrade(settings.database_url)
    return sql.head()


def migration_state(settings: Settings) -> tuple[str | None, str]:
    """(the database's migration, the one this code needs)."""
    return sql.current(settings.database_url), sql.head()
