"""The `tidings` command: serve, migrate, API keys, dead letters, templates, campaigns,
segments."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Column, Table

from tidings import __version__, logs
from tidings.config import Settings, load_settings
from tidings.core.tokens import connection_claims, encode_token, subscription_claims
from tidings.errors import InvalidInput, NotFound, TidingsError
from tidings.ports.campaigns import ACTIVE_STATES, CampaignState
from tidings.ports.segments import Segment
from tidings.services.campaigns import CampaignService
from tidings.services.campaigns import Progress as CampaignProgress
from tidings.services.deadletters import DeadFilter, DeadLetters
from tidings.services.segments import MAX_PAGE as MAX_SEGMENT_PAGE
from tidings.services.segments import Members, SegmentService
from tidings.services.testsend import TemplateTestResult
from tidings.types import Job, Scope
from tidings.wiring import (
    Runtime,
    build_runtime,
    create_app,
    migration_state,
    token_secret,
    uvicorn_config,
)
from tidings.wiring import migrate as run_migrations

T = TypeVar("T")

app = typer.Typer(
    name="tidings",
    help="Tidings: real-time gateway and notification orchestrator in one service.",
    no_args_is_help=True,
    add_completion=False,
)
apikey_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
dlq_app = typer.Typer(help="Inspect, replay and discard dead-lettered jobs.", no_args_is_help=True)
app.add_typer(apikey_app, name="apikey")
app.add_typer(dlq_app, name="dlq")
template_app = typer.Typer(help="Preview and test-send message templates.", no_args_is_help=True)
app.add_typer(template_app, name="template")

out = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[
    str | None, typer.Option("--config", "-c", help="TOML config file (else $TIDINGS_CONFIG).")
]


def _settings(config: str | None) -> Settings:
    try:
        return load_settings(config)
    except (FileNotFoundError, ValueError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc


def _fail(message: str, code: int = 1) -> typer.Exit:
    # One line, however long, and the message as written (`steps[0]` is not markup).
    err.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    return typer.Exit(code)


def _require_migrated(settings: Settings) -> None:
    try:
        cur, head = migration_state(settings)
    except Exception as exc:
        raise _fail(f"cannot open the database {settings.database_url}: {exc}") from exc
    if cur != head:
        raise _fail(
            f"the database is at migration {cur or 'none'}, the code needs {head}: "
            "run `tidings migrate` first"
        )


def _with_runtime(settings: Settings, op: Callable[[Runtime], Awaitable[T]]) -> T:
    _require_migrated(settings)

    async def run() -> T:
        rt = build_runtime(settings)
        try:
            return await op(rt)
        finally:
            await rt.engine.dispose()

    try:
        return asyncio.run(run())
    except TidingsError as exc:
        raise _fail(exc.message) from exc


def _version(value: bool) -> None:
    if value:
        out.print(f"tidings {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.")
    ] = False,
) -> None:
    """Tidings: real-time gateway and notification orchestrator in one service."""


@app.command()
def migrate(config: ConfigOpt = None) -> None:
    """Apply database migrations (creates the SQLite file if needed)."""
    settings = _settings(config)
    try:
        head = run_migrations(settings)
    except Exception as exc:
        raise _fail(f"migration failed on {settings.database_url}: {exc}") from exc
    out.print(f"database {settings.database_url} is at migration {head}")


@app.command()
def serve(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Bind address.")] = None,
    port: Annotated[int | None, typer.Option(help="Port.")] = None,
) -> None:
    """Serve the API, the gateway and the workers in one process."""
    import uvicorn

    overrides = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    settings = _settings(config)
    if overrides:
        settings = settings.model_copy(update=overrides)
    _require_migrated(settings)
    logs.configure(settings.log_level, settings.log_format)
    try:  # builds the runtime: a bad workflows file stops the start here, before the banner
        application = create_app(settings, manage_gc=True)
    except TidingsError as exc:
        raise _fail(exc.message) from None
    base = settings.base_url()
    out.print(f"Tidings {__version__} on {base}")
    out.print(f"  API docs  {base}/docs")
    out.print(f"  health    {base}/healthz   ready {base}/readyz")
    out.print(f"  metrics   {base}/metrics")
    out.print(f"  store     {settings.database_url}   broker {settings.broker}")
    out.print(f"  realtime  {base.replace('http', 'ws', 1)}{settings.gateway.path}")
    uvicorn.Server(uvicorn_config(settings, application)).run()


token_app = typer.Typer(help="Create JWTs for the real-time gateway.", no_args_is_help=True)
app.add_typer(token_app, name="token")


@token_app.command("create")
def token_create(
    user: Annotated[str, typer.Option("--user", "-u", help="The user id (the `sub` claim).")],
    channel: Annotated[
        str | None,
        typer.Option(help="Make a subscription token for this channel instead."),
    ] = None,
    ttl: Annotated[
        int | None, typer.Option(min=1, help="Seconds until it expires (default: never).")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Print a connection JWT (or, with --channel, a subscription JWT), alone on the last
    line, signed HS256 with the configured token secret."""
    settings = _settings(config)
    now = int(time.time())
    exp = now + ttl if ttl else None
    if channel is None:
        claims = connection_claims(user, now=now, ttl=ttl)
        kind = "connection"
    else:
        claims = subscription_claims(user, channel, now=now, ttl=ttl)
        kind = f"subscription ({channel})"
    token = encode_token(claims, token_secret(settings))
    until = _when(exp) if exp else "never"
    out.print(f"{kind} token for user {user!r}; expires {until}:")
    sys.stdout.write(token + "\n")


@apikey_app.command("create")
def apikey_create(
    scope: Annotated[
        list[Scope], typer.Option("--scope", "-s", help="publish or admin; repeat for more.")
    ],
    name: Annotated[str, typer.Option(help="A label for the key.")] = "default",
    config: ConfigOpt = None,
) -> None:
    """Create an API key. The key is printed once, alone on the last line."""
    settings = _settings(config)
    key, secret = _with_runtime(
        settings, lambda rt: rt.services.apikeys.create(name, frozenset(scope))
    )
    scopes = ",".join(sorted(s.value for s in key.scopes))
    out.print(f"created API key {key.id} ({name}; scopes: {scopes}); it is shown only once:")
    sys.stdout.write(secret + "\n")


@apikey_app.command("list")
def apikey_list(config: ConfigOpt = None) -> None:
    """List API keys (never their secrets)."""
    keys = _with_runtime(_settings(config), lambda rt: rt.services.apikeys.list())
    table = Table("id", "name", "prefix", "scopes", "created", "revoked")
    for k in keys:
        table.add_row(
            k.id,
            k.name,
            k.prefix,
            ",".join(sorted(s.value for s in k.scopes)),
            _when(k.created_at),
            _when(k.revoked_at) if k.revoked_at else "",
        )
    out.print(table)


@apikey_app.command("revoke")
def apikey_revoke(key_id: str, config: ConfigOpt = None) -> None:
    """Revoke an API key by id."""
    _with_runtime(_settings(config), lambda rt: rt.services.apikeys.revoke(key_id))
    out.print(f"revoked {key_id}")


@dlq_app.command("list")
def dlq_list(
    kind: Annotated[str | None, typer.Option(help="Only jobs of this kind.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 100,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per line, for scripts.")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """List dead-lettered jobs, oldest first."""
    jobs = _with_runtime(_settings(config), lambda rt: rt.services.jobs.list_dead(limit, kind))
    if as_json:
        for j in jobs:
            print(json.dumps(_dead_json(j)))
        return
    # ids are never cut short, whatever the terminal's width: `dlq show` and `replay` take
    # them whole; the error folds instead
    table = Table(
        Column("id", no_wrap=True, min_width=max((len(j.id) for j in jobs), default=2)),
        Column("kind", no_wrap=True),
        "attempts",
        "created",
        Column("last error", overflow="fold"),
    )
    for j in jobs:
        table.add_row(j.id, j.kind, str(j.attempts), _when(j.created_at), j.last_error or "")
    out.print(table)


def _dead_json(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "kind": job.kind,
        "lane": job.lane.value,
        "attempts": job.attempts,
        "last_error": job.last_error,
        "created_at": _when(job.created_at),
        "payload": job.payload,
    }


KindOpt = Annotated[str | None, typer.Option(help="Only dead jobs of this kind.")]
ErrorOpt = Annotated[
    str | None, typer.Option("--error", help="Only dead jobs whose last error contains this.")
]
AllOpt = Annotated[bool, typer.Option("--all", help="Every dead job (matching the filters).")]


def _dead_filter(
    job_ids: list[str] | None, kind: str | None, error: str | None, every: bool, limit: int
) -> DeadFilter | None:
    """None when ids are given; a filter when asked for; exit 2 when neither is."""
    if job_ids:
        if kind or error or every:
            err.print("give job ids or filters (--kind, --error, --all), not both")
            raise typer.Exit(2)
        return None
    if not (kind or error or every):
        err.print("give job ids, or select with --kind/--error, or --all")
        raise typer.Exit(2)
    return DeadFilter(kind, error, limit)


@dlq_app.command("show")
def dlq_show(job_id: str, config: ConfigOpt = None) -> None:
    """Show one dead-lettered job: kind, lane, attempts, last error, payload and the
    messages a delivery job carries, as they stand."""

    async def op(rt: Runtime) -> dict[str, Any]:
        job = await DeadLetters(rt.services.jobs).get(job_id)
        shown = _dead_json(job)
        if rt.services.notify is not None:
            shown["messages"] = await rt.services.notify.job_messages(job.payload)
        return shown

    out.print_json(data=_with_runtime(_settings(config), op))


@dlq_app.command("replay")
def dlq_replay(
    job_ids: Annotated[list[str] | None, typer.Argument()] = None,
    kind: KindOpt = None,
    error: ErrorOpt = None,
    every: AllOpt = False,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 1000,
    config: ConfigOpt = None,
) -> None:
    """Put dead-lettered jobs back on the queue: by id, or all that match the filters."""
    where = _dead_filter(job_ids, kind, error, every, limit)

    async def op(rt: Runtime) -> int:
        if where is not None:
            return len(await DeadLetters(rt.services.jobs).replay(where))
        for job_id in job_ids or []:
            await rt.services.jobs.replay(job_id)
        return len(job_ids or [])

    count = _with_runtime(_settings(config), op)
    out.print(f"replayed {count} job(s)")


@dlq_app.command("discard")
def dlq_discard(
    job_ids: Annotated[list[str] | None, typer.Argument()] = None,
    kind: KindOpt = None,
    error: ErrorOpt = None,
    every: AllOpt = False,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 1000,
    config: ConfigOpt = None,
) -> None:
    """Delete dead-lettered jobs for good: by id, or all that match the filters."""
    where = _dead_filter(job_ids, kind, error, every, limit)

    async def op(rt: Runtime) -> int:
        if where is not None:
            return len(await DeadLetters(rt.services.jobs).discard(where))
        for job_id in job_ids or []:
            await rt.services.jobs.discard(job_id)
        return len(job_ids or [])

    count = _with_runtime(_settings(config), op)
    out.print(f"discarded {count} job(s)")


def _when(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def main() -> None:
    app()


@template_app.command("preview")
def template_preview(
    template: Annotated[str, typer.Argument(help="The template id.")],
    payload: Annotated[str, typer.Option(help="The event payload, JSON.")] = "{}",
    version: Annotated[int | None, typer.Option(help="A version (default: published).")] = None,
    locale: Annotated[str | None, typer.Option(help="BCP 47, e.g. pt-BR.")] = None,
    timezone: Annotated[str, typer.Option(help="IANA zone for dates.")] = "UTC",
    variant: Annotated[str | None, typer.Option(help="An A/B variant.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Render a template for a sample payload and show the result and its checks."""
    try:
        data = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise _fail(f"--payload is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise _fail("--payload must be a JSON object")
    rendered = _with_runtime(
        _settings(config),
        lambda rt: rt.services.templates.preview(
            template, data, version=version, locale=locale, timezone=timezone, variant=variant
        ),
    )
    out.print(
        f"{rendered.template} v{rendered.version} ({rendered.channel.value}), locale "
        f"{rendered.locale}{', variant ' + rendered.variant if rendered.variant else ''}"
        f"{', right to left' if rendered.rtl else ''}: valid"
    )
    if rendered.sms is not None:
        out.print(
            f"sms: {rendered.sms.encoding.value}, {rendered.sms.units} units, "
            f"{rendered.sms.segments} segment(s)"
        )
    for name, value in rendered.fields.items():
        out.print(f"[bold]{name}[/bold]")
        out.print(value, markup=False, highlight=False)


def _json_object(value: str, option: str) -> dict[str, Any]:
    """A JSON object given inline or as `@file`; exits 2 with the reason otherwise."""
    text = value
    if value.startswith("@"):
        try:
            text = Path(value[1:]).read_text()
        except OSError as exc:
            raise _fail(f"{option}: cannot read {value[1:]}: {exc.strerror or exc}", 2) from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(f"{option} is not JSON: {exc}", 2) from exc
    if not isinstance(data, dict):
        raise _fail(f"{option} must be a JSON object", 2)
    return data


@template_app.command("test-send")
def template_test_send(
    template: Annotated[str, typer.Argument(help="The template id.")],
    to: Annotated[
        str,
        typer.Option(help="email: an address; webhook: an endpoint id; in_app: a subscriber id."),
    ],
    payload: Annotated[str, typer.Option(help="The event payload: JSON, or @file.")] = "{}",
    version: Annotated[
        int | None, typer.Option(help="A version, a draft too (default: published).")
    ] = None,
    locale: Annotated[str | None, typer.Option(help="BCP 47, e.g. pt-BR.")] = None,
    timezone: Annotated[str, typer.Option(help="IANA zone for dates.")] = "UTC",
    variant: Annotated[str | None, typer.Option(help="An A/B variant.")] = None,
    subscriber: Annotated[
        str | None, typer.Option(help="Sample subscriber context: JSON, or @file.")
    ] = None,
    channel: Annotated[
        str | None,
        typer.Option(help="Default: the template's; webhook for any template."),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Render a template for a sample payload and send it once, marked as a test.
    Exit 0 when sent, 1 when the destination refused it, 2 when it cannot be sent."""
    data = _json_object(payload, "--payload")
    context = None if subscriber is None else _json_object(subscriber, "--subscriber")

    async def op(rt: Runtime) -> TemplateTestResult | TidingsError:
        try:
            return await rt.services.template_tests.send(
                template,
                to=to,
                payload=data,
                version=version,
                locale=locale,
                timezone=timezone,
                variant=variant,
                subscriber=context,
                channel=channel,
            )
        except (InvalidInput, NotFound) as exc:
            return exc
        finally:
            await rt.services.providers.aclose()

    outcome = _with_runtime(_settings(config), op)
    if isinstance(outcome, TidingsError):
        field = outcome.field
        where = f" (field {field})" if field and field not in outcome.message else ""
        raise _fail(f"cannot send: {outcome.message}{where}", 2)
    r, result = outcome.rendered, outcome.result
    head = (
        f"{r.template} v{r.version} ({r.channel.value}), locale {r.locale}"
        f"{', variant ' + r.variant if r.variant else ''}: to {outcome.to} on "
        f"{outcome.channel} via {outcome.provider}"
    )
    if outcome.sent:
        out.print(f"sent: {head}", markup=False, highlight=False)
        if result.provider_message_id:
            out.print(f"message id: {result.provider_message_id}", markup=False, highlight=False)
        if result.status is not None:
            out.print(f"answer: {result.status}", highlight=False)
        return
    failure = result.failure.value if result.failure else "failed"
    err.print(f"refused: {head}", markup=False, highlight=False)
    err.print(f"{failure}: {result.reason}", markup=False, highlight=False)
    if result.retry_after is not None:
        err.print(f"retry after {result.retry_after:.0f}s", highlight=False)
    raise typer.Exit(1)


# -- campaigns -------------------------------------------------------------------------------

campaign_app = typer.Typer(
    help="Paced bulk sends to a topic or a segment: create, follow, pause, resume, cancel.",
    no_args_is_help=True,
)
app.add_typer(campaign_app, name="campaign")


def _configured(found: T | None, what: str) -> T:
    if found is None:  # pragma: no cover - the runtime always builds them
        raise NotFound(f"{what} are not configured")
    return found


def _campaigns(rt: Runtime) -> CampaignService:
    return _configured(rt.services.campaigns, "campaigns")


def _campaign_pace(p: CampaignProgress) -> str:
    c = p.campaign
    parts = [] if c.rate is None else [f"{c.rate:g} recipients/s"]
    parts += [f"{ch} {r:g}/s" for ch, r in sorted((c.rates or {}).items())]
    return ", ".join(parts)


def _campaign_channels(p: CampaignProgress) -> str:
    return ", ".join(
        f"{ch} {x.achieved_rate:,.1f}/s" + ("" if x.rate is None else f" of {x.rate:g}")
        for ch, x in p.channels.items()
        if x.achieved_rate is not None
    )


def _campaign_line(p: CampaignProgress) -> str:
    c = p.campaign
    total = "?" if p.total is None else f"{p.total:,}"
    rate = "-" if p.achieved_rate is None else f"{p.achieved_rate:,.1f}/s"
    eta = "-" if p.eta_seconds is None else f"{p.eta_seconds:,.0f}s"
    channels = _campaign_channels(p)
    return (
        f"{c.id} {c.state.value}: {c.enqueued:,} of {total} handed out, {p.delivered:,} "
        f"delivered, rate {rate} (set {_campaign_pace(p)}), eta {eta}"
        + (f"; messages {channels}" if channels else "")
    )


@campaign_app.command("create")
def campaign_create(
    workflow: Annotated[str, typer.Option(help="The workflow's key (its event type).")],
    topic: Annotated[
        str | None, typer.Option(help="The topic whose members receive it (or --segment).")
    ] = None,
    segment: Annotated[
        str | None, typer.Option(help="The segment whose subscribers receive it.")
    ] = None,
    rate: Annotated[
        float | None, typer.Option(help="Recipients per second (> 0, <= 10,000).")
    ] = None,
    channel_rate: Annotated[
        list[str] | None,
        typer.Option(
            "--channel-rate",
            help="Messages per second on a channel, CHANNEL=RATE (email=100); repeatable.",
        ),
    ] = None,
    payload: Annotated[str, typer.Option(help="The event payload: JSON, or @file.")] = "{}",
    start_at: Annotated[
        str | None, typer.Option(help="ISO 8601 instant to start at (default: now).")
    ] = None,
    campaign_id: Annotated[
        str | None, typer.Option("--id", help="Your id (a retry with it creates nothing new).")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Create a campaign; the server's workers send it at the given pace."""
    data = _json_object(payload, "--payload")
    rates: dict[str, float] | None = None
    for item in channel_rate or []:
        channel, _, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            raise _fail(f"--channel-rate takes CHANNEL=RATE, not {item!r}", 2) from None
        rates = {**(rates or {}), channel.strip(): number}
    start: float | None = None
    if start_at is not None:
        try:
            when = datetime.fromisoformat(start_at)
        except ValueError as exc:
            raise _fail(f"--start-at is not an ISO 8601 instant: {exc}", 2) from exc
        start = (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()

    async def op(rt: Runtime) -> CampaignProgress | InvalidInput:
        try:
            c = await _campaigns(rt).create(
                workflow=workflow,
                topic=topic,
                segment=segment,
                payload=data,
                rate=rate,
                rates=rates,
                start_at=start,
                campaign_id=campaign_id,
            )
        except InvalidInput as exc:
            return exc
        return await _campaigns(rt).progress(c.id)

    outcome = _with_runtime(_settings(config), op)
    if isinstance(outcome, InvalidInput):
        raise _fail(f"{outcome.field}: {outcome.message}", 2)
    out.print(_campaign_line(outcome), markup=False, highlight=False)


@campaign_app.command("progress")
def campaign_progress(
    campaign_id: str,
    once: Annotated[bool, typer.Option("--once", help="Print one line and exit.")] = False,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between polls.")] = 1.0,
    config: ConfigOpt = None,
) -> None:
    """Follow a campaign with a progress bar until it is completed and its runs are done, or
    it is cancelled or paused."""

    async def op(rt: Runtime) -> CampaignProgress:
        service = _campaigns(rt)
        p = await service.progress(campaign_id)
        if once:
            return p
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=out,
        ) as bar:
            task = bar.add_task(campaign_id, total=None, detail="")
            while True:
                c = p.campaign
                rate = "" if p.achieved_rate is None else f" {p.achieved_rate:,.1f}/s"
                eta = "" if p.eta_seconds is None else f" eta {p.eta_seconds:,.0f}s"
                channels = _campaign_channels(p)
                bar.update(
                    task,
                    total=p.total,
                    completed=p.delivered,
                    detail=f"{c.state.value} handed out {c.enqueued:,}{rate}{eta}"
                    + (f" ({channels})" if channels else ""),
                )
                delivering = c.state is CampaignState.COMPLETED and p.delivered < c.enqueued
                if c.state not in ACTIVE_STATES and not delivering:
                    return p
                await asyncio.sleep(interval)
                p = await service.progress(campaign_id)

    p = _with_runtime(_settings(config), op)
    out.print(_campaign_line(p), markup=False, highlight=False)


def _campaign_action(campaign_id: str, action: str, config: str | None) -> None:
    async def op(rt: Runtime) -> CampaignProgress:
        service = _campaigns(rt)
        await getattr(service, action)(campaign_id)
        return await service.progress(campaign_id)

    out.print(_campaign_line(_with_runtime(_settings(config), op)), markup=False, highlight=False)


@campaign_app.command("pause")
def campaign_pause(campaign_id: str, config: ConfigOpt = None) -> None:
    """Pause: no batch after the ones already enqueued (at most one second's worth)."""
    _campaign_action(campaign_id, "pause", config)


@campaign_app.command("resume")
def campaign_resume(campaign_id: str, config: ConfigOpt = None) -> None:
    """Resume a paused campaign where it stopped."""
    _campaign_action(campaign_id, "resume", config)


@campaign_app.command("cancel")
def campaign_cancel(campaign_id: str, config: ConfigOpt = None) -> None:
    """Cancel for good (the batches already enqueued still run)."""
    _campaign_action(campaign_id, "cancel", config)


# -- segments --------------------------------------------------------------------------------

segment_app = typer.Typer(
    help="Named audiences (a topic and/or a filter on subscriber profiles): create or "
    "replace, list, show, count, preview, delete.",
    no_args_is_help=True,
)
app.add_typer(segment_app, name="segment")


def _segments(rt: Runtime) -> SegmentService:
    return _configured(rt.services.segments, "segments")


def _segment_op(config: str | None, op: Callable[[SegmentService], Awaitable[T]]) -> T:
    """Run `op` on the segment service; a bad input exits 2 naming the field."""

    async def run(rt: Runtime) -> T | InvalidInput:
        try:
            return await op(_segments(rt))
        except InvalidInput as exc:
            return exc

    outcome = _with_runtime(_settings(config), run)
    if isinstance(outcome, InvalidInput):
        raise _fail(f"{outcome.field}: {outcome.message}", 2)
    return outcome


def _segment_line(s: Segment) -> str:
    where = f"topic {s.topic}" if s.topic else "every subscriber"
    rule = json.dumps(s.filter, sort_keys=True) if s.filter is not None else "no filter"
    return f"{s.key} ({s.name}): {where}, {rule}"


@segment_app.command("put")
def segment_put(
    key: Annotated[str, typer.Argument(help="The segment's key.")],
    filter: Annotated[
        str | None, typer.Option("--filter", help="The filter: JSON, or @file.")
    ] = None,
    topic: Annotated[str | None, typer.Option(help="Only members of this topic.")] = None,
    name: Annotated[str | None, typer.Option(help="A label (default: the key).")] = None,
    config: ConfigOpt = None,
) -> None:
    """Create a segment or replace it whole; campaigns already created keep their copy."""
    rule = None if filter is None else _json_object(filter, "--filter")

    async def op(service: SegmentService) -> tuple[Segment, bool, int]:
        segment, created = await service.put(key, name=name, topic=topic, filter=rule)
        return segment, created, await service.count(key)

    segment, created, count = _segment_op(config, op)
    verb = "created" if created else "replaced"
    out.print(
        f"{verb} {_segment_line(segment)}; {count:,} subscribers", markup=False, highlight=False
    )


@segment_app.command("list")
def segment_list(config: ConfigOpt = None) -> None:
    """Every segment, in key order."""

    async def op(service: SegmentService) -> list[Segment]:
        found: list[Segment] = []
        after: str | None = None
        while True:
            page = await service.page(after=after, limit=MAX_SEGMENT_PAGE)
            found += page
            if len(page) < MAX_SEGMENT_PAGE:
                return found
            after = page[-1].key

    segments = _segment_op(config, op)
    table = Table("key", "name", "topic", "filter")
    for s in segments:
        rule = "" if s.filter is None else json.dumps(s.filter, sort_keys=True)
        table.add_row(s.key, s.name, s.topic or "", rule)
    out.print(table)


@segment_app.command("show")
def segment_show(key: str, config: ConfigOpt = None) -> None:
    """One segment and how many subscribers it holds now."""

    async def op(service: SegmentService) -> tuple[Segment, int]:
        return await service.get(key), await service.count(key)

    segment, count = _segment_op(config, op)
    out.print(f"{_segment_line(segment)}; {count:,} subscribers", markup=False, highlight=False)


@segment_app.command("members")
def segment_members(
    key: str,
    limit: Annotated[int, typer.Option(min=1, max=MAX_SEGMENT_PAGE)] = 100,
    cursor: Annotated[str | None, typer.Option(help="next cursor of the page before")] = None,
    config: ConfigOpt = None,
) -> None:
    """A page of the segment's subscribers in id order, then the next cursor if any."""

    async def op(service: SegmentService) -> Members:
        return await service.members(key, cursor=cursor, limit=limit)

    page = _segment_op(config, op)
    for sid in page.ids:
        out.print(sid, markup=False, highlight=False)
    if page.next_cursor is not None:
        out.print(f"next cursor: {page.next_cursor}", markup=False, highlight=False)


@segment_app.command("delete")
def segment_delete(key: str, config: ConfigOpt = None) -> None:
    """Delete a segment; campaigns already created keep the copy they took."""

    async def op(service: SegmentService) -> None:
        await service.delete(key)

    _segment_op(config, op)
    out.print(f"deleted {key}", markup=False, highlight=False)
