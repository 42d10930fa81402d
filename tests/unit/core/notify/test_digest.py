from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tidings.core.notify import DigestEvent, build_digest, digest_id, digest_window
from tidings.core.notify.digest import key_value

ids = st.text(min_size=1, max_size=12)
windows = st.sampled_from([60.0, 600.0, 3600.0, 86400.0, 7 * 86400.0])
instants = st.floats(0, 4e9, allow_nan=False)


@given(ids, ids, ids, st.text(max_size=10), windows, instants, instants)
def test_digest_id_is_stable_within_a_window_and_differs_across(
    workflow: str, step: str, subscriber: str, key: str, window: float, a: float, b: float
) -> None:
    start_a, end_a = digest_window(window, a)
    start_b, _ = digest_window(window, b)
    assert start_a <= a < end_a and end_a - start_a == window
    id_a = digest_id(workflow, step, subscriber, key, start_a)
    assert id_a == digest_id(workflow, step, subscriber, key, start_a)  # pure
    assert len(id_a) == 32
    same_window = start_a == start_b
    assert (id_a == digest_id(workflow, step, subscriber, key, start_b)) is same_window


@given(ids, ids, st.text(max_size=10), windows, instants)
def test_digest_id_separates_subscribers_and_keys(
    workflow: str, subscriber: str, key: str, window: float, at: float
) -> None:
    start, _ = digest_window(window, at)
    base = digest_id(workflow, "digest", subscriber, key, start)
    assert base != digest_id(workflow, "digest", subscriber + "x", key, start)
    assert base != digest_id(workflow, "digest", subscriber, key + "x", start)
    assert base != digest_id(workflow + "x", "digest", subscriber, key, start)


def test_digest_id_pinned() -> None:
    assert digest_id("post.liked", "digest", "alice", '"p1"', 1717408800.0) == digest_id(
        "post.liked", "digest", "alice", '"p1"', 1717408800
    )
    # pinned: runs in flight across an upgrade must keep computing the same id
    assert digest_id("post.liked", "digest", "alice", '"p1"', 1717408800.0) == (
        "4a3b1bccad020d53cedbabbf4d412fb9"
    )


def test_key_value() -> None:
    ctx = {"payload": {"post": {"id": 7}, "name": "x"}}
    assert key_value(("payload", "post", "id"), ctx) == "7"
    assert key_value(("payload", "post"), ctx) == '{"id":7}'
    assert key_value(("payload", "name"), ctx) == '"x"'
    assert key_value(("payload", "missing"), ctx) == ""
    assert key_value(None, ctx) == ""


def test_build_digest() -> None:
    events = [
        DigestEvent("e3", 30.0, {"n": 3}, "carol"),
        DigestEvent("e1", 10.0, {"n": 1}, "bob"),
        DigestEvent("e2", 20.0, {"n": 2}, "bob"),
        DigestEvent("e1", 10.0, {"n": 1}, "bob"),  # a retried join
        DigestEvent("e4", 40.0, {"n": 4}, None),
    ]
    d = build_digest(events, max_events=2)
    assert d["count"] == 4
    assert [e["event_id"] for e in d["events"]] == ["e1", "e2"]
    assert d["truncated"] is True
    assert d["first"]["event_id"] == "e1" and d["last"]["event_id"] == "e4"
    assert d["actors"] == ["bob", "carol"]
    assert d["first"] == {"event_id": "e1", "at": 10.0, "actor": "bob", "payload": {"n": 1}}


def test_build_digest_empty_and_small() -> None:
    assert build_digest([]) == {
        "count": 0,
        "events": [],
        "truncated": False,
        "first": None,
        "last": None,
        "actors": [],
    }
    one = build_digest([DigestEvent("e", 1.0, {})])
    assert one["count"] == 1 and not one["truncated"] and one["first"] == one["last"]


@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b", "c", "d", "e", "f"]), st.floats(0, 1e6)),
        max_size=20,
    ),
    st.integers(1, 10),
)
def test_build_digest_order_independent(items: list[tuple[str, float]], cap: int) -> None:
    events = [DigestEvent(i, t, {}) for i, t in items]
    forward = build_digest(events, cap)
    assert forward == build_digest(list(reversed(events)), cap) or len(
        {i for i, _ in items}
    ) != len(items)
    assert forward["count"] == len({i for i, _ in items})
    assert len(forward["events"]) == min(cap, forward["count"])
