"""Publishing to real-time channels through the broker, with each channel's history options."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tidings.ports.broker import Broker
from tidings.types import Publication


@dataclass(frozen=True, slots=True)
class HistoryOptions:
    size: int = 100
    ttl: float = 300.0


class BrokerFanout:
    """Publishes through the broker; `options_for(channel)` gives the channel's history window
    (size 0 = ephemeral: delivered live, never kept)."""

    def __init__(
        self, broker: Broker, options_for: Callable[[str], HistoryOptions] | None = None
    ) -> None:
        self._broker = broker
        self._options_for = options_for or (lambda _channel: HistoryOptions())

    async def publish(
        self, channel: str, data: bytes, *, idempotency_key: str | None = None
    ) -> Publication:
        opts = self._options_for(channel)
        return await self._broker.publish(
            channel,
            data,
            history_size=opts.size,
            history_ttl=opts.ttl,
            idempotency_key=idempotency_key,
        )
