"""The all-or-nothing recovery decision."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tidings.core.channels import DeliveryClass, NamespaceOptions
from tidings.core.protocol.recovery import (
    decide_recovery,
    recover_latest,
    recover_stream,
    subscribe_result,
)
from tidings.types import HistoryResult, Publication, StreamPosition


def pub(offset: int, epoch: str = "e1") -> Publication:
    return Publication(channel="c", data=b"{}", offset=offset, epoch=epoch)


def history(top: int, offsets: list[int], epoch: str = "e1") -> HistoryResult:
    return HistoryResult(StreamPosition(top, epoch), tuple(pub(o, epoch) for o in offsets))


@given(
    since=st.integers(0, 1000),
    missed=st.integers(0, 50),
    dropped=st.sets(st.integers(0, 49)),
    same_epoch=st.booleans(),
)
def test_recovered_iff_same_epoch_and_every_missed_publication_is_there(
    since: int, missed: int, dropped: set[int], same_epoch: bool
) -> None:
    top = since + missed
    full = list(range(since + 1, top + 1))
    kept = [o for i, o in enumerate(full) if i not in dropped]
    hist = history(top, kept, "e1" if same_epoch else "e2")
    result = recover_stream(StreamPosition(since, "e1"), hist)
    assert result.recovered == (same_epoch and kept == full)
    assert result.position == hist.position
    if result.recovered:
        assert [p.offset for p in result.publications] == full
    else:
        assert result.publications == ()


@given(since=st.integers(0, 100), extra=st.integers(1, 10))
def test_publications_at_or_before_the_client_position_are_ignored(since: int, extra: int) -> None:
    hist = history(since + extra, list(range(max(1, since - 2), since + extra + 1)))
    result = recover_stream(StreamPosition(since, "e1"), hist)
    assert result.recovered
    assert [p.offset for p in result.publications] == list(range(since + 1, since + extra + 1))


def test_stream_edge_cases() -> None:
    since = StreamPosition(5, "e1")
    assert recover_stream(since, history(5, [])).recovered  # nothing missed
    assert not recover_stream(since, history(4, [])).recovered  # client ahead of the stream
    assert not recover_stream(since, history(7, [6, 6])).recovered  # duplicate, hole at 7
    assert not recover_stream(since, history(7, [7, 6])).recovered  # out of order
    assert not recover_stream(since, history(8, [6, 7])).recovered  # truncated by a limit


def test_latest_mode() -> None:
    at_top = recover_latest(StreamPosition(9, "e1"), history(9, [9]))
    assert at_top.recovered and at_top.publications == ()
    behind = recover_latest(StreamPosition(3, "e1"), history(9, [9]))
    assert behind.recovered and [p.offset for p in behind.publications] == [9]
    new_epoch = recover_latest(StreamPosition(3, "old"), history(9, [9], "e2"))
    assert new_epoch.recovered and [p.offset for p in new_epoch.publications] == [9]
    gone = recover_latest(StreamPosition(3, "e1"), history(9, []))
    assert not gone.recovered
    stale = recover_latest(StreamPosition(3, "e1"), history(9, [8]))
    assert not stale.recovered


def test_ephemeral_never_recovers() -> None:
    result = decide_recovery(StreamPosition(0, ""), history(0, []), DeliveryClass.EPHEMERAL)
    assert not result.recovered


def test_subscribe_result_for_unpositioned_channels() -> None:
    durable = NamespaceOptions(history_size=5, history_ttl=60, delivery=DeliveryClass.DURABLE)
    result, tracked = subscribe_result(durable, StreamPosition(1, "e"), None, None)
    assert tracked is None and not result.positioned and result.was_recovering
    result, tracked = subscribe_result(NamespaceOptions(), None, StreamPosition(3, "e"), None)
    assert tracked is None and not result.positioned and result.offset == 0
