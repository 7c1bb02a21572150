"""Lease renewal: a held lease outlives its TTL; a lease that cannot be renewed is given up.

- renewal keeps a 1 s lease held for 3.5 s (sync thread and async task);
- a holder frozen with SIGSTOP past its TTL loses the lock to a second client with a larger
  token, and on SIGCONT reports `lease.lost` and its `on_lost` callback; its late release
  frees nothing;
- a force-released lease: the next renewal answers NotOwner, the lease is lost, and with
  `cancel_on_loss=True` the guarded block is cancelled and `async with` raises LeaseLost.
"""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from lockgate import AsyncClient, Client, Lease, LeaseLost, LockHeld

if TYPE_CHECKING:
    from conftest import ServerFactory, ServerProcess

HERE = Path(__file__).parent
HOLD_S = 3.5
TTL_S = 1.0


def test_sync_renewal_keeps_lease_past_ttl(base_url: str, namespace: str) -> None:
    with Client(base_url, namespace=namespace) as lg, Client(base_url, namespace=namespace) as other:
        with lg.lock("job", ttl=TTL_S) as lease:
            deadline = time.monotonic() + HOLD_S
            while time.monotonic() < deadline:
                time.sleep(0.5)
                status = other.lock_status("job")
                assert status.held and status.token == lease.token
                assert status.remaining is not None and status.remaining <= TTL_S  # the ttl really is 1 s
            assert not lease.lost
            with pytest.raises(LockHeld), other.lock("job", ttl=5, wait=0):
                pytest.fail("a renewed lease was granted to another client")
        assert not lease.lost and lease.released
        assert not other.lock_status("job").held


async def test_async_renewal_keeps_lease_past_ttl(base_url: str, namespace: str) -> None:
    async with AsyncClient(base_url, namespace=namespace) as lg, AsyncClient(base_url, namespace=namespace) as other:
        async with lg.lock("job", ttl=TTL_S) as lease:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + HOLD_S
            while loop.time() < deadline:
                await asyncio.sleep(0.5)
                status = await other.lock_status("job")
                assert status.held and status.token == lease.token
                assert status.remaining is not None and status.remaining <= TTL_S
            assert not lease.lost
        assert not lease.lost and lease.released
        assert not (await other.lock_status("job")).held


# --- a frozen holder ---------------------------------------------------------------------------
class _Lines:
    """Lines of a child's stdout, read by a thread so a test can wait for one with a timeout."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self._queue: queue.Queue[str] = queue.Queue()
        assert process.stdout is not None
        stream = process.stdout
        threading.Thread(target=lambda: [self._queue.put(line) for line in stream], daemon=True).start()

    def next(self, timeout_s: float) -> str:
        try:
            return self._queue.get(timeout=timeout_s).strip()
        except queue.Empty:
            pytest.fail(f"the child printed nothing within {timeout_s} s")


def test_sigstopped_holder_loses_lock_to_a_larger_token(base_url: str, namespace: str) -> None:
    child = subprocess.Popen(
        [sys.executable, str(HERE / "holder_child.py"), base_url, namespace, "job"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = _Lines(child)
        first = lines.next(15)
        assert first.startswith("TOKEN "), first
        child_token = int(first.split()[1])
        with Client(base_url, namespace=namespace) as lg:
            time.sleep(1.5)  # past the child's 1 s ttl: still held, because the child renews
            status = lg.lock_status("job")
            assert status.held and status.token == child_token and status.holder == "child"

            os.kill(child.pid, signal.SIGSTOP)
            stopped_at = time.monotonic()
            with lg.lock("job", ttl=10, wait=5) as second:
                assert second.token > child_token
                assert time.monotonic() - stopped_at < 2.0  # granted once the frozen lease ran out
                time.sleep(max(0.0, 2.5 - (time.monotonic() - stopped_at)))
                os.kill(child.pid, signal.SIGCONT)

                report = lines.next(10)
                assert report == f"LOST True FIRED True TOKEN {child_token}"
                assert lines.next(10) == "RELEASED False"  # the stale holder's release is refused...
                status = lg.lock_status("job")
                assert status.held and status.token == second.token  # ...and frees nothing
                assert lg.fence_check("job", second.token) is True
                assert lg.fence_check("job", child_token) is False
        assert child.wait(10) == 0
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGCONT)
            child.kill()
            child.wait()


# --- a lease taken away by an admin -------------------------------------------------------------
def _force_release(server: ServerProcess, namespace: str, name: str) -> None:
    assert server.admin_post(f"/v1/namespaces/{namespace}/locks/{name}/force-release") == 200


async def test_async_cancel_on_loss_cancels_the_guarded_block(server: ServerProcess, namespace: str) -> None:
    lost: list[Lease] = []
    cancelled = reached_end = False
    async with AsyncClient(server.url, namespace=namespace) as lg:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(LeaseLost):
            async with lg.lock("job", ttl=TTL_S, cancel_on_loss=True, on_lost=lost.append) as lease:
                await asyncio.to_thread(_force_release, server, namespace, "job")
                try:
                    await asyncio.sleep(10)
                    reached_end = True
                except asyncio.CancelledError:
                    cancelled = True
                    raise
        elapsed = loop.time() - started
        assert cancelled and not reached_end
        assert elapsed < TTL_S  # the first renewal (at ttl/3) was told not-owner: no waiting for expiry
        assert lease.lost
        assert lost == [lease]
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0  # our cancel was taken back: the task lives on
        async with lg.lock("job", ttl=TTL_S, wait=0) as again:  # the client still works
            assert again.token > lease.token


async def test_async_loss_without_cancel_on_loss_only_marks_the_lease(server: ServerProcess, namespace: str) -> None:
    lost: list[Lease] = []
    async with AsyncClient(server.url, namespace=namespace) as lg:
        async with lg.lock("job", ttl=TTL_S, on_lost=lost.append) as lease:
            await asyncio.to_thread(_force_release, server, namespace, "job")
            for _ in range(100):
                if lease.lost:
                    break
                await asyncio.sleep(0.02)
            assert lease.lost
            assert lost == [lease]
        assert lease.released


def test_sync_force_released_lease_is_lost_and_on_lost_fires(server: ServerProcess, namespace: str) -> None:
    fired = threading.Event()
    with Client(server.url, namespace=namespace) as lg, Client(server.url, namespace=namespace) as other:
        usurping = other.lock("job", ttl=10, wait=0, auto_renew=False)
        with lg.lock("job", ttl=TTL_S, on_lost=lambda lease: fired.set()) as lease:
            _force_release(server, namespace, "job")
            usurper = usurping.acquire()  # free right after the force-release
            assert usurper.token > lease.token
            assert fired.wait(2 * TTL_S)
            assert lease.lost
        status = other.lock_status("job")
        assert status.held and status.token == usurper.token  # our late release freed nothing
        usurping.release()
        assert not other.lock_status("job").held


async def test_async_frozen_server_loss_is_decided_on_the_client_clock(start_server: ServerFactory) -> None:
    """The server freezes: renewals time out, and once the TTL has run out by our own clock the
    lease is given up and the guarded block cancelled, without waiting for the server."""
    server = start_server()
    cancelled_after: list[float] = []
    async with AsyncClient(server.url, namespace="frozen") as lg:
        loop = asyncio.get_running_loop()
        with pytest.raises(LeaseLost):
            async with lg.lock("job", ttl=TTL_S, cancel_on_loss=True) as lease:
                server.pause()
                paused_at = loop.time()
                try:
                    await asyncio.sleep(10)
                except asyncio.CancelledError:
                    cancelled_after.append(loop.time() - paused_at)
                    server.resume()  # so the release on the way out gets an answer
                    raise
        assert lease.lost
        assert cancelled_after and cancelled_after[0] <= TTL_S + 0.5
        assert not (await lg.lock_status("job")).held


# --- a grant that came after a wait longer than the TTL ----------------------------------------
WAITED_S = 2.0  # twice TTL_S: the acquire's own send time gives no budget left at the grant


async def test_async_grant_after_a_long_wait_is_renewed_not_lost(base_url: str, namespace: str) -> None:
    async with AsyncClient(base_url, namespace=namespace) as lg, AsyncClient(base_url, namespace=namespace) as other:
        holder = other.lock("job", ttl=TTL_S, wait=0)
        first = await holder.acquire()
        asyncio.get_running_loop().call_later(WAITED_S, lambda: asyncio.ensure_future(holder.release()))
        lost: list[Lease] = []
        async with lg.lock("job", ttl=TTL_S, wait=5, cancel_on_loss=True, on_lost=lost.append) as lease:
            assert lease.token > first.token
            await asyncio.sleep(2 * TTL_S)
            assert not lease.lost and lost == []
            status = await other.lock_status("job")
            assert status.held and status.token == lease.token
        assert lease.released and not lease.lost


def test_sync_grant_after_a_long_wait_is_renewed_not_lost(base_url: str, namespace: str) -> None:
    with Client(base_url, namespace=namespace) as lg, Client(base_url, namespace=namespace) as other:
        holder = other.lock("job", ttl=TTL_S, wait=0)
        first = holder.acquire()
        releasing = threading.Timer(WAITED_S, holder.release)
        releasing.start()
        try:
            with lg.lock("job", ttl=TTL_S, wait=5) as lease:
                assert lease.token > first.token
                time.sleep(2 * TTL_S)
                assert not lease.lost
                status = other.lock_status("job")
                assert status.held and status.token == lease.token
        finally:
            releasing.join()
        assert lease.released and not lease.lost


# --- leaving the block after a known loss --------------------------------------------------------
LEAVE_S = 3.0  # the lease's TTL, a brief courtesy release (1 s), and scheduling


async def test_async_leaving_after_a_loss_to_a_frozen_server_is_quick(start_server: ServerFactory) -> None:
    """The server stays frozen: the block is cancelled at the TTL, LeaseLost (not TransportError)
    is raised soon after, without waiting out the client's 30 s total, and our task is uncancelled."""
    server = start_server()
    async with AsyncClient(server.url, namespace="frozen") as lg:
        loop = asyncio.get_running_loop()
        try:
            with pytest.raises(LeaseLost):
                async with lg.lock("job", ttl=TTL_S, cancel_on_loss=True) as lease:
                    server.pause()
                    paused_at = loop.time()
                    await asyncio.sleep(10)
            assert loop.time() - paused_at <= LEAVE_S
            assert lease.lost
            task = asyncio.current_task()
            assert task is not None and task.cancelling() == 0
        finally:
            server.resume()


def test_sync_leaving_after_a_loss_to_a_frozen_server_is_quick(start_server: ServerFactory) -> None:
    server = start_server()
    with Client(server.url, namespace="frozen") as lg:
        try:
            with lg.lock("job", ttl=TTL_S) as lease:
                server.pause()
                paused_at = time.monotonic()
                while not lease.lost and time.monotonic() - paused_at < 5:
                    time.sleep(0.05)
                assert lease.lost
            assert time.monotonic() - paused_at <= LEAVE_S  # and no TransportError from the release
        finally:
            server.resume()


# --- releasing early is not losing ----------------------------------------------------------------
async def test_async_client_release_stops_renewal(base_url: str, namespace: str) -> None:
    lost: list[Lease] = []
    async with AsyncClient(base_url, namespace=namespace) as lg:
        async with lg.lock("job", ttl=TTL_S, cancel_on_loss=True, on_lost=lost.append) as lease:
            assert await lg.release(lease) is True
            await asyncio.sleep(TTL_S)  # a renewal would have been due three times over; not cancelled
            assert lease.released and not lease.lost and lost == []
        assert not (await lg.lock_status("job")).held


def test_sync_client_release_stops_renewal(base_url: str, namespace: str) -> None:
    lost: list[Lease] = []
    with Client(base_url, namespace=namespace) as lg:
        with lg.lock("job", ttl=TTL_S, on_lost=lost.append) as lease:
            assert lg.release(lease) is True
            time.sleep(TTL_S)
            assert lease.released and not lease.lost and lost == []
        assert not lg.lock_status("job").held


# --- an on_lost callback that raises ---------------------------------------------------------------
async def test_async_on_lost_that_raises_is_logged_and_the_loss_still_handled(
    server: ServerProcess, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(lease: Lease) -> None:
        raise RuntimeError("a bug in the caller's callback")

    async with AsyncClient(server.url, namespace=namespace) as lg:
        with pytest.raises(LeaseLost):
            async with lg.lock("job", ttl=TTL_S, cancel_on_loss=True, on_lost=broken) as lease:
                await asyncio.to_thread(_force_release, server, namespace, "job")
                await asyncio.sleep(3)  # cancelled at the first renewal, at a third of the TTL
        assert lease.lost and lease.released
    assert "on_lost callback" in caplog.text and "a bug in the caller's callback" in caplog.text


def test_sync_on_lost_that_raises_is_logged(
    server: ServerProcess, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(lease: Lease) -> None:
        raise RuntimeError("a bug in the caller's callback")

    with Client(server.url, namespace=namespace) as lg:
        with lg.lock("job", ttl=TTL_S, on_lost=broken) as lease:
            _force_release(server, namespace, "job")
            deadline = time.monotonic() + 2 * TTL_S
            while not lease.lost and time.monotonic() < deadline:
                time.sleep(0.02)
            assert lease.lost
        assert lease.released
    assert "a bug in the caller's callback" in caplog.text
