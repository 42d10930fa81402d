from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from tidings.core.notify import (
    CapAction,
    Channel,
    ChannelDefault,
    ChannelStep,
    DecisionKind,
    DeliveryContext,
    FrequencyCap,
    Preferences,
    QuietHours,
    Reason,
    Recipient,
    SendWindow,
    Stage,
    SuppressionFacts,
    Workflow,
    WorkflowPreference,
    decide,
    idempotency_key,
)
from tidings.core.notify.decisions import (
    KEY_RECIPIENT,
    check_address,
    check_frequency_cap,
    check_idempotency,
    check_preferences,
    check_schedule,
    check_suppression,
    wire_id,
)

BERLIN = ZoneInfo("Europe/Berlin")
WF = Workflow("comment.created").in_app("c").email("c").push("c").sms("c")
CRITICAL = Workflow("login.alert", critical=True).email("c").push("c")
MARKETING = Workflow("campaign.weekly", commercial=True).email("c")
PUSH = ChannelStep("push", Channel.PUSH, template="c")
EMAIL = ChannelStep("email", Channel.EMAIL, template="c")
INAPP = ChannelStep("in_app", Channel.IN_APP, template="c")
ALICE = Recipient(
    "alice", email="a@example.com", phone="+4915112345678", timezone="Europe/Berlin", push_tokens=1
)


def noon() -> float:
    return datetime(2024, 6, 3, 12, 0, tzinfo=BERLIN).timestamp()


# -- preferences ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefs", "channel", "kind", "reason"),
    [
        (Preferences(), Channel.EMAIL, DecisionKind.SEND, Reason.ALLOWED),
        (Preferences(enabled=False), Channel.EMAIL, DecisionKind.SUPPRESS, Reason.GLOBAL_OPT_OUT),
        (
            Preferences(workflows={"comment.created": WorkflowPreference(enabled=False)}),
            Channel.EMAIL,
            DecisionKind.SUPPRESS,
            Reason.WORKFLOW_OPT_OUT,
        ),
        (
            Preferences(channels={Channel.EMAIL: False}),
            Channel.EMAIL,
            DecisionKind.SUPPRESS,
            Reason.CHANNEL_OPT_OUT,
        ),
        (
            Preferences(channels={Channel.EMAIL: False}),
            Channel.PUSH,
            DecisionKind.SEND,
            Reason.ALLOWED,
        ),
        (  # the per-workflow channel choice beats the global channel choice
            Preferences(
                channels={Channel.EMAIL: False},
                workflows={"comment.created": WorkflowPreference(channels={Channel.EMAIL: True})},
            ),
            Channel.EMAIL,
            DecisionKind.SEND,
            Reason.ALLOWED,
        ),
        (
            Preferences(
                workflows={"comment.created": WorkflowPreference(channels={Channel.PUSH: False})}
            ),
            Channel.PUSH,
            DecisionKind.SUPPRESS,
            Reason.CHANNEL_OPT_OUT,
        ),
    ],
)
def test_preferences(
    prefs: Preferences, channel: Channel, kind: DecisionKind, reason: Reason
) -> None:
    d = check_preferences(WF, channel, prefs)
    assert (d.stage, d.kind, d.reason) == (Stage.PREFERENCES, kind, reason)


def test_workflow_default_applies_only_without_a_subscriber_choice() -> None:
    wf = Workflow("digest.daily", defaults={Channel.EMAIL: ChannelDefault(False)}).email("d")
    d = check_preferences(wf, Channel.EMAIL, Preferences())
    assert d.kind is DecisionKind.SUPPRESS and "workflow default" in d.detail
    opted_in = Preferences(channels={Channel.EMAIL: True})
    assert check_preferences(wf, Channel.EMAIL, opted_in).kind is DecisionKind.SEND


def test_critical_overrides_every_preference() -> None:
    prefs = Preferences(enabled=False, channels={Channel.EMAIL: False})
    d = check_preferences(CRITICAL, Channel.EMAIL, prefs)
    assert (d.kind, d.reason) == (DecisionKind.SEND, Reason.CRITICAL_OVERRIDE)


def test_commercial_needs_consent() -> None:
    d = check_preferences(MARKETING, Channel.EMAIL, Preferences())
    assert (d.kind, d.reason) == (DecisionKind.SUPPRESS, Reason.NO_COMMERCIAL_CONSENT)
    ok = check_preferences(MARKETING, Channel.EMAIL, Preferences(commercial_consent=True))
    assert ok.kind is DecisionKind.SEND


# -- address -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channel", "recipient", "ok"),
    [
        (Channel.EMAIL, Recipient("u"), False),
        (Channel.EMAIL, Recipient("u", email="u@x.org"), True),
        (Channel.SMS, Recipient("u"), False),
        (Channel.PUSH, Recipient("u", push_tokens=0), False),
        (Channel.WEBPUSH, Recipient("u", webpush_subscriptions=2), True),
        (Channel.IN_APP, Recipient("u"), True),
        (Channel.WEBHOOK, Recipient("u"), True),
    ],
)
def test_address(channel: Channel, recipient: Recipient, ok: bool) -> None:
    d = check_address(channel, recipient)
    assert d.kind is (DecisionKind.SEND if ok else DecisionKind.FAIL)
    if not ok:
        assert d.reason is Reason.NO_ADDRESS


def test_a_missing_address_says_whether_the_subscriber_exists() -> None:
    assert check_address(Channel.EMAIL, Recipient("u")).detail == "subscriber has no email address"
    unknown = check_address(Channel.EMAIL, Recipient("u", known=False))
    assert unknown.detail == "no subscriber with this id, so no email address"
    assert check_address(Channel.IN_APP, Recipient("u", known=False)).kind is DecisionKind.SEND


# -- schedule ------------------------------------------------------------------------------


def test_quiet_hours_hold_push_but_not_in_app() -> None:
    night = datetime(2024, 6, 3, 23, 0, tzinfo=BERLIN).timestamp()
    quiet = [QuietHours(22 * 60, 7 * 60)]
    held = check_schedule(WF, Channel.PUSH, quiet, BERLIN, night)
    assert (held.kind, held.reason) == (DecisionKind.HOLD, Reason.QUIET_HOURS)
    assert held.until == datetime(2024, 6, 4, 7, 0, tzinfo=BERLIN).timestamp()
    assert "2024-06-04T07:00 Europe/Berlin" in held.detail
    assert check_schedule(WF, Channel.IN_APP, quiet, BERLIN, night).kind is DecisionKind.SEND
    assert check_schedule(CRITICAL, Channel.PUSH, quiet, BERLIN, night).reason is (
        Reason.CRITICAL_OVERRIDE
    )


def test_send_window_hold_and_never() -> None:
    wf = Workflow("news", send_windows=(SendWindow(9 * 60, 17 * 60),)).email("n")
    early = datetime(2024, 6, 3, 6, 0, tzinfo=BERLIN).timestamp()
    d = check_schedule(wf, Channel.EMAIL, [], BERLIN, early)
    assert (d.kind, d.reason) == (DecisionKind.HOLD, Reason.OUTSIDE_SEND_WINDOW)
    assert d.until == datetime(2024, 6, 3, 9, 0, tzinfo=BERLIN).timestamp()
    quiet = [QuietHours(8 * 60, 18 * 60, channels=frozenset({Channel.EMAIL}))]
    never = check_schedule(wf, Channel.EMAIL, quiet, BERLIN, early)
    assert (never.kind, never.reason) == (DecisionKind.FAIL, Reason.NO_SEND_TIME)


# -- frequency caps ------------------------------------------------------------------------


def test_cap_under_limit_sends() -> None:
    cap = FrequencyCap(3, 3600, Channel.PUSH)
    d = check_frequency_cap(Channel.PUSH, [cap], {Channel.PUSH: [100.0, 200.0]}, 1000.0)
    assert (d.kind, d.reason) == (DecisionKind.SEND, Reason.UNDER_CAP)


def test_cap_hold_until_a_slot_frees() -> None:
    cap = FrequencyCap(2, 3600, Channel.PUSH)
    sends = {Channel.PUSH: [4000.0, 1000.0, 3000.0], Channel.EMAIL: [3500.0]}
    d = check_frequency_cap(Channel.PUSH, [cap], sends, 4100.0)
    # counted: 1000, 3000, 4000 (all within (500, 4100]); after 3000 leaves, one is left
    assert (d.kind, d.reason, d.until) == (DecisionKind.HOLD, Reason.FREQUENCY_CAP, 6600.0)
    later = check_frequency_cap(Channel.PUSH, [cap], sends, 6600.0)
    assert later.kind is DecisionKind.SEND  # 3000 is exactly one window old: not counted


def test_cap_suppress_all_channels_and_critical() -> None:
    cap = FrequencyCap(2, 3600, None, CapAction.SUPPRESS)
    sends = {Channel.PUSH: [100.0], Channel.EMAIL: [200.0]}
    d = check_frequency_cap(Channel.SMS, [cap], sends, 300.0)
    assert (d.kind, d.reason) == (DecisionKind.SUPPRESS, Reason.FREQUENCY_CAP)
    assert "all channels" in d.detail
    assert check_frequency_cap(Channel.SMS, [cap], sends, 300.0, critical=True).kind is (
        DecisionKind.SEND
    )
    other = FrequencyCap(1, 3600, Channel.EMAIL)
    assert check_frequency_cap(Channel.PUSH, [other], sends, 300.0).kind is DecisionKind.SEND


def test_cap_hold_takes_the_latest_release() -> None:
    caps = [FrequencyCap(1, 100, Channel.PUSH), FrequencyCap(2, 1000, Channel.PUSH)]
    d = check_frequency_cap(Channel.PUSH, caps, {Channel.PUSH: [50.0, 90.0]}, 95.0)
    assert d.until == 1050.0


# -- suppression ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "facts", "critical", "reason"),
    [
        (EMAIL, SuppressionFacts(), False, Reason.NOT_SUPPRESSED),
        (EMAIL, SuppressionFacts(hard_bounced=True), True, Reason.HARD_BOUNCED),
        (PUSH, SuppressionFacts(hard_bounced=True), False, Reason.NOT_SUPPRESSED),
        (PUSH, SuppressionFacts(token_invalid=True), True, Reason.INVALID_TOKEN),
        (EMAIL, SuppressionFacts(seen_in_app=True), True, Reason.SEEN_IN_APP),
        (INAPP, SuppressionFacts(seen_in_app=True), False, Reason.NOT_SUPPRESSED),
        (EMAIL, SuppressionFacts(unsubscribed=True), False, Reason.UNSUBSCRIBED),
        (EMAIL, SuppressionFacts(unsubscribed=True), True, Reason.NOT_SUPPRESSED),
        (PUSH, SuppressionFacts(user_active=True), False, Reason.USER_ACTIVE),
        (PUSH, SuppressionFacts(user_active=True), True, Reason.NOT_SUPPRESSED),
        (EMAIL, SuppressionFacts(user_active=True), False, Reason.NOT_SUPPRESSED),
        (
            ChannelStep("e", Channel.EMAIL, template="c", suppress_when_active=True),
            SuppressionFacts(user_active=True),
            False,
            Reason.USER_ACTIVE,
        ),
        (
            ChannelStep("p", Channel.PUSH, template="c", suppress_when_active=False),
            SuppressionFacts(user_active=True),
            False,
            Reason.NOT_SUPPRESSED,
        ),
    ],
)
def test_suppression(
    step: ChannelStep, facts: SuppressionFacts, critical: bool, reason: Reason
) -> None:
    d = check_suppression(step, facts, critical=critical)
    assert d.reason is reason
    assert d.kind is (
        DecisionKind.SEND if reason is Reason.NOT_SUPPRESSED else DecisionKind.SUPPRESS
    )


# -- idempotency ---------------------------------------------------------------------------


def test_idempotency_key_is_stable_and_distinct() -> None:
    key = idempotency_key("e1", "alice", Channel.EMAIL, "v3")
    assert key == idempotency_key("e1", "alice", "email", "v3")
    # pinned: a stored key must still match after upgrades
    assert key == "ee38b6451b1c7d23854c6d1ealice"
    assert (
        len(
            {
                key,
                idempotency_key("e2", "alice", Channel.EMAIL, "v3"),
                idempotency_key("e1", "bob", Channel.EMAIL, "v3"),
                idempotency_key("e1", "alice", Channel.SMS, "v3"),
                idempotency_key("e1", "alice", Channel.EMAIL, "v4"),
                idempotency_key("e1a", "lice", Channel.EMAIL, "v3"),  # no concatenation clash
            }
        )
        == 6
    )
    assert check_idempotency(key, True).reason is Reason.DUPLICATE
    assert check_idempotency(key, False).kind is DecisionKind.SEND


# -- the pipeline --------------------------------------------------------------------------


def test_pipeline_all_pass_records_every_stage() -> None:
    ctx = DeliveryContext("e1", "v1", noon())
    verdict = decide(WF, PUSH, ALICE, ctx)
    assert verdict.kind is DecisionKind.SEND
    assert [d.stage for d in verdict.trail] == list(Stage)
    assert verdict.idempotency_key == idempotency_key("e1", "alice", Channel.PUSH, "v1")
    assert [d.to_json()["kind"] for d in verdict.trail] == ["send"] * 6


def test_pipeline_order_preferences_before_address() -> None:
    nobody = Recipient("bob")  # no phone
    ctx = DeliveryContext(
        "e1", "v1", noon(), preferences=Preferences(channels={Channel.SMS: False})
    )
    sms = ChannelStep("sms", Channel.SMS, template="c")
    verdict = decide(WF, sms, nobody, ctx)
    assert verdict.decision.reason is Reason.CHANNEL_OPT_OUT and len(verdict.trail) == 1
    failed = decide(WF, sms, nobody, DeliveryContext("e1", "v1", noon()))
    assert (failed.kind, failed.decision.reason) == (DecisionKind.FAIL, Reason.NO_ADDRESS)


def test_pipeline_holds_in_quiet_hours_before_caps_and_suppression() -> None:
    night = datetime(2024, 6, 3, 23, 0, tzinfo=BERLIN).timestamp()
    ctx = DeliveryContext(
        "e1",
        "v1",
        night,
        preferences=Preferences(quiet_hours=(QuietHours(22 * 60, 7 * 60),)),
        caps=(FrequencyCap(1, 3600, Channel.PUSH, CapAction.SUPPRESS),),
        recent_sends={Channel.PUSH: [night - 10]},
        facts=SuppressionFacts(user_active=True),
    )
    verdict = decide(WF, PUSH, ALICE, ctx)
    assert verdict.kind is DecisionKind.HOLD
    assert verdict.decision.to_json()["until"] == datetime(2024, 6, 4, 7, tzinfo=BERLIN).timestamp()
    assert [d.stage for d in verdict.trail] == [Stage.PREFERENCES, Stage.ADDRESS, Stage.SCHEDULE]


def test_pipeline_duplicate_is_suppressed_last() -> None:
    ctx = DeliveryContext("e1", "v1", noon(), already_done=True)
    verdict = decide(WF, EMAIL, ALICE, ctx)
    assert verdict.decision.stage is Stage.IDEMPOTENCY
    assert verdict.decision.reason is Reason.DUPLICATE
    assert verdict.decision.detail == verdict.idempotency_key


def test_pipeline_critical_goes_through_but_not_to_a_bounced_address() -> None:
    night = datetime(2024, 6, 3, 23, 0, tzinfo=BERLIN).timestamp()
    prefs = Preferences(enabled=False, quiet_hours=(QuietHours(0, 1440),))
    ctx = DeliveryContext(
        "e1", "v1", night, preferences=prefs, facts=SuppressionFacts(user_active=True)
    )
    assert decide(CRITICAL, PUSH, ALICE, ctx).kind is DecisionKind.SEND
    bounced = DeliveryContext(
        "e1", "v1", night, preferences=prefs, facts=SuppressionFacts(hard_bounced=True)
    )
    assert decide(CRITICAL, EMAIL, ALICE, bounced).decision.reason is Reason.HARD_BOUNCED


def test_the_keys_of_one_fanout_sort_by_recipient_and_long_ids_are_hashed() -> None:
    recipients = [f"user-{i:05d}" for i in range(0, 3000, 7)]
    keys = [idempotency_key("e1", r, Channel.IN_APP, "v1") for r in recipients]
    assert keys == sorted(keys) and len({k[:24] for k in keys}) == 1
    long_a, long_b = "a" * 200, "a" * 199 + "b"
    first = idempotency_key("e1", long_a, Channel.IN_APP, "v1")
    second = idempotency_key("e1", long_b, Channel.IN_APP, "v1")
    assert len(first) == len(second) == 64 and first[24] == "~" and first != second
    exact = "x" * KEY_RECIPIENT  # fits: spelled out
    assert idempotency_key("e1", exact, Channel.IN_APP, "v1").endswith(exact)


def test_a_wire_id_is_stable_fixed_length_hex_and_tells_every_recipient_apart() -> None:
    key = idempotency_key("e1", "alice@example.com", Channel.EMAIL, "v1")
    wid = wire_id(key)
    assert wid == wire_id(key) and len(wid) == 32 and int(wid, 16) >= 0
    # keys alike in their first 32 characters (the prefix and 8 of the recipient id): a cut
    # of the key, as the webhook-id was made before, would give them one id
    first = idempotency_key("e1", "user-00012345", Channel.EMAIL, "v1")
    second = idempotency_key("e1", "user-00012346", Channel.EMAIL, "v1")
    assert first[:32] == second[:32] and first != second
    assert wire_id(first) != wire_id(second)
