"""The notification orchestrator: runs workflows for the recipients of an event.

An event whose type names a workflow and that has recipients (ids, a topic or both) is fanned
out after it is stored: the dispatcher calls :meth:`Orchestrator.start`, which walks the
recipients in bounded batches and enqueues one ``notify.batch`` job per batch on the event's
lane. A batch job creates the runs (workflow x event x recipient, ids derived from the three)
and advances each as far as it can go now, driving the pure step runner
(:func:`tidings.core.notify.next_action`) and the decision pipeline
(:func:`tidings.core.notify.decide`), and writes everything one pass produced in one
transaction: step results (insert-if-absent), messages (keyed by their idempotency key), the
trail, and the jobs that continue the work:

- ``notify.deliver`` per message for email and webhooks (and held messages of any channel),
  at the message's release instant;
- ``notify.run`` to wake a run at the end of a delay, a digest window or an escalation
  deadline.

In-app messages are written to the inbox in the batch itself (before the commit; the inbox is
idempotent per event, subscriber and step), which is what makes bulk in-app sends fast. A
crash anywhere repeats the pass: stored step results and message keys make every effect
happen once (at least once at providers that cannot deduplicate; messages carry stable ids).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from tidings.core.delivery.messages import Bounce, DeliveryChannel, DeliveryResult, EmailMessage
from tidings.core.notify import (
    Channel,
    ChannelStep,
    CheckThrottle,
    CloseDigest,
    DecisionKind,
    DeliveryContext,
    DigestEvent,
    Done,
    FrequencyCap,
    JoinDigest,
    Preferences,
    Recipient,
    Record,
    RunChannelStep,
    RunOutcome,
    StepOutcome,
    StepResult,
    SuppressionFacts,
    ThrottleStep,
    Trigger,
    WaitForStatus,
    WaitUntil,
    Workflow,
    channel_result,
    decide,
    digest_closed,
    digest_joined,
    idempotency_key,
    next_action,
    throttle_result,
)
from tidings.core.notify.decisions import key_prefix, recipient_key, wire_id
from tidings.core.notify.runner import condition_context
from tidings.core.notify.types import DeliveryStatus
from tidings.core.retry import FailureClass, RetryPolicy
from tidings.core.retry import decide as retry_decision
from tidings.core.subscribers import suppression_key
from tidings.core.templates import Channel as TemplateChannel
from tidings.core.templates import (
    Content,
    Rendered,
    RenderError,
    TemplateVersion,
    assign_variant,
    check_variables,
)
from tidings.errors import InvalidInput, NotFound
from tidings.ports.clock import Clock
from tidings.ports.events import EventStore
from tidings.ports.inbox import InboxItem, Mark, Marked
from tidings.ports.notify import (
    Message,
    MessageUpdate,
    Run,
    RunState,
    RunStore,
    RunWrite,
    StepRow,
    TrailEntry,
)
from tidings.ports.preferences import PreferenceStore, SuppressionStore
from tidings.ports.subscribers import Subscriber, SubscriberStore, TopicStore
from tidings.records import record
from tidings.services.inbox import ENGAGING, InboxService
from tidings.services.lanes import BulkTurns, LaneGate, together
from tidings.services.providers import ProviderRegistry, WebhookService
from tidings.services.templates import TemplateService
from tidings.services.worker import DeferJob, Handoffs, PermanentJobError, RetryableJobError
from tidings.services.workflows import WorkflowRegistry
from tidings.types import EventRecord, EventState, Job, NewJob, Outcome, Priority

log = logging.getLogger(__name__)

BATCH_JOB = "notify.batch"
RUN_JOB = "notify.run"
# The channels whose decisions need the recipient's devices and Web Push subscriptions.
PUSH_CHANNELS = frozenset({Channel.PUSH, Channel.WEBPUSH})
DELIVER_JOB = "notify.deliver"
DELIVER_BATCH_JOB = "notify.deliver_batch"
FINAL_FAILURES = (FailureClass.PERMANENT, FailureClass.POLICY)
MAX_ACTIONS_PER_STEP = 3
ENGAGEMENT = ("seen", "read", "clicked", "archived")
INBOX_REPORT_CHUNK = 500  # marked items per read and write of `inbox_marked`
DELIVERY_REPORTS = ("delivered", "bounced", "failed")
QUEUED = DeliveryStatus.QUEUED.value
# Runs advanced between yields to the event loop: a transactional job that becomes ready
# meanwhile waits for at most this many runs' Python (0.3-0.6 ms each) before the lane
# gate holds the batch back.
YIELD_EVERY = 8
# Attempts of one bulk delivery job in flight at once: enough to keep a provider's
# connections busy (each renders while others send), few enough that their Python between
# two yields stays short.
SEND_AHEAD = 8
INLINE_RECIPIENTS = 20  # explicit recipients run in the dispatch job itself, without a batch
# Template roots that make a rendering personal (never shared between recipients).
PERSONAL_ROOTS = frozenset({"subscriber", "steps", "*"})
# Template roots that need the run's stored step results to render.
RUN_ROOTS = frozenset({"steps", "digest", "*"})


@record
class NotifyConfig:
    sender: str = "Tidings <notifications@localhost>"
    batch_size: int = 500
    bulk_batch_size: int = 500
    bulk_commit_size: int = 50  # runs per write transaction of a bulk batch
    bulk_concurrency: int = 1  # bulk batches at once in one process
    max_recipients: int = 1000  # explicit ids per event; topics have no limit
    caps: tuple[FrequencyCap, ...] = ()
    delivery_attempts: int = 8
    # the backoff of a failed job: the worker pools' own (wiring passes it to them), used
    # here for a message failing in a batch; its max_attempts: delivery_attempts
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    send_batch: int = 50  # due bulk messages per delivery job (1: a job each)
    workflow_refresh: float = 5.0  # seconds between reloads of API-defined workflows


# -- the orchestrator ------------------------------------------------------------------------


def batch_job(
    event_id: str, workflow: str, recipients: Sequence[str], lane: Priority, dedupe_key: str
) -> NewJob:
    """A job that runs `workflow` for these recipients of the event (`handle_batch`)."""
    return NewJob(
        kind=BATCH_JOB,
        payload={"event_id": event_id, "workflow": workflow, "recipients": list(recipients)},
        lane=lane,
        dedupe_key=dedupe_key,
    )


def run_id(event_id: str, workflow: str, recipient: str) -> str:
    """A run's id: `recipient_key` of the recipient after a prefix over
    ``[event_id, workflow]`` (one event's runs are appended to the index, not scattered)."""
    return recipient_key(key_prefix(event_id, workflow), recipient)


def to_recipient(subscriber_id: str, s: Subscriber | None) -> Recipient:
    if s is None:
        return Recipient(subscriber_id, known=False)
    return Recipient(
        id=s.id,
        email=s.email,
        phone=s.phone,
        locale=s.locale,
        timezone=s.timezone,
        data=s.data,
        push_tokens=len(s.devices),
        webpush_subscriptions=len(s.webpush),
    )


@dataclass
class _Shared:
    """What a batch's recipients have in common, worked out once: renderings that do not
    depend on the recipient, whether a version refers to the recipient, the item data."""

    rendered: dict[tuple[Any, ...], Rendered] = field(default_factory=dict)
    personal: dict[str, bool] = field(default_factory=dict)  # template ref -> personal
    item_data: dict[str, Any] | None = None


@dataclass
class _Pass:
    """What one pass over a batch of runs gathers and produces."""

    event: EventRecord
    workflow: Workflow
    trigger: Trigger
    now: float
    recipients: dict[str, Recipient]
    prefs: dict[str, Preferences]
    recent: dict[str, dict[str, list[float]]]
    writes: list[RunWrite] = field(default_factory=list)
    jobs: list[NewJob] = field(default_factory=list)
    sends: list[Message] = field(default_factory=list)  # due bulk messages, sent in batches
    inbox: list[InboxItem] = field(default_factory=list)
    templates: dict[str, tuple[str, TemplateVersion | None, str]] = field(default_factory=dict)
    effects: dict[str, set[str]] = field(default_factory=dict)  # step id -> duplicate keys
    suppressed: dict[str, dict[str, str]] = field(default_factory=dict)  # channel -> address
    endpoints: list[str] | None = None
    shared: _Shared = field(default_factory=lambda: _Shared())
    broken: dict[str, str] = field(default_factory=dict)  # template ref -> contract break

    def take(self) -> tuple[list[InboxItem], list[RunWrite], list[NewJob], list[Message]]:
        """The slice produced so far, for `_flush`; the pass starts the next one empty."""
        taken = (self.inbox, self.writes, self.jobs, self.sends)
        self.inbox, self.writes, self.jobs, self.sends = [], [], [], []
        return taken


ReachableFn = Callable[[str], Awaitable[bool]]
# A batch's reads about its recipients: subscribers by id, preferences, recent sends.
_Inputs = tuple[dict[str, Subscriber], dict[str, Preferences], dict[str, dict[str, list[float]]]]


class Orchestrator:
    def __init__(
        self,
        runs: RunStore,
        workflows: WorkflowRegistry,
        events: EventStore,
        subscribers: SubscriberStore,
        topics: TopicStore,
        preferences: PreferenceStore,
        suppressions: SuppressionStore,
        inbox: InboxService,
        templates: TemplateService,
        providers: ProviderRegistry,
        webhooks: WebhookService,
        clock: Clock,
        config: NotifyConfig | None = None,
        *,
        enqueue: Callable[[NewJob], Awaitable[str]],
        on_enqueue: Callable[[], None] | None = None,
        active: ReachableFn | None = None,
        gate: LaneGate | None = None,
        handoffs: Handoffs | None = None,
    ) -> None:
        self.runs = runs
        self.workflows = workflows
        self.events = events
        self.subscribers = subscribers
        self.topics = topics
        self.preferences = preferences
        self.suppressions = suppressions
        self.inbox = inbox
        self.templates = templates
        self.providers = providers
        self.webhooks = webhooks
        self.clock = clock
        self.config = config or NotifyConfig()
        self._enqueue = enqueue
        self._on_enqueue = on_enqueue
        self._active = active
        self._gate = gate or LaneGate()
        self._handoffs = handoffs or Handoffs(())  # none: every job is queued for a claim
        # Bulk batches at once in this process: more only queue on the event loop (and on
        # SQLite's writer) in front of transactional work.
        self._bulk_slots = asyncio.Semaphore(self.config.bulk_concurrency)
        self._run_locks = KeyedLocks()
        self._recipient_locks = KeyedLocks()
        self._turns = BulkTurns(self._gate)

    # -- at ingest -----------------------------------------------------------------------

    async def check_trigger(
        self,
        event_type: str,
        recipients: Sequence[str],
        topic: str | None,
        channels: Sequence[str] = (),
        payload: Mapping[str, Any] | None = None,
    ) -> None:
        """Refuse at ingest what could never be delivered: an unknown topic, too many explicit
        recipients. An event type without a workflow is accepted (the event is the record;
        a workflow may come later) and its outcome says that nothing was sent."""
        if not recipients and topic is None:
            return
        if len(recipients) > self.config.max_recipients:
            raise InvalidInput(
                f"{len(recipients)} recipients; at most {self.config.max_recipients} per "
                "event (use a topic for more)",
                field="recipients",
            )
        if topic is not None:
            try:
                await self.topics.get(topic)
            except NotFound:
                raise InvalidInput(f"unknown topic {topic!r}", field="topic") from None
        workflow = await self.workflows.get(event_type)
        if workflow is not None and payload is not None:
            await self._check_contracts(workflow, payload)

    async def _check_contracts(self, workflow: Workflow, payload: Mapping[str, Any]) -> None:
        """The payload against the variable contract (JSON Schema) of every published
        template the workflow uses: a payload that breaks one is refused before any fanout,
        naming the path (`payload.order.id`). A template not published yet is checked when
        the step runs (and recorded there)."""
        for step in workflow.steps:
            if not isinstance(step, ChannelStep) or step.template is None:
                continue
            try:
                version = await self.templates.resolve(step.template)
            except NotFound:
                continue
            check_variables(version, payload)

    # -- fanout --------------------------------------------------------------------------

    async def start(self, event: EventRecord) -> None:
        """Fan the event out to its recipients in batch jobs (called by the dispatcher; safe
        to repeat: batch jobs are deduplicated by their position)."""
        if not event.recipients and event.topic is None:
            return
        workflow = await self.workflows.get(event.type)
        if workflow is None and event.channels:
            return  # a real-time event naming its audience: nothing to notify
        if workflow is None:
            await self.events.add_outcome(
                event.id,
                Outcome(
                    "notify",
                    event.type,
                    "not_sent",
                    f"no workflow for event type {event.type!r}",
                    self._now(),
                ),
            )
            return
        size = (
            self.config.bulk_batch_size
            if event.priority is Priority.BULK
            else self.config.batch_size
        )
        index = 0
        count = 0
        explicit = list(dict.fromkeys(event.recipients))
        if event.topic is None and len(explicit) <= INLINE_RECIPIENTS:
            # A few recipients (the transactional case): run them in this job, saving a
            # queue round trip. A retry finds the runs made and goes on where they stand.
            await self._run_batch(event, workflow, explicit)
            return
        for i in range(0, len(explicit), size):
            await self._enqueue_batch(event, workflow, explicit[i : i + size], index)
            index += 1
            count += len(explicit[i : i + size])
        if event.topic is not None:
            seen = set(explicit)
            pending: list[str] = []
            try:
                async for members in self.topics.iter_members(event.topic, batch=size):
                    pending.extend(m for m in members if m not in seen)
                    while len(pending) >= size:
                        await self._enqueue_batch(event, workflow, pending[:size], index)
                        index, count, pending = index + 1, count + size, pending[size:]
            except NotFound:
                await self.events.add_outcome(
                    event.id,
                    Outcome("notify", event.topic, "failed", "topic was deleted", self._now()),
                )
            if pending:
                await self._enqueue_batch(event, workflow, pending, index)
                index, count = index + 1, count + len(pending)
        await self.events.add_outcome(
            event.id,
            Outcome(
                "notify",
                workflow.key,
                "fanned_out",
                f"{count} recipients in {index} batches",
                self._now(),
            ),
        )

    async def _enqueue_batch(
        self, event: EventRecord, workflow: Workflow, recipients: list[str], index: int
    ) -> None:
        await self._enqueue(
            batch_job(
                event.id,
                workflow.key,
                recipients,
                event.priority,
                f"notify:{event.id}:{workflow.key}:{index}",
            )
        )
        if self._on_enqueue is not None:
            self._on_enqueue()

    # -- job handlers --------------------------------------------------------------------

    async def cancel(self, event_id: str) -> int:
        """Stop the event's runs that are still going (delays, digests, escalations, held
        messages): they end `cancelled` and their queued messages are not sent."""
        return await self.runs.cancel_runs(event_id, self._now(), "event cancelled", wake_job)

    async def handle_batch(self, job: Job) -> None:
        event_id = str(job.payload.get("event_id", ""))
        key = str(job.payload.get("workflow", ""))
        recipients = [str(r) for r in job.payload.get("recipients") or []]
        event = await self.events.get(event_id)
        if event is None:
            raise PermanentJobError(f"event {event_id} not found")
        if event.state is EventState.CANCELLED:
            return
        workflow = await self.workflows.get(key)
        if workflow is None:
            raise PermanentJobError(f"workflow {key} no longer exists")
        if event.priority is Priority.BULK:
            async with self._bulk_slots:
                with self._turns.running() as turn:
                    await self._run_batch(event, workflow, recipients, turn)
        else:
            await self._run_batch(event, workflow, recipients)

    async def _run_batch(
        self,
        event: EventRecord,
        workflow: Workflow,
        recipients: Sequence[str],
        turn: object | None = None,
    ) -> None:
        if turn is not None:
            await self._turns.turn(turn)  # its reads too wait while others go first
        async with self._one_at_a_time(workflow, recipients):
            await self._run_batch_now(event, workflow, recipients, turn)

    async def _run_batch_now(
        self,
        event: EventRecord,
        workflow: Workflow,
        recipients: Sequence[str],
        turn: object | None,
    ) -> None:
        key = workflow.key
        now = self._now()
        fresh = [
            Run(run_id(event.id, key, r), event.id, key, r, event.priority, created_at=now)
            for r in recipients
        ]
        # A run is stored by the commit that moves it out of ACTIVE, with its step results
        # and messages: an unknown run is new, a stored one is waiting (load it) or done
        # (`_advance` passes it over).
        inputs: _Inputs | None = None
        if event.priority is Priority.BULK:
            await self._gate.hold_bulk()
            stored = await self.runs.get_runs([r.id for r in fresh])
        else:  # the recipients' reads go at the same time as the runs'
            stored, inputs = await together(
                self.runs.get_runs([r.id for r in fresh]),
                self._inputs(workflow, list(recipients), bulk=False),
            )
        waiting = [r.id for r in stored.values() if r.state is RunState.WAITING]
        if waiting:
            await self._gate.hold_bulk()
        loaded = await self.runs.load_many(waiting) if waiting else {}
        items = [loaded.get(r.id) or (stored.get(r.id, r), {}, {}) for r in fresh]
        await self._advance(event, workflow, items, turn, inputs)

    async def handle_run(self, job: Job) -> None:
        rid = str(job.payload.get("run_id", ""))
        # Two wakes of one run (a message seen, then read) may be claimed at once: the second
        # advances the run as the first left it, not as both found it (one step's trail
        # entry twice).
        async with self._run_locks.hold(rid), self.runs.exclusive([f"run:{rid}"]):
            await self._handle_run(rid)

    def _counting(self, workflow: Workflow) -> bool:
        """Whether a pass of `workflow` counts a recipient's earlier sends (frequency caps)
        or passes (throttle steps): passes for one recipient then go one at a time, each
        reading what the one before committed."""
        return bool(self.config.caps) or any(isinstance(s, ThrottleStep) for s in workflow.steps)

    @contextlib.asynccontextmanager
    async def _one_at_a_time(
        self, workflow: Workflow, recipients: Sequence[str]
    ) -> AsyncIterator[None]:
        """With `_counting`: the recipients' locks in this process, then across the
        processes that share the store (this process's tasks queue here, not each holding a
        database connection while it waits)."""
        if not self._counting(workflow):
            yield
            return
        shared = [f"recipient:{r}" for r in recipients]
        async with self._recipient_locks.hold_many(recipients), self.runs.exclusive(shared):
            yield

    async def _handle_run(self, rid: str) -> None:
        loaded = await self.runs.load_many([rid])
        if rid not in loaded:
            raise PermanentJobError(f"run {rid} not found")
        run, steps, messages = loaded[rid]
        if run.state is RunState.DONE:
            if not _promoted(run, steps):
                return
            # Its join went into a digest whose leader's event was cancelled while this run
            # was being written, and the cancel handed it the digest: it leads it now.
            run = dataclasses.replace(run, state=RunState.WAITING, outcome=None)
        event = await self.events.get(run.event_id)
        workflow = await self.workflows.get(run.workflow)
        if event is None or workflow is None:
            raise PermanentJobError(f"run {rid}: its event or workflow is gone")
        if event.state is EventState.CANCELLED:
            await self.cancel(event.id)  # a run made while the cancel came in: end it
            return
        async with self._one_at_a_time(workflow, [run.recipient]):
            await self._advance(event, workflow, [(run, steps, messages)])

    # -- advancing runs ------------------------------------------------------------------

    async def _advance(
        self,
        event: EventRecord,
        workflow: Workflow,
        items: list[tuple[Run, dict[str, StepRow], dict[str, Message]]],
        turn: object | None = None,
        inputs: _Inputs | None = None,
    ) -> None:
        """Advance the runs. `turn`: a bulk batch's token (`BulkTurns`): while
        transactional work is recent, it goes on only as the oldest bulk batch running.
        `inputs`: the recipients' reads (`_inputs`) when made already."""
        items = [i for i in items if i[0].state is not RunState.DONE]
        if not items:
            return
        ids = [run.recipient for run, _, _ in items]
        if inputs is None:
            inputs = await self._inputs(workflow, ids, bulk=event.priority is Priority.BULK)
        subs, prefs, recent = inputs
        p = _Pass(
            event=event,
            workflow=workflow,
            trigger=Trigger(
                event.id, event.type, event.payload, event.send_at or event.created_at, event.actor
            ),
            now=self._now(),
            recipients={i: to_recipient(i, subs.get(i)) for i in ids},
            prefs=prefs,
            recent=recent,
        )
        # Bulk batches commit in slices: a write transaction of a few dozen runs keeps the
        # waits of transactional writers behind it (one SQLite writer) short.
        # With one bulk batch at a time (SQLite), a slice is written while the next one is
        # worked out (one write in flight at a time): the database's share of a slice
        # overlaps the Python of the next. Several batches at once overlap each other.
        bulk = event.priority is Priority.BULK
        per_commit = self.config.bulk_commit_size if bulk else len(items)
        ahead = bulk and self.config.bulk_concurrency == 1
        writing: asyncio.Task[None] | None = None
        try:
            for n, (run, steps, messages) in enumerate(items, 1):
                p.writes.append(await self._advance_run(p, run, steps, messages))
                if len(p.writes) >= per_commit:
                    if writing is not None:
                        await writing
                    writing = asyncio.ensure_future(self._flush(p, *p.take()))
                    if not ahead:
                        await writing
                if n % YIELD_EVERY == 0:
                    await self._gate.pause()  # transactional work in flight goes first
                    if turn is not None:
                        await self._turns.turn(turn)
                elif writing is not None and not writing.done():
                    await asyncio.sleep(0)  # the write takes its next step
        finally:
            if writing is not None:
                # whatever happened above, the slice in flight is written or has failed
                # before the batch ends; a failed write fails the batch (retried whole)
                await writing
        await self._flush(p, *p.take())

    async def _inputs(self, workflow: Workflow, ids: list[str], *, bulk: bool) -> _Inputs:
        """The subscribers, preferences and (with frequency caps) recent sends of `ids`.
        Bulk work reads them one after another, each after the lane gate; transactional work
        reads them `together` (at the same time, each on a connection of its own, unless
        SQLite's reads run on the loop's thread)."""
        pushes = any(
            isinstance(s, ChannelStep) and s.channel in PUSH_CHANNELS for s in workflow.steps
        )
        caps_window = max((c.window for c in self.config.caps), default=0.0)

        async def subscribers() -> dict[str, Subscriber]:
            return {s.id: s for s in await self.subscribers.get_many(ids, devices=pushes)}

        async def recent() -> dict[str, dict[str, list[float]]]:
            if not caps_window:
                return {}
            return await self.runs.recent_sends(ids, self._now() - caps_window)

        if not bulk:
            return await together(subscribers(), self.preferences.get_many(ids), recent())
        await self._gate.hold_bulk()
        subs = await subscribers()
        await self._gate.hold_bulk()
        prefs = await self.preferences.get_many(ids)
        if caps_window:
            await self._gate.hold_bulk()
        return subs, prefs, await recent()

    async def _flush(
        self,
        p: _Pass,
        inbox: list[InboxItem],
        writes: list[RunWrite],
        jobs: list[NewJob],
        sends: list[Message],
    ) -> None:
        """Write what the pass produced in a slice: inbox items (idempotent by id) first,
        then the runs with their steps, messages, trail and jobs (the due bulk messages'
        in batches) in one transaction, and their jobs woken; then the items' live updates
        (a subscriber sees an item once its run is committed)."""
        size = self.config.send_batch
        tries = self.config.delivery_attempts
        due = p.event.created_at
        jobs += [
            send_batch_job(sends[i : i + size], tries, due) for i in range(0, len(sends), size)
        ]
        # Bulk waits while transactional work is in flight before each of its two
        # transactions, so neither takes SQLite's one writer lock from under it.
        await self._gate.hold_bulk()
        stored = await self.inbox.add_many(inbox, push=False) if inbox else []
        queued = False
        if writes:
            await self._gate.hold_bulk()
            # Due jobs (deliveries, bulk ones too) go straight to a local worker with a free
            # slot once stored, without a claim transaction and a poll.
            with self._handoffs.offering(jobs, p.now, bulk=True) as offered:
                offered.stored = await self.runs.commit(writes, offered.jobs)
            queued = offered.queued()  # those handed off run as they are stored
        if queued and self._on_enqueue is not None:
            self._on_enqueue()
        await self.inbox.push(stored)  # live updates once the runs are committed

    async def _advance_run(
        self, p: _Pass, run: Run, steps: dict[str, StepRow], messages: dict[str, Message]
    ) -> RunWrite:
        recipient = p.recipients[run.recipient]
        results = {
            sid: await self._result(row, messages.get(sid), recipient.id)
            for sid, row in steps.items()
        }
        new_steps: list[StepRow] = []
        new_messages: list[Message] = []
        trail: list[TrailEntry] = []

        # A channel step's decisions and its hand-off go into the trail entry of its result:
        # one entry per step explains it whole.
        decided: list[Mapping[str, Any]] = []
        handed: list[Mapping[str, Any]] = []

        def note(kind: str, step_id: str | None, data: Mapping[str, Any]) -> None:
            if kind == "decision":
                decided.append(data)
                return
            if kind == "delivery":
                handed.append(data)
                return
            trail.append(
                TrailEntry(
                    run.id, run.event_id, run.recipient, run.workflow, step_id, kind, p.now, data
                )
            )

        def store(result: StepResult) -> None:
            replace = result.step_id in results  # a digest leader's result, now closed
            results[result.step_id] = result
            new_steps[:] = [s for s in new_steps if s.step_id != result.step_id]
            new_steps.append(
                StepRow(
                    run.id,
                    result.step_id,
                    result.outcome.value,
                    result.at,
                    result.reason,
                    result.to_json(),
                    replace=replace and result.step_id in steps,
                )
            )
            entry: dict[str, Any] = {"outcome": result.outcome.value, "reason": result.reason}
            if decided:
                entry["decisions"] = list(decided)
                decided.clear()
            if handed:
                entry["delivery"] = handed[-1]
                handed.clear()
            note("step", result.step_id, entry)

        state, outcome, reason, wake = RunState.ACTIVE, None, "", None
        for _ in range(MAX_ACTIONS_PER_STEP * (len(p.workflow.steps) + 1)):
            action = next_action(p.workflow, p.trigger, recipient, results, p.now)
            if isinstance(action, Record):
                store(action.result)
            elif isinstance(action, RunChannelStep):
                result, msgs = await self._channel_step(p, run, recipient, action, results, note)
                new_messages.extend(msgs)
                store(result)
            elif isinstance(action, WaitUntil | WaitForStatus):
                state, wake = RunState.WAITING, action.until
                reason = (
                    action.reason
                    if isinstance(action, WaitUntil)
                    else (f"waiting for {action.watch} {action.status}")
                )
                p.jobs.append(wake_job(run.id, run.lane, action.step_id, action.until))
                if run.state is not RunState.WAITING or run.wake_at != wake:
                    note(
                        "run", action.step_id, {"state": "waiting", "until": wake, "reason": reason}
                    )
                break
            elif isinstance(action, CheckThrottle):
                passed = await self.runs.count_passed(
                    run.workflow,
                    action.step_id,
                    run.recipient,
                    action.key,
                    action.since,
                    action.until,
                )
                store(throttle_result(action, passed))
            elif isinstance(action, JoinDigest):
                joined = await self.runs.join_digest(
                    action.digest_id,
                    run.id,
                    run.event_id,
                    p.event.payload,
                    p.event.actor,
                    action.at,
                )
                result = digest_joined(action, leader=joined.leader, closed=joined.closed)
                if joined.closed:  # too late for its window: a digest of its own event
                    await self.runs.join_digest(
                        result.digest_id or "",
                        run.id,
                        run.event_id,
                        p.event.payload,
                        p.event.actor,
                        action.at,
                    )
                store(result)
            elif isinstance(action, CloseDigest):
                events = await self.runs.close_digest(action.digest_id)
                store(
                    digest_closed(
                        action,
                        [
                            DigestEvent(eid, at, payload, actor)
                            for eid, payload, at, actor in events
                        ],
                    )
                )
            else:
                assert isinstance(action, Done)
                state, outcome, reason, wake = (
                    RunState.DONE,
                    action.outcome.value,
                    action.reason,
                    None,
                )
                if outcome != "completed":  # the step entries tell a completed run
                    note("run", None, {"state": "done", "outcome": outcome, "reason": reason})
                break
        else:  # pragma: no cover - the runner always ends or waits
            raise PermanentJobError(f"run {run.id} did not settle")
        updated = Run(
            run.id,
            run.event_id,
            run.workflow,
            run.recipient,
            run.lane,
            run.created_at,
            state,
            outcome,
            reason,
            wake,
        )
        return RunWrite(updated, new_steps, new_messages, trail)

    async def _result(self, row: StepRow, message: Message | None, recipient: str) -> StepResult:
        result = StepResult.from_json(row.result)
        if message is None:
            return result
        statuses = dict(result.statuses)
        for name, at in message.statuses.items():
            statuses[name] = min(statuses.get(name, at), at)
        if message.channel == Channel.IN_APP.value and message.status != QUEUED:
            statuses.update(await self._inbox_statuses(recipient, message.id, statuses))
        return StepResult(
            result.step_id,
            result.outcome,
            result.at,
            result.reason,
            sent_at=result.sent_at,
            delivery=DeliveryStatus(message.status),
            statuses=statuses,
            digest_id=result.digest_id,
            window_end=result.window_end,
            digest=result.digest,
        )

    async def _inbox_statuses(
        self, subscriber: str, item_id: str, known: Mapping[str, float]
    ) -> dict[str, float]:
        try:
            item = await self.inbox.store.get(subscriber, item_id)
        except NotFound:
            return {}
        out: dict[str, float] = {}
        for name, at in (
            ("seen", item.seen_at),
            ("read", item.read_at),
            ("archived", item.archived_at),
        ):
            if at is not None and name not in known:
                out[name] = at
        return out

    # -- channel steps -------------------------------------------------------------------

    async def _channel_step(
        self,
        p: _Pass,
        run: Run,
        recipient: Recipient,
        action: RunChannelStep,
        results: Mapping[str, StepResult],
        note: Callable[[str, str | None, Mapping[str, Any]], None],
    ) -> tuple[StepResult, list[Message]]:
        step = action.step
        channel = step.channel
        try:
            version_ref, template, template_id = await self._template(p, step)
        except (NotFound, InvalidInput) as exc:
            note("decision", step.id, {"stage": "template", "kind": "fail", "detail": str(exc)})
            return self._failed(step, p.now, f"template_unavailable: {exc}"), []
        broken = self._contract(p, version_ref, template)
        if broken:
            note("decision", step.id, {"stage": "template", "kind": "fail", "detail": broken})
            return self._failed(step, p.now, f"payload_invalid: {broken}"), []
        key = idempotency_key(p.event.id, recipient.id, channel, version_ref)
        if step.id not in p.effects and p.event.priority is not Priority.BULK:
            await self._prefetch(p, step, channel, version_ref)
        facts = await self._facts(p, step, recipient, results)
        duplicates = await self._duplicates(p, step, channel, version_ref)
        verdict = decide(
            p.workflow,
            step,
            recipient,
            DeliveryContext(
                event_id=p.event.id,
                template_version=version_ref,
                now=p.now,
                preferences=p.prefs.get(recipient.id, Preferences()),
                caps=self.config.caps,
                recent_sends={Channel(c): ts for c, ts in p.recent.get(recipient.id, {}).items()},
                facts=facts,
                already_done=key in duplicates,
            ),
            key=key,
        )
        for decision in verdict.trail:
            note("decision", step.id, decision.to_json())
        result = channel_result(step, verdict, p.now)
        if verdict.kind not in (DecisionKind.SEND, DecisionKind.HOLD):
            return result, []
        release = result.sent_at if result.sent_at is not None else p.now
        held = verdict.kind is DecisionKind.HOLD
        variant = _variant(template, recipient.id)
        # The message's fields but its status: each outcome below builds its message once.
        fields: dict[str, Any] = {
            "id": key,
            "run_id": run.id,
            "event_id": run.event_id,
            "recipient": recipient.id,
            "workflow": run.workflow,
            "step_id": step.id,
            "channel": channel.value,
            "template": template_id,
            "template_version": version_ref,
            "lane": run.lane,
            "release_at": release,
            "created_at": p.now,
            "updated_at": p.now,
            "variant": variant,
            "locale": recipient.locale,
        }
        if channel is Channel.WEBHOOK:
            base = Message(**fields, status=QUEUED)
            endpoints = [step.endpoint] if step.endpoint else await self._endpoints(p)
            if not endpoints:
                note(
                    "decision",
                    step.id,
                    {
                        "stage": "address",
                        "kind": "fail",
                        "detail": "no webhook endpoint takes this event type",
                    },
                )
                return self._failed(step, p.now, "no_address: no webhook endpoint"), []
            msgs = [
                _replace(
                    base,
                    id=idempotency_key(p.event.id, recipient.id, f"webhook:{ep}", version_ref),
                    provider=f"webhook:{ep}",
                )
                for ep in endpoints
            ]
            for m in msgs:
                self._queue_delivery(p, m)
            return result, msgs
        if channel is Channel.IN_APP and not held:
            # the inbox item's id is the message's: delivered as the item is stored
            sent = Message(
                **fields,
                status=DeliveryStatus.DELIVERED.value,
                statuses={"sent": p.now, "delivered": p.now},
                provider="inbox",
                provider_id=key,
                attempts=1,
            )
            try:
                item = self._inbox_item(
                    p.event, p.now, sent, template, recipient, action.context, p.shared
                )
            except RenderError as exc:
                note(
                    "delivery",
                    step.id,
                    {"status": "failed", "class": "permanent", "reason": str(exc)},
                )
                return self._failed(step, p.now, f"render_failed: {exc.message}"), [
                    Message(**fields, status=DeliveryStatus.FAILED.value, error=exc.message)
                ]
            p.inbox.append(item)
            note("delivery", step.id, {"status": "delivered", "provider": "inbox", "message": key})
            return result, [sent]
        if channel not in (Channel.IN_APP, Channel.EMAIL) or (
            channel is Channel.EMAIL and self.providers.get(DeliveryChannel.EMAIL) is None
        ):
            detail = f"no provider configured for {channel.value}"
            note("delivery", step.id, {"status": "not_sent", "reason": detail})
            return self._failed(step, p.now, f"no_provider: {detail}"), [
                Message(**fields, status=DeliveryStatus.NOT_SENT.value, error=detail)
            ]
        queued = Message(**fields, status=QUEUED)
        self._queue_delivery(p, queued)
        return result, [queued]

    def _failed(self, step: ChannelStep, now: float, reason: str) -> StepResult:
        return StepResult(
            step.id, StepOutcome.FAILED, now, reason, delivery=DeliveryStatus.NOT_SENT
        )

    def _queue_delivery(self, p: _Pass, m: Message) -> None:
        """A job to deliver the message: a bulk message due now goes in the slice's batch
        (`handle_deliver_batch`), any other gets a job of its own, due at its release."""
        if m.lane is Priority.BULK and m.release_at <= p.now and self.config.send_batch > 1:
            p.sends.append(m)
        else:
            p.jobs.append(self._deliver_job(m))

    def _deliver_job(self, m: Message) -> NewJob:
        return NewJob(
            DELIVER_JOB,
            {"message_id": m.id},
            lane=m.lane,
            run_at=m.release_at,
            dedupe_key=f"deliver:{m.id}",
            max_attempts=self.config.delivery_attempts,
        )

    async def _template(
        self, p: _Pass, step: ChannelStep
    ) -> tuple[str, TemplateVersion | None, str | None]:
        """(version reference for the idempotency key, the version to render, template id)."""
        cached: tuple[str, TemplateVersion | None, str] | None = p.templates.get(step.id)
        if cached is None:
            if step.template is not None:
                found = await self.templates.resolve(step.template)
                if not step.takes_template_for(found.channel.value):
                    raise InvalidInput(
                        f"template {step.template} is for {found.channel.value}; "
                        f"the step sends {step.channel.value}",
                        field="template",
                    )
                cached = (f"{step.template}@{found.version}", found, step.template)
            else:
                cached = (step.content_version() or "default", _inline(p.workflow, step), "")
            p.templates[step.id] = cached
        ref, version, template_id = cached
        return ref, version, template_id or None

    def _contract(self, p: _Pass, ref: str, version: TemplateVersion | None) -> str:
        """How the event's payload breaks the version's variable contract ('' if it does
        not): checked once per pass, and rendering in the pass does not check again."""
        if version is None or version.variables is None:
            return ""
        found = p.broken.get(ref)
        if found is None:
            try:
                check_variables(version, p.event.payload)
                found = ""
            except InvalidInput as exc:
                found = str(exc)
            p.broken[ref] = found
        return found

    async def _duplicates(
        self, p: _Pass, step: ChannelStep, channel: Channel, ref: str
    ) -> set[str]:
        """Keys of this step's effects that other runs already hold, for the whole batch at
        once (one query per step per batch)."""
        found = p.effects.get(step.id)
        if found is None:
            keys = [idempotency_key(p.event.id, r, channel, ref) for r in p.recipients]
            await self._gate.hold_bulk()
            found = await self.runs.effects_done(
                keys,
                {
                    k: run_id(p.event.id, p.workflow.key, r)
                    for k, r in zip(keys, p.recipients, strict=True)
                },
            )
            p.effects[step.id] = found
        return found

    async def _facts(
        self,
        p: _Pass,
        step: ChannelStep,
        recipient: Recipient,
        results: Mapping[str, StepResult],
    ) -> SuppressionFacts:
        channel = step.channel
        address = {Channel.EMAIL: recipient.email, Channel.SMS: recipient.phone}.get(channel)
        suppressed = ""
        if address:
            table = p.suppressed.get(channel.value)
            if table is None:
                table = await self._suppressed(p, channel)
            suppressed = table.get(suppression_key(channel.value, address), "")
        seen = any(
            r.reached("seen") is not None
            for sid, r in results.items()
            if _channel_of(p.workflow, sid) is Channel.IN_APP
        )
        active = False
        if self._active is not None and step.skips_when_active():
            active = await self._active(recipient.id)
        return SuppressionFacts(
            unsubscribed=suppressed in ("unsubscribed", "complaint", "manual"),
            hard_bounced=suppressed == "hard_bounce",
            token_invalid=suppressed == "invalid_token",
            seen_in_app=seen,
            user_active=active,
        )

    async def _suppressed(self, p: _Pass, channel: Channel) -> dict[str, str]:
        """The suppressed addresses of the pass's recipients on `channel` (email, SMS), read
        once per pass."""
        addresses = [
            a
            for r in p.recipients.values()
            if (a := (r.email if channel is Channel.EMAIL else r.phone))
        ]
        await self._gate.hold_bulk()
        table = await self.suppressions.check_many(
            channel.value, [suppression_key(channel.value, a) for a in addresses]
        )
        p.suppressed[channel.value] = table
        return table

    async def _prefetch(self, p: _Pass, step: ChannelStep, channel: Channel, ref: str) -> None:
        """Transactional work, before a step's first recipient: the step's two reads for the
        pass (its effects other runs hold, the suppressed addresses) at the same time, where
        `_duplicates` and `_facts` would wait for one after the other."""
        if channel not in (Channel.EMAIL, Channel.SMS) or channel.value in p.suppressed:
            return  # one read at most: made where it is needed
        await together(self._duplicates(p, step, channel, ref), self._suppressed(p, channel))

    async def _endpoints(self, p: _Pass) -> list[str]:
        if p.endpoints is None:
            p.endpoints = [e.id for e in await self.webhooks.endpoints_for(p.event.type)]
        return p.endpoints

    def _inbox_item(
        self,
        event: EventRecord,
        now: float,
        message: Message,
        template: TemplateVersion | None,
        recipient: Recipient,
        context: Mapping[str, Any],
        shared: _Shared | None = None,
    ) -> InboxItem:
        if template is None:  # a definition always has content for in-app; guard anyway
            raise RenderError("the step has no in-app content", field="content")
        fields = self._render(template, message, recipient, context, shared).fields
        data = shared.item_data if shared is not None else None
        if data is None:
            small = len(orjson.dumps(event.payload)) <= self.inbox.max_data_bytes
            data = dict(event.payload) if small else {}
            if shared is not None:
                shared.item_data = data
        return InboxItem(
            id=message.id,
            subscriber=recipient.id,
            title=fields.get("title", "") or event.type,
            body=fields.get("body", ""),
            created_at=now,
            event_id=event.id,
            workflow=message.workflow,
            step=message.step_id,
            action_url=fields.get("action_url") or None,
            data=data,
        )

    def _render(
        self,
        template: TemplateVersion,
        message: Message,
        recipient: Recipient,
        context: Mapping[str, Any],
        shared: _Shared | None = None,
    ) -> Rendered:
        """Render for one recipient. With `shared` (one batch, whose payload was checked
        against the contract), a version that does not refer to the subscriber or to the
        run's steps is rendered once per locale, zone and variant and reused."""
        if shared is None:
            return self._render_now(template, message, recipient, context, checked=False)
        ref = message.template_version
        personal = shared.personal.get(ref)
        if personal is None:
            personal = bool(self.templates.renderer.roots(template) & PERSONAL_ROOTS)
            shared.personal[ref] = personal
        if personal:
            return self._render_now(template, message, recipient, context, checked=True)
        key = (ref, message.variant, recipient.locale, recipient.timezone)
        found = shared.rendered.get(key)
        if found is None:
            found = self._render_now(template, message, recipient, context, checked=True)
            shared.rendered[key] = found
        return found

    def _render_now(
        self,
        template: TemplateVersion,
        message: Message,
        recipient: Recipient,
        context: Mapping[str, Any],
        *,
        checked: bool,
    ) -> Rendered:
        return self.templates.renderer.render(
            template,
            context.get("payload", {}),
            locale=recipient.locale,
            timezone=recipient.timezone or "UTC",
            recipient=recipient.context(),
            variant=message.variant,
            extra={k: v for k, v in context.items() if k not in ("payload", "subscriber")},
            checked=checked,
        )

    # -- delivery ------------------------------------------------------------------------

    async def handle_deliver(self, job: Job) -> None:
        mid = str(job.payload.get("message_id", ""))
        message = await self.runs.message(mid)
        if message is None:
            raise PermanentJobError(f"message {mid} not found")
        if message.status not in (QUEUED, DeliveryStatus.FAILED.value):
            return  # an earlier attempt finished it
        # the event and the subscriber at the same time: two round trips waited for as one
        event, subscriber = await together(
            self.events.get(message.event_id),
            self._subscriber(message.recipient, devices=message.channel in PUSH_CHANNELS),
        )
        if event is not None and event.state is EventState.CANCELLED:
            # Cancelled after this message was queued (held, delayed by quiet hours, or
            # caught mid-dispatch): it never goes out.
            now = self._now()
            await self.runs.update_messages([self._not_sent(message, now)], at=now)
            return
        workflow = await self.workflows.get(message.workflow)
        gone = _gone(message, event, workflow)
        if gone is not None:
            raise PermanentJobError(f"message {mid}: {gone}")
        assert event is not None and workflow is not None
        template = await self._version(workflow, _step_of(workflow, message), message)
        attempt = message.attempts + 1
        result, provider = await self._attempt(message, event, workflow, subscriber, template, {})
        if result.paced:  # held back by the provider's rate limit: no attempt used
            raise DeferJob(
                result.retry_after if result.retry_after is not None else 1.0, result.reason
            )
        now = self._now()
        update = self._settlement(
            message, attempt, result, provider, now, workflow, last=job.attempts >= job.max_attempts
        )
        if result.bounce is Bounce.HARD:
            await self._bounced(message, subscriber, now, result.reason)
        await self.runs.update_messages([update], at=now)
        if result.delivered or result.bounce is Bounce.HARD:
            return
        failure = result.failure or FailureClass.TRANSIENT
        if failure in FINAL_FAILURES:
            # the worker's dead letter reads "permanent: <why>"; a policy failure says so
            policy = failure is not FailureClass.PERMANENT
            raise PermanentJobError(
                f"{failure.value}: {result.reason}" if policy else result.reason
            )
        raise RetryableJobError(result.reason, failure, result.retry_after)

    async def handle_deliver_batch(self, job: Job) -> None:
        """Deliver a slice of a bulk send's due messages (`send_batch_job`): one read of the
        messages, their events, workflows and subscribers for the whole slice, the sends at
        once (each provider bounds its own connections), and one transaction that settles
        them all. A message that failed goes on as a ``notify.deliver`` job of its own, so
        its retries never hold the others back: queued for its next attempt (backoff with
        full jitter from its first, or the provider's Retry-After), or, failed for good,
        stored dead-lettered, to be replayed from the dead-letter queue like any delivery.

        Messages this job has settled are not sent again when it runs again (after a crash
        the lease runs out and another worker takes it): it sends only those with no
        attempt recorded."""
        ids = [str(i) for i in job.payload.get("message_ids") or []]
        await self._gate.hold_bulk()
        found = await self.runs.messages(ids)
        todo = [
            m
            for m in (found.get(i) for i in ids)
            if m is not None
            and m.attempts == 0
            and m.status in (QUEUED, DeliveryStatus.FAILED.value)
        ]
        if not todo:
            return
        events: dict[str, EventRecord | None] = {}
        workflows: dict[str, Workflow | None] = {}
        for m in todo:
            if m.event_id not in events:
                events[m.event_id] = await self.events.get(m.event_id)
            if m.workflow not in workflows:
                workflows[m.workflow] = await self.workflows.get(m.workflow)
        now = self._now()
        updates: list[MessageUpdate] = []
        live: list[tuple[Message, EventRecord, Workflow]] = []
        for m in todo:
            event, workflow = events[m.event_id], workflows[m.workflow]
            gone = _gone(m, event, workflow)
            if event is not None and event.state is EventState.CANCELLED:
                updates.append(self._not_sent(m, now))
            elif gone is not None:
                result = DeliveryResult.failed(FailureClass.PERMANENT, gone, attempted=False)
                updates.append(self._batch_settlement(m, result, "none", now, workflow))
            else:
                assert event is not None and workflow is not None
                live.append((m, event, workflow))
        pushes = any(m.channel in PUSH_CHANNELS for m, _, _ in live)
        await self._gate.hold_bulk()
        subs = {
            s.id: s
            for s in await self.subscribers.get_many(
                list(dict.fromkeys(m.recipient for m, _, _ in live)), devices=pushes
            )
        }
        versions: dict[tuple[str, str, str], TemplateVersion | None] = {}
        reads_run: set[tuple[str, str, str]] = set()  # versions whose rendering reads the run
        runs: set[str] = set()
        for m, _, workflow in live:
            key = (m.workflow, m.step_id, m.template_version)
            if key not in versions:
                template = versions[key] = await self._version(workflow, _step_of(workflow, m), m)
                if template is not None and self.templates.renderer.roots(template) & RUN_ROOTS:
                    reads_run.add(key)
            if key in reads_run:
                runs.add(m.run_id)
        loaded = await self.runs.load_many(sorted(runs)) if runs else {}
        # A few attempts at a time, each after the lane gate: rendering and MIME are the
        # loop's work, and 50 started at once would run back to back in front of
        # transactional work (the provider's slots bound only the sends).
        results: dict[str, tuple[DeliveryResult, str]] = {}
        queue = iter(live)

        async def attempts() -> None:
            for m, event, workflow in queue:
                await self._gate.pause()
                key = (m.workflow, m.step_id, m.template_version)
                results[m.id] = await self._attempt(
                    m,
                    event,
                    workflow,
                    subs.get(m.recipient),
                    versions[key],
                    loaded,
                    key in reads_run,
                )

        await asyncio.gather(*(attempts() for _ in range(min(SEND_AHEAD, len(live)))))
        now = self._now()
        for m, _, workflow in live:
            result, provider = results[m.id]
            if result.bounce is Bounce.HARD:
                await self._bounced(m, subs.get(m.recipient), now, result.reason)
            updates.append(self._batch_settlement(m, result, provider, now, workflow))
        await self._gate.pause()
        await self.runs.update_messages(updates, at=now)

    async def _attempt(
        self,
        message: Message,
        event: EventRecord,
        workflow: Workflow,
        subscriber: Subscriber | None,
        template: TemplateVersion | None,
        loaded: Mapping[str, tuple[Run, dict[str, StepRow], dict[str, Message]]],
        reads_run: bool | None = None,
    ) -> tuple[DeliveryResult, str]:
        """One attempt at delivering the message (whose step exists: `_gone`): its template
        rendered (with the run's step results when the template reads them, `reads_run`
        when the caller knows; `loaded`, or read here) and handed to the channel's
        provider. A rendering that fails is a permanent failure."""
        step = _step_of(workflow, message)
        recipient = to_recipient(message.recipient, subscriber)
        results: dict[str, StepResult] = {}
        if reads_run is None:
            reads_run = bool(template and self.templates.renderer.roots(template) & RUN_ROOTS)
        if reads_run:
            # only a template that reads earlier steps or the digest needs the run loaded
            found = loaded.get(message.run_id)
            if found is None:
                found = (await self.runs.load_many([message.run_id])).get(message.run_id)
            if found is not None:
                _, rows, msgs = found
                results = {
                    s: await self._result(r, msgs.get(s), recipient.id) for s, r in rows.items()
                }
        trigger = Trigger(
            event.id, event.type, event.payload, event.send_at or event.created_at, event.actor
        )
        context = condition_context(trigger, recipient, results)
        try:
            return await self._send(event, workflow, step, message, recipient, context, template)
        except RenderError as exc:
            return (
                DeliveryResult.failed(FailureClass.PERMANENT, f"render_failed: {exc.message}"),
                "render",
            )

    async def _send(
        self,
        event: EventRecord,
        workflow: Workflow,
        step: ChannelStep,
        message: Message,
        recipient: Recipient,
        context: Mapping[str, Any],
        template: TemplateVersion | None,
    ) -> tuple[DeliveryResult, str]:
        if message.channel == Channel.WEBHOOK.value:
            endpoint = (message.provider or "webhook:").split(":", 1)[1]
            data = {
                "event": {"id": event.id, "type": event.type, "actor": event.actor},
                "workflow": workflow.key,
                "step": step.id,
                "recipient": recipient.context(),
                "payload": event.payload,
            }
            if template is not None:  # the step's stored template, rendered for the recipient
                rendered = self._render(template, message, recipient, context)
                data["template"] = {
                    "id": rendered.template,
                    "version": rendered.version,
                    "channel": rendered.channel.value,
                    "locale": rendered.locale,
                    "variant": rendered.variant,
                    "fields": rendered.fields,
                }
            result = await self.webhooks.deliver(
                endpoint,
                event.type,
                data,
                message_id=f"msg_{wire_id(message.id)}",
                occurred_at=event.created_at,
            )
            return result, f"webhook:{endpoint}"
        if message.channel == Channel.IN_APP.value:
            item = self._inbox_item(event, self._now(), message, template, recipient, context)
            await self.inbox.add_many([item])
            return DeliveryResult.ok(item.id), "inbox"
        if (
            message.channel != Channel.EMAIL.value
            or self.providers.get(DeliveryChannel.EMAIL) is None
        ):
            return (
                DeliveryResult.failed(
                    FailureClass.POLICY,
                    f"no provider configured for {message.channel}",
                    attempted=False,
                ),
                "none",
            )
        if not recipient.email:
            return DeliveryResult.failed(
                FailureClass.POLICY, "subscriber has no email address", attempted=False
            ), "smtp"
        if template is None:  # a definition always has content for email; guard anyway
            raise RenderError("the step has no email content", field="content")
        rendered = self._render(template, message, recipient, context)
        subject = rendered.fields.get("subject", event.type)
        text = rendered.fields.get("text", "")
        html = rendered.fields.get("html")
        email = EmailMessage(
            sender=self.config.sender,
            to=recipient.email,
            subject=subject,
            text=text,
            html=html,
            headers={"X-Tidings-Event": event.id, "X-Tidings-Workflow": workflow.key},
            message_id=wire_id(message.id),
        )
        return await self.providers.send(email), "smtp"

    async def _version(
        self, workflow: Workflow, step: ChannelStep, message: Message
    ) -> TemplateVersion | None:
        """The template version the message recorded (history renders faithfully)."""
        if message.template is None:
            return _inline(workflow, step)
        number = int(message.template_version.rsplit("@", 1)[1])
        return await self.templates.resolve(message.template, number)

    def _settlement(
        self,
        message: Message,
        attempt: int,
        result: DeliveryResult,
        provider: str,
        now: float,
        workflow: Workflow | None,
        *,
        last: bool = True,
    ) -> MessageUpdate:
        """What delivery attempt number `attempt` changes in the message: sent, bounced or
        failed for good (then the run is woken where a step waits for it), or still queued
        for a retry. `last`: no retry follows a failure (the attempts are spent)."""
        entry: dict[str, Any] = {"attempt": attempt, "provider": provider, "message": message.id}
        statuses: dict[str, float] = {}
        if result.delivered:
            status = DeliveryStatus.SENT.value
            statuses["sent"] = now
            if message.channel == Channel.IN_APP.value:
                status = DeliveryStatus.DELIVERED.value
                statuses["delivered"] = now
            entry.update(status=status, provider_id=result.provider_message_id)
        elif result.bounce is Bounce.HARD:
            status = DeliveryStatus.BOUNCED.value
            statuses["bounced"] = now
            entry.update(status=status, reason=result.reason)
        else:
            failure = result.failure or FailureClass.TRANSIENT
            final = last or failure in FINAL_FAILURES
            status = DeliveryStatus.FAILED.value if final else QUEUED
            if final:
                statuses["failed"] = now
            entry.update(
                status="failed" if final else "retrying",
                reason=result.reason,
                **{"class": failure.value},
            )
            if result.retry_after is not None:
                entry["retry_after"] = result.retry_after
        return MessageUpdate(
            message.id,
            status=status,
            statuses=statuses,
            provider=provider if not provider.startswith("webhook:") else None,
            provider_id=result.provider_message_id,
            error=None if result.delivered else result.reason,
            clear_error=result.delivered,  # an earlier attempt's failure no longer holds
            attempts=attempt,
            trail=[self._trail(message, "delivery", entry, now)],
            jobs=self._wake(message, status, now, workflow) if status != QUEUED else (),
        )

    def _batch_settlement(
        self,
        message: Message,
        result: DeliveryResult,
        provider: str,
        now: float,
        workflow: Workflow | None,
    ) -> MessageUpdate:
        """The first attempt of a message sent in a batch, settled: a failure goes on as
        the message's own delivery job, due for its next attempt or dead-lettered; one
        the provider's rate limit held back goes on as its own job, due at the slot kept
        for it, no attempt used."""
        if result.paced:
            due = now + (result.retry_after if result.retry_after is not None else 1.0)
            entry = {"status": "deferred", "reason": result.reason, "until": due}
            return MessageUpdate(
                message.id,
                trail=[self._trail(message, "delivery", entry, now)],
                jobs=[dataclasses.replace(self._deliver_job(message), run_at=due)],
            )
        if result.delivered or result.bounce is Bounce.HARD:
            return self._settlement(message, 1, result, provider, now, workflow)
        # the worker's decision after a failed first attempt (`WorkerPool.execute`)
        failure = result.failure or FailureClass.TRANSIENT
        policy = dataclasses.replace(self.config.retry, max_attempts=self.config.delivery_attempts)
        retry = retry_decision(policy, failure, 1, retry_after=result.retry_after)
        update = self._settlement(message, 1, result, provider, now, workflow, last=not retry.retry)
        job = dataclasses.replace(self._deliver_job(message), attempts=1)
        if retry.retry:
            job = dataclasses.replace(job, run_at=now + retry.delay)
            return dataclasses.replace(update, jobs=[*update.jobs, job])
        why = f"{failure.value}: {result.reason}"
        dead = why if failure in FINAL_FAILURES else f"{retry.reason}: {why}"
        gone = self._trail(message, "delivery", {"status": "dead_lettered", "reason": dead}, now)
        return dataclasses.replace(
            update,
            trail=[*update.trail, gone],
            jobs=[*update.jobs, dataclasses.replace(job, dead=dead)],
        )

    async def _bounced(
        self, message: Message, subscriber: Subscriber | None, now: float, reason: str
    ) -> None:
        """The message bounced hard: an email's address is suppressed for later messages."""
        if message.channel != Channel.EMAIL.value:
            return
        if subscriber is not None and subscriber.email:
            await self.suppressions.add(
                "email", suppression_key("email", subscriber.email), "hard_bounce", now, reason
            )

    def _not_sent(
        self, message: Message, now: float, reason: str = "event cancelled"
    ) -> MessageUpdate:
        return MessageUpdate(
            message.id,
            status=DeliveryStatus.NOT_SENT.value,
            error=reason,
            trail=[self._trail(message, "delivery", {"status": "not_sent", "reason": reason}, now)],
        )

    async def fail_delivery(self, job: Job, reason: str) -> None:
        """The delivery job was dead-lettered: the message failed (replay from the DLQ
        sends it again)."""
        mid = str(job.payload.get("message_id", ""))
        message = await self.runs.message(mid)
        if message is None:
            return
        workflow = await self.workflows.get(message.workflow)
        await self.runs.update_messages(
            [self._dead_lettered(message, reason, workflow)], at=self._now()
        )

    async def fail_delivery_batch(self, job: Job, reason: str) -> None:
        """A batch delivery job was dead-lettered: its messages that it had not settled
        failed (a replay of the job sends those again)."""
        ids = [str(i) for i in job.payload.get("message_ids") or []]
        found = await self.runs.messages(ids)
        left = [m for m in found.values() if m.attempts == 0 and m.status == QUEUED]
        if left:
            workflows = {k: await self.workflows.get(k) for k in {m.workflow for m in left}}
            await self.runs.update_messages(
                [self._dead_lettered(m, reason, workflows[m.workflow]) for m in left],
                at=self._now(),
            )

    def _dead_lettered(
        self, message: Message, reason: str, workflow: Workflow | None
    ) -> MessageUpdate:
        now = self._now()
        return MessageUpdate(
            message.id,
            status=DeliveryStatus.FAILED.value,
            statuses={"failed": now},
            error=reason,
            trail=[
                self._trail(message, "delivery", {"status": "dead_lettered", "reason": reason}, now)
            ],
            jobs=self._wake(message, "failed", now, workflow),
        )

    async def fail_batch(self, job: Job, reason: str) -> None:
        event_id = str(job.payload.get("event_id", ""))
        count = len(job.payload.get("recipients") or [])
        try:
            await self.events.add_outcome(
                event_id,
                Outcome(
                    "notify",
                    str(job.payload.get("workflow")),
                    "failed",
                    f"batch of {count}: {reason}",
                    self._now(),
                ),
            )
        except NotFound:
            log.warning(
                "dead-lettered notify batch for unknown event", extra={"event_id": event_id}
            )

    # -- reports from providers, clients and the inbox -----------------------------------

    async def job_messages(self, payload: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The messages a delivery job carries (`message_id`, or a batch's `message_ids`), as
        they stand now: what an operator inspecting a dead letter wants to see (event,
        recipient, channel, provider, status, error). Other jobs carry none."""
        if "message_id" in payload:
            ids = [str(payload["message_id"])]
        else:
            ids = [str(i) for i in payload.get("message_ids") or []]
        if not ids:
            return []
        found = await self.runs.messages(ids)
        return [message_json(found[i]) for i in ids if i in found]

    async def report(self, message_id: str, status: str, at: float | None = None) -> Message:
        """A delivery report (delivered, bounced, failed) or engagement (seen, read, clicked,
        archived) for a message, e.g. from a provider callback. The first instant of each
        status is kept; a bounce suppresses the email address. Seen, read or archived on an
        in-app message marks its inbox item too (with the item's live update), and what
        that mark set besides (reading sets seen) is recorded on the message with it."""
        if status not in DELIVERY_REPORTS + ENGAGEMENT:
            allowed = ", ".join(DELIVERY_REPORTS + ENGAGEMENT)
            raise InvalidInput(f"status must be one of {allowed}", field="status")
        message = await self.runs.message(message_id)
        if message is None:
            raise NotFound(f"message {message_id} not found")
        now = self._now()
        when = min(at, now) if at is not None else now
        delivery = status if status in DELIVERY_REPORTS else None
        if status == "bounced" and message.channel == Channel.EMAIL.value:
            subscriber = await self._subscriber(message.recipient, devices=False)
            await self._bounced(message, subscriber, now, "bounce reported")
        statuses = {status: when}
        if message.channel == Channel.IN_APP.value and status in {m.value for m in ENGAGING}:
            marked = await self.inbox.mark_reported(
                message.recipient, message.id, Mark(status), when
            )
            if marked is not None:
                statuses = _marked_statuses(marked, message.statuses) | statuses
        jobs = self._wake(message, status, now, await self.workflows.get(message.workflow))
        [updated] = await self.runs.update_messages(
            [
                MessageUpdate(
                    message_id,
                    status=delivery,
                    statuses=statuses,
                    trail=[
                        self._trail(message, "delivery", {"status": status, "reported": True}, now)
                    ],
                    jobs=jobs,
                )
            ],
            at=now,
        )
        if jobs and self._on_enqueue is not None:
            self._on_enqueue()
        return updated

    async def inbox_marked(self, subscriber: str, items: Sequence[Marked]) -> int:
        """Engagement marked in the subscriber's inbox (seen, read, archived): each item's
        states that its message lacks are recorded on the message (the item's id is its
        message's), with a trail entry per status (`source: inbox`) and a job waking the
        run when a step of its workflow waits for the message's step. Items without a
        message of this subscriber's in the store (added straight to the inbox) are
        skipped; a mark that adds nothing to a message writes nothing. A chunk of items
        takes one read and one write transaction. Returns how many messages changed."""
        now = self._now()
        workflows: dict[str, Workflow | None] = {}
        changed = 0
        queued = False
        for start in range(0, len(items), INBOX_REPORT_CHUNK):
            chunk = items[start : start + INBOX_REPORT_CHUNK]
            found = await self.runs.messages([m.id for m in chunk])
            updates: list[MessageUpdate] = []
            for item in chunk:
                message = found.get(item.id)
                if (
                    message is None
                    or message.channel != Channel.IN_APP.value
                    or message.recipient != subscriber
                ):
                    continue
                new = _marked_statuses(item, message.statuses)
                if not new:
                    continue
                if message.workflow not in workflows:
                    workflows[message.workflow] = await self.workflows.get(message.workflow)
                jobs = self._wake(message, "+".join(new), now, workflows[message.workflow])
                queued = queued or bool(jobs)
                trail = [
                    self._trail(
                        message,
                        "delivery",
                        {"status": name, "reported": True, "source": "inbox"},
                        now,
                    )
                    for name in new
                ]
                updates.append(MessageUpdate(message.id, statuses=new, trail=trail, jobs=jobs))
            if updates:
                changed += len(await self.runs.update_messages(updates, at=now))
        if queued and self._on_enqueue is not None:
            self._on_enqueue()
        return changed

    def _wake(
        self, message: Message, status: str, now: float, workflow: Workflow | None = None
    ) -> list[NewJob]:
        """Wake the run so that a step waiting for this status goes on now; nothing when no
        step of the workflow waits for the message's step."""
        if workflow is not None and not any(
            isinstance(s, ChannelStep)
            and s.wait_for is not None
            and s.wait_for.step == message.step_id
            for s in workflow.steps
        ):
            return []
        return [
            NewJob(
                RUN_JOB,
                {"run_id": message.run_id},
                lane=message.lane,
                run_at=now,
                dedupe_key=f"wake:{message.run_id}:{message.id}:{status}",
            )
        ]

    def _trail(self, m: Message, kind: str, data: Mapping[str, Any], now: float) -> TrailEntry:
        return TrailEntry(m.run_id, m.event_id, m.recipient, m.workflow, m.step_id, kind, now, data)

    # -- reading ---------------------------------------------------------------------------

    async def event_report(
        self, event_id: str, *, after: str | None = None, limit: int = 500
    ) -> dict[str, Any]:
        """Why each message of one event was sent, held, suppressed or failed, a page of
        recipients at a time (in recipient order): their runs, messages and trail whole,
        with the count of the event's runs per state on every page."""
        runs = await self.runs.runs_for_event(event_id, after=after, limit=limit + 1)
        more, runs = len(runs) > limit, runs[:limit]  # one more read: is this the last page
        messages = await self.runs.messages_for_runs([r.id for r in runs])
        trail = await self.runs.trail_for_recipients(event_id, [r.recipient for r in runs])
        counts = await self.runs.count_runs(event_id)
        return {
            "event_id": event_id,
            "counts": {state.value: n for state, n in counts.items()},
            "runs": [run_json(r) for r in runs],
            "messages": [message_json(m) for m in messages],
            "trail": [trail_json(t) for t in trail],
            "next_cursor": runs[-1].recipient if more else None,
        }

    async def recipient_report(
        self, recipient: str, *, after: int = 0, limit: int = 200
    ) -> dict[str, Any]:
        trail = await self.runs.trail_for_recipient(recipient, after=after, limit=limit + 1)
        more, trail = len(trail) > limit, trail[:limit]
        messages = await self.runs.messages_for_recipient(recipient, before=None, limit=limit)
        return {
            "subscriber_id": recipient,
            "messages": [message_json(m) for m in messages],
            "trail": [trail_json(t) for t in trail],
            "next_cursor": str(trail[-1].seq) if more else None,
        }

    def _now(self) -> float:
        return self.clock.now()

    async def _subscriber(self, subscriber_id: str, *, devices: bool) -> Subscriber | None:
        found = await self.subscribers.get_many([subscriber_id], devices=devices)
        return found[0] if found else None


# -- helpers ---------------------------------------------------------------------------------


class KeyedLocks:
    """One `asyncio.Lock` per key while anyone holds or waits for it (none kept after)."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            _, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    @contextlib.asynccontextmanager
    async def hold_many(self, keys: Sequence[str]) -> AsyncIterator[None]:
        """Every key's lock, taken one by one in sorted order (two holders of overlapping
        sets never wait for each other in a circle)."""
        async with contextlib.AsyncExitStack() as stack:
            for key in sorted(set(keys)):
                await stack.enter_async_context(self.hold(key))
            yield

    def __len__(self) -> int:
        return len(self._locks)


def send_batch_job(messages: Sequence[Message], max_attempts: int, due: float) -> NewJob:
    """The job that delivers these due bulk messages together (`handle_deliver_batch`);
    its dedupe key is its first message's (a message is in one batch only).

    It is due since `due`, its event's accept: ahead of the event's batches still queued
    (due since the fanout enqueued them), so a bulk send's workers deliver what the fanout
    made before making more, and the queue holds a few slices, not the whole send."""
    return NewJob(
        DELIVER_BATCH_JOB,
        {"message_ids": [m.id for m in messages]},
        lane=Priority.BULK,
        run_at=due,
        dedupe_key=f"deliver-batch:{messages[0].id}",
        max_attempts=max_attempts,
    )


def wake_job(run_id: str, lane: Priority, step_id: str, until: float) -> NewJob:
    """The job that advances run `run_id` at `until`, where step `step_id` waits."""
    return NewJob(
        RUN_JOB,
        {"run_id": run_id},
        lane=lane,
        run_at=until,
        dedupe_key=f"wake:{run_id}:{step_id}:{until:.3f}",
    )


def _step(workflow: Workflow, message: Message) -> ChannelStep | None:
    """The channel step of the workflow that made the message (None: no longer there)."""
    return next(
        (s for s in workflow.steps if s.id == message.step_id and isinstance(s, ChannelStep)),
        None,
    )


def _gone(message: Message, event: EventRecord | None, workflow: Workflow | None) -> str | None:
    """Why the message can no longer be delivered as it was made (None: it can)."""
    if event is None or workflow is None:
        return "its event or workflow is gone"
    if _step(workflow, message) is None:
        return f"step {message.step_id} is gone"
    return None


def _step_of(workflow: Workflow, message: Message) -> ChannelStep:
    """The message's channel step, known to exist (`_gone` said None)."""
    step = _step(workflow, message)
    assert step is not None, message.step_id
    return step


def _promoted(run: Run, steps: Mapping[str, StepRow]) -> bool:
    """A run stored as merged into a digest whose lead passed to it (`cancel_runs`)."""
    return run.outcome == RunOutcome.MERGED.value and any(
        s.outcome == StepOutcome.DIGEST_LEADER.value for s in steps.values()
    )


def _channel_of(workflow: Workflow, step_id: str) -> Channel | None:
    for s in workflow.steps:
        if s.id == step_id and isinstance(s, ChannelStep):
            return s.channel
    return None


def _variant(template: TemplateVersion | None, recipient: str) -> str | None:
    if template is None or not template.variants:
        return None
    return assign_variant(template.template, recipient, {name: 1 for name in template.variants})


_TEMPLATE_CHANNELS = {c.value for c in TemplateChannel}


def _inline(workflow: Workflow, step: ChannelStep) -> TemplateVersion | None:
    if step.content is None or step.channel.value not in _TEMPLATE_CHANNELS:
        return None
    return TemplateVersion(
        template=f"{workflow.key}.{step.id}",
        version=0,
        channel=TemplateChannel(step.channel.value),
        locales={"en": Content(dict(step.content))},
        default_locale="en",
    )


def _marked_statuses(item: Marked, known: Mapping[str, float]) -> dict[str, float]:
    """The item's engagement states that `known` (its message's statuses) lacks."""
    return {
        name: at
        for name, at in (
            ("seen", item.seen_at),
            ("read", item.read_at),
            ("archived", item.archived_at),
        )
        if at is not None and name not in known
    }


def _replace(m: Message, **changes: Any) -> Message:
    return dataclasses.replace(m, **changes)


def run_json(r: Run) -> dict[str, Any]:
    return {
        "id": r.id,
        "workflow": r.workflow,
        "recipient": r.recipient,
        "lane": r.lane.value,
        "state": r.state.value,
        "outcome": r.outcome,
        "reason": r.reason,
        "wake_at": r.wake_at,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
    }


def message_json(m: Message) -> dict[str, Any]:
    engagement = {k: v for k, v in m.statuses.items() if k in ENGAGEMENT}
    return {
        "id": m.id,
        "run_id": m.run_id,
        "event_id": m.event_id,
        "recipient": m.recipient,
        "workflow": m.workflow,
        "step": m.step_id,
        "channel": m.channel,
        "template": m.template,
        "template_version": m.template_version,
        "variant": m.variant,
        "status": m.status,
        "engagement": engagement,
        "statuses": dict(m.statuses),
        "release_at": m.release_at,
        "attempts": m.attempts,
        "provider": m.provider,
        "provider_id": m.provider_id,
        "error": m.error,
        "lane": m.lane.value,
        "created_at": m.created_at,
        "updated_at": m.updated_at,
    }


def trail_json(t: TrailEntry) -> dict[str, Any]:
    return {
        "seq": t.seq,
        "run_id": t.run_id,
        "recipient": t.recipient,
        "workflow": t.workflow,
        "step": t.step_id,
        "at": t.at,
        **dict(t.data),
        "type": t.kind,
    }
