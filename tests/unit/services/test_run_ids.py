"""Run ids: stable per event, workflow and recipient, and in recipient order within one
event's fanout (so a fanout's rows are appended to their indexes)."""

from __future__ import annotations

from tidings.core.notify.decisions import KEY_RECIPIENT
from tidings.services.notify import run_id


def test_a_run_id_is_stable_and_names_event_workflow_and_recipient_apart() -> None:
    rid = run_id("e1", "news", "alice")
    assert rid == run_id("e1", "news", "alice")
    assert len(rid) == 24 + len("alice") and rid.endswith("alice")
    others = {
        run_id("e2", "news", "alice"),
        run_id("e1", "digest", "alice"),
        run_id("e1", "news", "alicf"),
        run_id("e1n", "ews", "alice"),  # no concatenation clash between the parts
    }
    assert rid not in others and len(others) == 4
    # pinned: run ids stored before must still match (the ids of existing runs)
    assert rid == "811053929af22821b50df969alice"


def test_the_runs_of_one_fanout_sort_by_recipient() -> None:
    recipients = [f"user-{i:05d}" for i in range(0, 3000, 7)]
    ids = [run_id("e1", "news", r) for r in recipients]
    assert ids == sorted(ids)
    assert len({i[:24] for i in ids}) == 1  # one prefix per event and workflow


def test_a_long_recipient_id_is_hashed_into_the_column() -> None:
    long_a = "a" * 200
    long_b = "a" * 199 + "b"
    first, second = run_id("e1", "news", long_a), run_id("e1", "news", long_b)
    assert len(first) == len(second) == 64
    assert first[24] == "~" and first != second
    exact = "x" * KEY_RECIPIENT  # fits: spelled out
    assert run_id("e1", "news", exact).endswith(exact)
