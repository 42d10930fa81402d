"""The recovery decision: can a resubscribing client be made whole from history?

Recovery is all or nothing. Either every publication the client missed is handed back, in
order and without holes, and `recovered` is true; or nothing is handed back, `recovered` is
false, and the application reloads its state from its own source of truth.
"""

from __future__ import annotations

from tidings.core.channels import DeliveryClass, NamespaceOptions
from tidings.core.protocol.messages import SubscribeResult
from tidings.records import record
from tidings.types import HistoryResult, Publication, StreamPosition


@record
class Recovery:
    recovered: bool
    publications: tuple[Publication, ...]  # empty unless recovered
    position: StreamPosition  # the stream top the history was read at


def recover_stream(since: StreamPosition, history: HistoryResult) -> Recovery:
    """Durable streams: recovered iff the epoch is the same and history holds exactly the
    publications `since.offset + 1 .. position.offset`, each once and in order.

    `history` is what the broker returned for `since` (its position and the publications
    after `since.offset`); publications at or before `since.offset` are ignored.
    """
    top = history.position
    failed = Recovery(False, (), top)
    if since.epoch != top.epoch or since.offset > top.offset:
        return failed
    missed = tuple(p for p in history.publications if p.offset > since.offset)
    if len(missed) != top.offset - since.offset:
        return failed
    expected = since.offset + 1
    for pub in missed:
        if pub.offset != expected:
            return failed
        expected += 1
    return Recovery(True, missed, top)


def recover_latest(since: StreamPosition, history: HistoryResult) -> Recovery:
    """The "latest" delivery class (cache mode): only the newest publication matters.

    A client already at the top gets nothing and `recovered`; otherwise it gets the newest
    publication if history still holds the one at the top (even across an epoch change: it is
    the current state). Without it, recovery fails unless the client was already at the top.
    """
    top = history.position
    up_to_date = since.offset > 0 and since.offset == top.offset and since.epoch == top.epoch
    if up_to_date:
        return Recovery(True, (), top)
    latest = history.publications[-1] if history.publications else None
    if latest is not None and latest.offset == top.offset:
        return Recovery(True, (latest,), top)
    return Recovery(False, (), top)


def decide_recovery(
    since: StreamPosition, history: HistoryResult, delivery: DeliveryClass
) -> Recovery:
    """Recovery by the namespace's delivery class; ephemeral channels never recover."""
    if delivery is DeliveryClass.LATEST:
        return recover_latest(since, history)
    if delivery is DeliveryClass.DURABLE:
        return recover_stream(since, history)
    return Recovery(False, (), history.position)


def subscribe_result(
    options: NamespaceOptions,
    since: StreamPosition | None,
    position: StreamPosition | None,
    history: HistoryResult | None,
    data: bytes | None = None,
    ttl: int | None = None,
) -> tuple[SubscribeResult, StreamPosition | None]:
    """The subscribe reply, and the position the subscription now stands at (None when the
    channel is not positioned: no offsets to track).

    `since` is the client's position when it asked to recover, `position` the stream top and
    `history` what the broker returned after `since`. As in Centrifuge, a recovered reply
    carries the client's own offset followed by the missed publications, which bring the
    client to the top; a failed recovery carries the top and no publications.
    """
    positioned = options.positioned and position is not None
    recovered, offset, tracked = False, 0, None
    pubs: tuple[Publication, ...] = ()
    if positioned and position is not None:
        if since is not None and history is not None:
            decision = decide_recovery(since, history, options.delivery)
            recovered, pubs = decision.recovered, decision.publications
        if recovered and since is not None:
            offset = since.offset
            tracked = StreamPosition(pubs[-1].offset if pubs else since.offset, position.epoch)
        else:
            offset = position.offset
            tracked = position
    result = SubscribeResult(
        expires=ttl is not None,
        ttl=ttl or 0,
        recoverable=positioned,
        epoch=position.epoch if positioned and position is not None else "",
        publications=pubs,
        recovered=recovered,
        offset=offset,
        positioned=positioned,
        data=data,
        was_recovering=since is not None,
    )
    return result, tracked
