from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from tidings.types import ClientInfo, HistoryResult, Publication, StreamPosition

PublicationHandler = Callable[[Publication], Awaitable[None] | None]
"""Called for every publication on a channel this node subscribed to."""

JoinLeaveHandler = Callable[[str, ClientInfo, bool], Awaitable[None] | None]
"""Called with (channel, info, joined) for join (True) and leave (False) messages."""


IDEMPOTENCY_MIN_TTL = 60.0
"""An idempotency key is remembered for max(history_ttl, this) seconds, and only while the
stream's epoch is unchanged."""

META_TTL = 30 * 86400.0
"""Lifetime of a stream's position started by `history` on a channel nobody published to
yet (a publish with a TTL of its own, or none, replaces it)."""


class Broker(Protocol):
    """Fanout between nodes plus per-channel history.

    Contract (shared with centrifugal/centrifuge's Broker):
    - `publish` with `history_size > 0` appends to the channel's history and publishes in one
      atomic step per channel: offsets strictly increase by one per publication, and every
      subscriber of the channel sees publications in offset order.
    - History keeps at most `history_size` publications for `history_ttl` seconds after the
      last publish; when the stream is lost the epoch changes.
    - `publish` with `history_size == 0` is ephemeral: offset 0, nothing kept.
    - `history(channel, since, limit)` returns the current position and, if `since` is given
      and its epoch matches, the publications with offset > since.offset (at most `limit`;
      `limit < 0` means all kept). It never fabricates: if publications after `since` are no
      longer kept the caller sees a first offset > since.offset + 1 and must treat recovery as
      failed. On a channel without a stream it starts one (a fresh epoch, offset 0), kept for
      `META_TTL` seconds unless a publish comes: a later publish continues that epoch.
    - The handler given to `start` receives publications of channels this node `subscribe`d to.
    """

    async def start(
        self, on_publication: PublicationHandler, on_join_leave: JoinLeaveHandler
    ) -> None: ...

    async def close(self) -> None: ...

    async def subscribe(self, channel: str) -> None: ...

    async def unsubscribe(self, channel: str) -> None: ...

    async def publish(
        self,
        channel: str,
        data: bytes,
        *,
        history_size: int = 0,
        history_ttl: float = 0.0,
        info: ClientInfo | None = None,
        tags: dict[str, str] | None = None,
        key: str | None = None,
        idempotency_key: str | None = None,
    ) -> Publication:
        """Publish; with an `idempotency_key` seen on this channel within `history_ttl` the
        original publication is returned and nothing is published again."""
        ...

    async def publish_join_leave(self, channel: str, info: ClientInfo, joined: bool) -> None: ...

    async def history(
        self, channel: str, *, since: StreamPosition | None = None, limit: int = 0
    ) -> HistoryResult: ...

    async def remove_history(self, channel: str) -> None: ...
