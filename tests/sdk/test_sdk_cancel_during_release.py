"""A cancel aimed at the task that leaves an `async with lg.lock(...)` block is never swallowed
while the block stops its lease's renewal: the task ends cancelled and runs nothing after it."""

from __future__ import annotations

import asyncio

import pytest
from lockgate import AsyncClient


async def test_a_cancel_landing_while_renewal_stops_cancels_the_task(base_url: str, namespace: str) -> None:
    ran_after_block = False

    async def guarded(lg: AsyncClient) -> None:
        nonlocal ran_after_block
        task = asyncio.current_task()
        assert task is not None
        async with lg.lock("job", ttl=10):
            # Lands as the block's exit stops the renewer, as a timeout or a TaskGroup sibling's would.
            asyncio.get_running_loop().call_soon(task.cancel)
        ran_after_block = True
        await asyncio.sleep(0)

    async with AsyncClient(base_url, namespace=namespace) as lg:
        task = asyncio.ensure_future(guarded(lg))
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()
        assert not ran_after_block
