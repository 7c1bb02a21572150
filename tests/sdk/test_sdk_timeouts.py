"""Timeouts are finite: a server that accepts connections but never answers costs at most `total`.

The silent server is a plain listening socket: the kernel completes the TCP handshake and
queues the connection, nobody ever reads or writes. A frozen (SIGSTOPped) lockgate server
behaves the same way, and the client works again once it is resumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest
from lockgate import AsyncClient, Client, Timeouts, TransportError, Unavailable

if TYPE_CHECKING:
    from conftest import ServerFactory

TIMEOUTS = Timeouts(connect=0.5, read=0.5, total=1.5)
SLACK_S = 0.75  # scheduling, the last backoff sleep, interpreter start-up of the first call


@pytest.fixture
def silent_url() -> Iterator[str]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


SyncCall = Callable[[Client], object]
SYNC_CALLS: dict[str, SyncCall] = {
    "counter-get": lambda lg: lg.counter("n").get(),
    "counter-add": lambda lg: lg.counter("n").add(1),
    "acquire-wait-10s": lambda lg: lg.lock("job", ttl=5, wait=10).acquire(),  # wait is no excuse to pass total
}


@pytest.mark.parametrize("call", list(SYNC_CALLS.values()), ids=list(SYNC_CALLS))
def test_sync_call_to_silent_server_fails_within_total(silent_url: str, call: SyncCall) -> None:
    with Client(silent_url, timeouts=TIMEOUTS) as lg:
        started = time.monotonic()
        with pytest.raises(TransportError) as failed:
            call(lg)
        elapsed = time.monotonic() - started
    assert isinstance(failed.value, Unavailable)
    assert TIMEOUTS.read <= elapsed <= TIMEOUTS.total + SLACK_S, elapsed


@pytest.mark.parametrize("kind", ["counter-get", "counter-add", "acquire-wait-10s", "batch-of-50"])
async def test_async_call_to_silent_server_fails_within_total(silent_url: str, kind: str) -> None:
    async with AsyncClient(silent_url, timeouts=TIMEOUTS) as lg:
        loop = asyncio.get_running_loop()
        started = loop.time()
        if kind == "batch-of-50":
            results = await asyncio.wait_for(
                asyncio.gather(*(lg.counter("n").add(1) for _ in range(50)), return_exceptions=True), 10
            )
            assert all(isinstance(result, TransportError) for result in results), results
        else:
            with pytest.raises(TransportError):
                if kind == "counter-get":
                    await asyncio.wait_for(lg.counter("n").get(), 10)
                elif kind == "counter-add":
                    await asyncio.wait_for(lg.counter("n").add(1), 10)
                else:
                    await asyncio.wait_for(lg.lock("job", ttl=5, wait=10).acquire(), 10)
        elapsed = loop.time() - started
    assert TIMEOUTS.read <= elapsed <= TIMEOUTS.total + SLACK_S, elapsed


def test_sync_connect_refused_fails_fast() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"  # bound, not listening: refused
        with Client(url, timeouts=TIMEOUTS) as lg:
            started = time.monotonic()
            with pytest.raises(TransportError):
                lg.counter("n").get()
            assert time.monotonic() - started <= TIMEOUTS.total + SLACK_S


async def test_frozen_server_times_out_then_recovers(start_server: ServerFactory) -> None:
    server = start_server()
    async with AsyncClient(server.url, namespace="frozen", timeouts=TIMEOUTS) as lg:
        assert await lg.counter("n").add(2) == 2
        server.pause()
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(TransportError):
                await asyncio.wait_for(lg.counter("n").get(), 10)  # a read: harmless when answered late
            assert loop.time() - started <= TIMEOUTS.total + SLACK_S
        finally:
            server.resume()
        assert await lg.counter("n").get() == 2


# --- waits that must count against `total` too ----------------------------------------------------------
@pytest.fixture
def blackhole_url() -> Iterator[str]:
    """A port whose accept queue is full: new SYNs are dropped and connect() hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.1)
    probe = socket.socket()
    probe.settimeout(0.3)
    try:
        probe.connect(("127.0.0.1", port))
        pytest.skip("this kernel completes handshakes past a full accept queue; no black hole to test with")
    except TimeoutError:
        pass
    finally:
        probe.close()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


SLOW_CONNECT = Timeouts(connect=3.0, read=0.5, total=1.0)


def test_sync_connect_is_bounded_by_total(blackhole_url: str) -> None:
    """A connect that hangs must end at the call's total deadline, not after the full connect timeout."""
    with Client(blackhole_url, timeouts=SLOW_CONNECT) as lg:
        started = time.monotonic()
        with pytest.raises(TransportError):
            lg.counter("n").get()
        elapsed = time.monotonic() - started
    assert elapsed <= SLOW_CONNECT.total + SLACK_S, f"total={SLOW_CONNECT.total} s, the call took {elapsed:.2f} s"


async def test_async_connect_is_bounded_by_total(blackhole_url: str) -> None:
    async with AsyncClient(blackhole_url, timeouts=SLOW_CONNECT) as lg:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TransportError):
            await asyncio.wait_for(lg.counter("n").get(), 10)
        elapsed = loop.time() - started
    assert elapsed <= SLOW_CONNECT.total + SLACK_S, f"total={SLOW_CONNECT.total} s, the call took {elapsed:.2f} s"


async def test_async_wait_for_a_connection_slot_is_bounded_by_total(silent_url: str) -> None:
    """Calls queued behind `max_connections` must still end by their own total deadline."""
    timeouts = Timeouts(connect=0.5, read=0.5, total=1.0)
    async with AsyncClient(silent_url, timeouts=timeouts, batching=False, max_connections=1) as lg:
        loop = asyncio.get_running_loop()
        started = loop.time()

        async def one(index: int) -> float:
            with pytest.raises(TransportError):
                await lg.counter(f"n{index}").get()
            return loop.time() - started

        elapsed = await asyncio.wait_for(asyncio.gather(*(one(index) for index in range(6))), 30)
    assert max(elapsed) <= timeouts.total + SLACK_S, f"total={timeouts.total} s, calls took {elapsed}"
