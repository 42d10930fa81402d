"""The pure core of the notification orchestrator: workflow definitions, the condition
language, the per-message decision pipeline and the step runner. No I/O, no event loop.

- :mod:`.model` and :mod:`.parse`: workflows from mappings/YAML or the Python builder;
- :mod:`.conditions`: the safe condition language;
- :mod:`.schedule`: quiet hours and send windows, DST-correct release instants;
- :mod:`.decisions`: preferences -> address -> schedule -> caps -> suppression -> idempotency;
- :mod:`.digest`: digest windows, ids and payloads;
- :mod:`.runner`: ``next_action``, the deterministic state machine a service drives.

See docs/workflows.md.
"""

from tidings.core.notify.conditions import Condition, evaluate, parse_condition
from tidings.core.notify.decisions import (
    CapAction,
    Decision,
    DecisionKind,
    DeliveryContext,
    FrequencyCap,
    Preferences,
    Reason,
    Stage,
    SuppressionFacts,
    Verdict,
    WorkflowPreference,
    decide,
    idempotency_key,
)
from tidings.core.notify.digest import DigestEvent, build_digest, digest_id, digest_window
from tidings.core.notify.durations import parse_duration
from tidings.core.notify.model import (
    ChannelDefault,
    ChannelStep,
    DelayStep,
    DigestStep,
    Step,
    ThrottleStep,
    WaitFor,
    Workflow,
)
from tidings.core.notify.parse import parse_workflow, parse_workflows_text
from tidings.core.notify.runner import (
    Action,
    CheckThrottle,
    CloseDigest,
    Done,
    JoinDigest,
    Record,
    RunChannelStep,
    RunOutcome,
    StepOutcome,
    StepResult,
    WaitForStatus,
    WaitUntil,
    channel_result,
    digest_closed,
    digest_joined,
    next_action,
    throttle_result,
)
from tidings.core.notify.schedule import QuietHours, SendWindow, parse_quiet_hours, release_instant
from tidings.core.notify.types import Channel, DeliveryStatus, Engagement, Recipient, Trigger

__all__ = [
    "Action",
    "CapAction",
    "Channel",
    "ChannelDefault",
    "ChannelStep",
    "CheckThrottle",
    "CloseDigest",
    "Condition",
    "Decision",
    "DecisionKind",
    "DelayStep",
    "DeliveryContext",
    "DeliveryStatus",
    "DigestEvent",
    "DigestStep",
    "Done",
    "Engagement",
    "FrequencyCap",
    "JoinDigest",
    "Preferences",
    "QuietHours",
    "Reason",
    "Recipient",
    "Record",
    "RunChannelStep",
    "RunOutcome",
    "SendWindow",
    "Stage",
    "Step",
    "StepOutcome",
    "StepResult",
    "SuppressionFacts",
    "ThrottleStep",
    "Trigger",
    "Verdict",
    "WaitFor",
    "WaitForStatus",
    "WaitUntil",
    "Workflow",
    "WorkflowPreference",
    "build_digest",
    "channel_result",
    "decide",
    "digest_closed",
    "digest_id",
    "digest_joined",
    "digest_window",
    "evaluate",
    "idempotency_key",
    "next_action",
    "parse_condition",
    "parse_duration",
    "parse_quiet_hours",
    "parse_workflow",
    "parse_workflows_text",
    "release_instant",
    "throttle_result",
]
