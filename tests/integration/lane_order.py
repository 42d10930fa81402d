"""The check both providers' lane tests share: bulk sends queued on a provider with two
connections (one kept for transactional work), then one transactional send."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from tidings.types import CURRENT_LANE, Priority


async def bulk_then_urgent(
    send: Callable[[str], Awaitable[bool]], *, bulk: int = 10, settle: float = 0.01
) -> None:
    """`send(name)` (True when delivered) for `bulk` bulk sends named `bulk0`... at once,
    then, `settle` seconds later (one in flight, the others waiting), for `urgent` from the
    transactional lane; every send must be delivered."""

    async def one(n: int) -> None:
        CURRENT_LANE.set(Priority.BULK)
        assert await send(f"bulk{n}")

    sends = [asyncio.create_task(one(n)) for n in range(bulk)]
    try:
        await asyncio.sleep(settle)
        assert await send("urgent")
    finally:
        await asyncio.gather(*sends)
