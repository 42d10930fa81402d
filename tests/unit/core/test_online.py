"""User presence rules: per-device status from timestamps, aggregation over devices, privacy,
throttles and typing TTL."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.core.online import (
    Device,
    PresenceConfig,
    Privacy,
    Status,
    Throttle,
    TypingBook,
    aggregate,
    as_seen_by,
    contact_channel,
    contact_list,
)
from tidings.errors import InvalidInput

CFG = PresenceConfig()
T = 1_000_000.0


def dev(id: str, hb: float, act: float | None = None, **kw: object) -> Device:
    return Device(id=id, heartbeat_at=hb, active_at=hb if act is None else act, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("silent", "idle_for", "foreground", "status"),
    [
        (0, 0, True, Status.ACTIVE),
        (44.9, 0, True, Status.ACTIVE),
        (10, 120, True, Status.IDLE),  # no activity for idle_after
        (10, 0, False, Status.IDLE),  # in the background
        (45, 0, True, Status.PROBABLY_OFFLINE),
        (89.9, 0, True, Status.PROBABLY_OFFLINE),
        (90, 0, True, Status.OFFLINE),
    ],
)
def test_device_status_from_timestamps(
    silent: float, idle_for: float, foreground: bool, status: Status
) -> None:
    d = dev("d", T - silent, T - max(silent, idle_for), foreground=foreground)
    assert d.status(T, CFG) is status


def test_the_user_takes_the_best_device() -> None:
    desktop = dev("desk", T - 5, kind="desktop")
    phone = dev("phone", T - 5, foreground=False, kind="ios")
    p = aggregate("u", [phone, desktop], T, CFG)
    assert p.status is Status.ACTIVE and p.online
    assert [d.id for d, _ in p.devices] == ["desk", "phone"]
    assert [d.id for d in p.reachable] == ["desk", "phone"]
    gone = dev("old", T - 200)
    p = aggregate("u", [gone], T, CFG, last_seen=T - 100)
    assert p.status is Status.OFFLINE and p.devices == () and p.last_seen == T - 100
    assert aggregate("u", [], T, CFG).last_seen is None


def test_a_disconnected_device_is_not_reachable_but_keeps_the_user_online() -> None:
    p = aggregate("u", [dev("d", T - 10, connected=False)], T, CFG)
    assert p.online and p.reachable == ()


def test_privacy_hides_state_and_last_seen_from_others_only() -> None:
    p = aggregate("u", [dev("d", T - 1)], T, CFG, last_seen=T - 1)
    hidden = as_seen_by(p, Privacy(hide_online=True, hide_last_seen=True), self_view=False)
    assert hidden.status is Status.OFFLINE and hidden.devices == () and hidden.last_seen is None
    assert as_seen_by(p, Privacy(hide_online=True), self_view=True) == p
    only_seen = as_seen_by(p, Privacy(hide_last_seen=True), self_view=False)
    assert only_seen.status is Status.ACTIVE and only_seen.last_seen is None


@settings(max_examples=300, deadline=None)
@given(
    jitter=st.lists(st.floats(min_value=-5, max_value=24.9), min_size=5, max_size=60),
    probe=st.floats(min_value=0, max_value=1),
)
def test_jittered_heartbeats_never_flap(jitter: list[float], probe: float) -> None:
    """Heartbeats every 20 s, each late by up to 24.9 s (or early by 5): at every instant the
    user is online and never even probably offline."""
    at, beats = 0.0, []
    for j in jitter:
        at = max(at + 1, at + 20 + j)
        beats.append(at)
    for i, beat in enumerate(beats[:-1]):
        now = beat + probe * (beats[i + 1] - beat)
        p = aggregate("u", [dev("d", beat)], now, CFG)
        assert p.status >= Status.IDLE, (beat, now)


def test_config_is_checked() -> None:
    with pytest.raises(InvalidInput, match="offline_after"):
        PresenceConfig(probably_offline_after=90, offline_after=45)
    with pytest.raises(InvalidInput, match="typing_throttle"):
        PresenceConfig(typing_ttl=3, typing_throttle=3)


def test_throttle_lets_one_through_per_interval_and_prunes() -> None:
    t = Throttle(10)
    assert t.due("a", 0) and not t.due("a", 9.9) and t.due("a", 10)
    assert t.next_at("a") == 20 and t.next_at("b") == 0
    t.due("b", 1)
    t.prune(15)
    assert len(t) == 1  # only "a" (fired at 10) is still inside its interval


def test_typing_is_throttled_and_expires() -> None:
    book = TypingBook(PresenceConfig(typing_ttl=6, typing_throttle=3))
    assert book.start("c", "u", 0) is True
    assert book.start("c", "u", 2) is False  # throttled, but the TTL moves to 8
    assert book.start("c", "u", 3.5) is True  # a reminder once the throttle passed
    assert book.typing("c", 5) == ["u"]
    assert book.expire(9.4) == []
    assert book.expire(9.5) == [("c", "u")]  # no start for a TTL: gone
    assert book.typing("c", 9.5) == [] and len(book) == 0
    assert book.stop("c", "u") is False
    book.start("c", "u", 20)
    assert book.stop("c", "u") is True and book.typing("c", 20) == []


def test_contact_lists_are_checked_sorted_and_bounded() -> None:
    cfg = PresenceConfig(max_contacts=3)
    assert contact_list(["c", "b", "c", "me"], cfg, user="me") == ("b", "c")
    assert contact_list(["a", "b", "c", "me"], cfg, user="me") == ("a", "b", "c")
    with pytest.raises(InvalidInput, match="at most 3") as many:
        contact_list(["a", "b", "c", "d"], cfg, user="me")
    assert many.value.field == "contacts"
    for bad in ["", "a,b", "a#b", "x" * 201, "tab\there"]:
        with pytest.raises(InvalidInput, match="must be"):
            contact_list([bad], cfg, user="me")
    assert contact_channel("presence", "bob") == "presence:#bob"
    with pytest.raises(InvalidInput, match="max_contacts"):
        PresenceConfig(max_contacts=0)
