"""FenceGuard: a resource owner admits increasing fencing tokens and refuses stale ones.

The realistic flow: the first client's lease expires (short ttl, no renewal) while it still
believes it holds the lock; a second client acquires with a larger token and writes; the
first client's late write is then refused with StaleToken.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from lockgate import AsyncClient, Client, FenceGuard, LockgateError, StaleToken

SHORT_TTL_S = 0.3


class Storage:
    """A toy resource that fences every write with a FenceGuard."""

    def __init__(self) -> None:
        self.guard = FenceGuard()
        self.data: dict[str, str] = {}
        self.writes: list[tuple[str, str, int]] = []

    def write(self, key: str, value: str, fencing_token: int) -> None:
        self.guard.admit(key, fencing_token)
        self.data[key] = value
        self.writes.append((key, value, fencing_token))


def test_guard_admits_increasing_tokens_and_refuses_stale_ones() -> None:
    guard = FenceGuard()
    assert guard.highest("r") is None
    assert guard.is_current("r", 0)
    for token in (1, 2, 5, 5, 9):  # equal is the same holder writing again
        guard.admit("r", token)
        assert guard.highest("r") == token
    with pytest.raises(StaleToken) as stale:
        guard.admit("r", 8)
    assert isinstance(stale.value, LockgateError)
    assert guard.highest("r") == 9  # a refused token changes nothing
    assert not guard.is_current("r", 8)
    assert guard.is_current("r", 9) and guard.is_current("r", 10)
    guard.admit("other", 1)  # resources are fenced independently
    assert guard.highest("other") == 1


def test_guard_is_consistent_under_threads() -> None:
    """Concurrent writers with random tokens: the highest admitted token wins and is never lowered."""
    guard = FenceGuard()
    admitted: list[int] = []
    mutex = threading.Lock()

    def writer(tokens: range) -> None:
        for token in tokens:
            try:
                guard.admit("r", token)
            except StaleToken:
                continue
            with mutex:
                admitted.append(token)

    threads = [threading.Thread(target=writer, args=(range(start, 4000, 8),)) for start in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert guard.highest("r") == max(admitted) == 3999


def test_sync_expired_holder_write_is_refused_after_new_holder_wrote(base_url: str, namespace: str) -> None:
    storage = Storage()
    with Client(base_url, namespace=namespace) as first, Client(base_url, namespace=namespace) as second:
        stale_context = first.lock("invoice-42", ttl=SHORT_TTL_S, auto_renew=False)
        stale_lease = stale_context.acquire()
        storage.write("invoice-42", "draft by first", stale_lease.token)

        time.sleep(SHORT_TTL_S + 0.2)  # the first client pauses past its ttl (no renewal)
        with second.lock("invoice-42", ttl=5, wait=5) as fresh_lease:
            assert fresh_lease.token > stale_lease.token
            storage.write("invoice-42", "final by second", fresh_lease.token)
            assert second.fence_check("invoice-42", fresh_lease.token) is True
            assert first.fence_check("invoice-42", stale_lease.token) is False

            with pytest.raises(StaleToken):
                storage.write("invoice-42", "late write by first", stale_lease.token)
            assert storage.data["invoice-42"] == "final by second"
            assert [token for _, _, token in storage.writes] == [stale_lease.token, fresh_lease.token]
            assert not stale_lease.lost  # without renewal nobody told the first client: fencing did

            stale_context.release()  # the stale release answers not-owner (False) and frees nothing
            assert stale_lease.released
            assert second.lock_status("invoice-42").token == fresh_lease.token


async def test_async_expired_holder_write_is_refused_after_new_holder_wrote(base_url: str, namespace: str) -> None:
    storage = Storage()
    async with (
        AsyncClient(base_url, namespace=namespace) as first,
        AsyncClient(base_url, namespace=namespace) as second,
    ):
        stale_context = first.lock("invoice-42", ttl=SHORT_TTL_S, auto_renew=False)
        stale_lease = await stale_context.acquire()
        storage.write("invoice-42", "draft by first", stale_lease.token)
        await asyncio.sleep(SHORT_TTL_S + 0.2)
        async with second.lock("invoice-42", ttl=5, wait=5) as fresh_lease:
            assert fresh_lease.token > stale_lease.token
            storage.write("invoice-42", "final by second", fresh_lease.token)
            with pytest.raises(StaleToken):
                storage.write("invoice-42", "late write by first", stale_lease.token)
            assert await first.fence_check("invoice-42", stale_lease.token) is False
            await stale_context.release()
            assert (await second.lock_status("invoice-42")).token == fresh_lease.token
        assert storage.data["invoice-42"] == "final by second"
