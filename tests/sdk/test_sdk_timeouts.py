"""Timeouts are finite: a server that accepts connections but never answers costs at most `total`.

The silent server is a plain listening socket: the kernel completes the TCP handshake and
queues the connection, nobody ever reads or writes. A frozen (SIGSTOPped) lockgate server
behaves the same way, and the client works again once it is resumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest
from lockgate import AsyncClient, Client, LockHeld, RetryPolicy, Timeouts, TransportError, Unavailable
from lockgate import _core as core

if TYPE_CHECKING:
    from conftest import ServerFactory

TIMEOUTS = Timeouts(connect=0.5, read=0.5, total=1.5)
SLACK_S = 0.75  # scheduling, the last backoff sleep, interpreter start-up of the first call
WAIT_S = 1.0  # a waiting acquire may take its wait on top of `total`, never more


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
    "acquire-wait": lambda lg: lg.lock("job", ttl=5, wait=WAIT_S).acquire(),  # total + wait, no longer
}


@pytest.mark.parametrize("kind", list(SYNC_CALLS))
def test_sync_call_to_silent_server_fails_within_total(silent_url: str, kind: str) -> None:
    with Client(silent_url, timeouts=TIMEOUTS) as lg:
        started = time.monotonic()
        with pytest.raises(TransportError) as failed:
            SYNC_CALLS[kind](lg)
        elapsed = time.monotonic() - started
    assert isinstance(failed.value, Unavailable)
    wait = WAIT_S if kind == "acquire-wait" else 0.0
    assert TIMEOUTS.read <= elapsed <= TIMEOUTS.total + wait + SLACK_S, elapsed


@pytest.mark.parametrize("kind", ["counter-get", "counter-add", "acquire-wait", "batch-of-50"])
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
                    await asyncio.wait_for(lg.lock("job", ttl=5, wait=WAIT_S).acquire(), 10)
        elapsed = loop.time() - started
    wait = WAIT_S if kind == "acquire-wait" else 0.0
    assert TIMEOUTS.read <= elapsed <= TIMEOUTS.total + wait + SLACK_S, elapsed


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


# --- per-call timeouts --------------------------------------------------------------------------------
async def test_a_batched_call_ends_by_its_own_deadline(silent_url: str) -> None:
    """Two calls share a batch; the one with the short timeouts must not wait for the batch's longer one."""
    short = Timeouts(connect=0.5, read=0.3, total=0.5)
    long = Timeouts(connect=0.5, read=5.0, total=5.0)
    async with AsyncClient(silent_url, namespace="batch") as lg:
        loop = asyncio.get_running_loop()
        started = loop.time()

        async def short_call() -> float:
            with pytest.raises(TransportError):
                await lg.run(core.counter_get_call("batch", "a"), timeouts=short)
            return loop.time() - started

        patient = asyncio.ensure_future(lg.run(core.counter_get_call("batch", "b"), timeouts=long))
        elapsed = await asyncio.wait_for(short_call(), 10)
        assert not patient.done()
        patient.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await patient
        assert lg.requests_sent >= 1
    assert elapsed <= short.total + SLACK_S, f"total={short.total} s, the call took {elapsed:.2f} s"


def _public_calls() -> list[tuple[str, Callable[..., object]]]:
    from lockgate import AsyncCounter, Counter

    calls = []
    for owner in (Client, AsyncClient, Counter, AsyncCounter):
        for name, member in vars(owner).items():
            if callable(member) and not name.startswith("_") and name not in ("counter", "close", "aclose", "run"):
                calls.append((f"{owner.__name__}.{name}", member))
    return calls


@pytest.mark.parametrize(("name", "member"), _public_calls(), ids=[name for name, _ in _public_calls()])
def test_every_public_call_takes_timeouts(name: str, member: Callable[..., object]) -> None:
    parameter = inspect.signature(member).parameters.get("timeouts")
    assert parameter is not None and parameter.kind is inspect.Parameter.KEYWORD_ONLY, name
    assert parameter.default is None


def test_sync_per_call_connect_timeout_is_honoured(blackhole_url: str) -> None:
    with Client(
        blackhole_url, timeouts=Timeouts(connect=5.0, read=5.0, total=10.0), retry=RetryPolicy(attempts=1)
    ) as lg:
        started = time.monotonic()
        with pytest.raises(TransportError):
            lg.counter("n").get(timeouts=Timeouts(connect=0.3, read=5.0, total=5.0))
        elapsed = time.monotonic() - started
    assert elapsed <= 0.3 + SLACK_S, elapsed


async def test_async_per_call_connect_timeout_is_honoured(blackhole_url: str) -> None:
    defaults = Timeouts(connect=5.0, read=5.0, total=10.0)
    async with AsyncClient(blackhole_url, timeouts=defaults, retry=RetryPolicy(attempts=1)) as lg:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TransportError):
            await asyncio.wait_for(
                lg.rate_limit("k", limit=1, per=1, timeouts=Timeouts(connect=0.3, read=5.0, total=5.0)), 10
            )
        elapsed = loop.time() - started
    assert elapsed <= 0.3 + SLACK_S, elapsed


async def test_async_per_call_timeouts_override_the_clients(silent_url: str) -> None:
    async with AsyncClient(silent_url, timeouts=Timeouts(connect=5.0, read=5.0, total=10.0)) as lg:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TransportError):
            await asyncio.wait_for(lg.counter("n").add(1, timeouts=TIMEOUTS), 10)
        assert loop.time() - started <= TIMEOUTS.total + SLACK_S


# --- a wait longer than `total` ---------------------------------------------------------------------------
LONG_WAIT_S = 2.0
SHORT_TOTAL = Timeouts(connect=0.5, read=0.5, total=1.0)


async def test_async_a_wait_longer_than_total_ends_in_lock_held(base_url: str, namespace: str) -> None:
    async with (
        AsyncClient(base_url, namespace=namespace) as holder,
        AsyncClient(base_url, namespace=namespace, timeouts=SHORT_TOTAL) as lg,
        holder.lock("job", ttl=10),
    ):
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(LockHeld):
            await lg.lock("job", ttl=5, wait=LONG_WAIT_S).acquire()
        assert LONG_WAIT_S <= loop.time() - started <= LONG_WAIT_S + SLACK_S


def test_sync_a_wait_longer_than_total_ends_in_lock_held(base_url: str, namespace: str) -> None:
    with (
        Client(base_url, namespace=namespace) as holder,
        Client(base_url, namespace=namespace, timeouts=SHORT_TOTAL) as lg,
        holder.lock("job", ttl=10),
    ):
        started = time.monotonic()
        with pytest.raises(LockHeld):
            lg.lock("job", ttl=5, wait=LONG_WAIT_S).acquire()
        assert LONG_WAIT_S <= time.monotonic() - started <= LONG_WAIT_S + SLACK_S
