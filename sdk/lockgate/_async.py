"""AsyncClient: the asyncio shell around the core, with transparent auto-batching."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit

from . import _core, errors
from ._core import Call, Lease, LeaseKeeper, Response, RetryPolicy, Send, Sleep, Timeouts

T = TypeVar("T")


class _Connection:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        self.writer.close()


class AsyncTransport:
    """A small HTTP/1.1 keep-alive client on asyncio streams.

    Measured against httpx and aiohttp for this workload (small bodies, many concurrent
    calls) a direct stream client costs the fewest microseconds per call; the protocol
    subset we need (Content-Length or chunked answers, keep-alive) is small.
    """

    def __init__(
        self, base_url: str, api_key: str | None, timeouts: Timeouts, max_connections: int, node: int = 0
    ) -> None:
        self.node = node
        parts = urlsplit(base_url)
        if parts.scheme != "http":
            raise ValueError("only http:// URLs are supported (put TLS in front with a sidecar)")
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 80
        self._host_header = parts.netloc
        self._api_key = api_key
        self._timeouts = timeouts
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(max_connections)
        self.requests_sent = 0

    async def request(self, method: str, path: str, body: bytes, timeout: float) -> Response:
        """One request; `timeout` bounds all of it: waiting for a connection, connecting, answering."""
        try:
            async with asyncio.timeout(timeout):
                return await self._request(method, path, body, min(timeout, self._timeouts.connect))
        except TimeoutError as error:
            raise errors.TransportError(f"{method} {path}: no answer within {timeout:.3f} s") from error

    async def _request(self, method: str, path: str, body: bytes, connect_timeout: float) -> Response:
        async with self._slots:
            connection = self._idle.pop() if self._idle else await self._connect(connect_timeout)
            try:
                head = _core.request_head(method, path, self._host_header, len(body), self._api_key)
                connection.writer.write(head + body)
                self.requests_sent += 1
                status, keep_alive, relayed, data = await _read_response(connection.reader)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as error:
                connection.close()
                raise errors.TransportError(f"{method} {path}: {error!r}") from error
            except BaseException:
                connection.close()  # cancelled mid-request: the connection's state is unknown
                raise
            if keep_alive:
                self._idle.append(connection)
            else:
                connection.close()
        return Response(status, _core.decode_body(data), self.node, relayed)

    async def _connect(self, timeout: float) -> _Connection:
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(self._host, self._port)
        except (OSError, TimeoutError) as error:
            raise errors.TransportError(f"cannot connect to {self._host}:{self._port}: {error!r}") from error
        return _Connection(reader, writer)

    async def close(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()


class AsyncNodes:
    """Transports to every node of a deployment, used one at a time (see `_core.Nodes`)."""

    def __init__(self, urls: list[str], api_key: str | None, timeouts: Timeouts, max_connections: int) -> None:
        self._transports = [
            AsyncTransport(url, api_key, timeouts, max_connections, node) for node, url in enumerate(urls)
        ]
        self._nodes = _core.Nodes(len(urls))

    @property
    def requests_sent(self) -> int:
        return sum(transport.requests_sent for transport in self._transports)

    async def request(self, method: str, path: str, body: bytes, timeout: float) -> Response:
        index = self._nodes.current
        try:
            return self._nodes.answered(await self._transports[index].request(method, path, body, timeout))
        except errors.TransportError:
            self._nodes.move_on(index)
            raise

    def failed(self, node: int) -> None:
        """`node` answered 503 (the whole request or one op of a batch): try the next one."""
        self._nodes.move_on(node)

    async def close(self) -> None:
        for transport in self._transports:
            await transport.close()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool, bool, bytes]:
    """(status, keep-alive, relayed by a standby, body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
    keep_alive = headers.get("connection", "").lower() != "close"
    relayed = _core.RELAYED_BY in headers
    if "content-length" in headers:
        return status, keep_alive, relayed, await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                return status, keep_alive, relayed, b"".join(chunks)
            chunks.append(chunk[:-2])
    return status, False, relayed, await reader.read()


class _Batcher:
    """Calls made in the same event-loop tick leave as one /v1/batch request."""

    def __init__(self, transport: AsyncNodes, max_ops: int) -> None:
        self._transport = transport
        self._max_ops = max_ops
        self._queue: list[tuple[Call[Any], float, asyncio.Future[Response]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, call: Call[Any], read_timeout: float) -> asyncio.Future[Response]:
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._queue.append((call, read_timeout, future))
        if len(self._queue) == 1:
            asyncio.get_running_loop().call_soon(self._flush)
        elif len(self._queue) >= self._max_ops:
            self._flush()
        return future

    def _flush(self) -> None:
        items, self._queue = self._queue, []
        if items:
            task = asyncio.ensure_future(self._send(items))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, items: list[tuple[Call[Any], float, asyncio.Future[Response]]]) -> None:
        timeout = max(read_timeout for _, read_timeout, _ in items)
        try:
            if len(items) == 1:
                call = items[0][0]
                responses = [await self._transport.request(call.method, call.path, call.encoded_body(), timeout)]
            else:
                body = _core.encode_batch([call for call, _, _ in items])
                response = await self._transport.request("POST", "/v1/batch", body, timeout)
                responses = _core.split_batch(response, len(items))
        except BaseException as error:  # every caller in the batch learns the same failure
            for _, _, future in items:
                if not future.done():
                    future.set_exception(error)
            if not isinstance(error, Exception):
                raise
            return
        for (_, _, future), response in zip(items, responses, strict=True):
            if not future.done():
                future.set_result(response)


class AsyncClient:
    """Async Lockgate client. Use `async with AsyncClient(...) as lg:` or call `aclose()`."""

    def __init__(
        self,
        url: str | Sequence[str] = "http://127.0.0.1:8420",
        *,
        api_key: str | None = None,
        namespace: str = "default",
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        batching: bool = True,
        max_batch_ops: int = 256,
        max_connections: int = 32,
    ) -> None:
        """`url`: a node, or every node of a deployment (a list, or comma-separated): the client
        talks to one and moves to the next when it cannot connect or gets a 503."""
        self.namespace = namespace
        self.timeouts = timeouts or Timeouts()
        self.retry = retry or RetryPolicy()
        self._transport = AsyncNodes(_core.node_urls(url), api_key, self.timeouts, max_connections)
        self._batcher = _Batcher(self._transport, max_batch_ops) if batching else None
        self._rng = random.Random()

    @property
    def requests_sent(self) -> int:
        """HTTP requests this client has sent (a batch counts once)."""
        return self._transport.requests_sent

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._transport.close()

    async def run(self, call: Call[T], *, timeouts: Timeouts | None = None) -> T:
        """Send one call with retries; every public method ends here."""
        timeouts = timeouts or self.timeouts
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeouts.total
        steps = _core.drive(call, self.retry, timeouts, self._rng)
        action = next(steps)
        try:
            while True:
                if isinstance(action, Sleep):
                    await asyncio.sleep(min(action.seconds, max(0.0, deadline - loop.time())))
                    action = steps.send(None)
                    continue
                assert isinstance(action, Send)
                try:
                    read_timeout = _core.time_left(action.read_timeout, deadline, loop.time())
                    response = await self._send(action.call, read_timeout)
                except errors.TransportError as error:
                    action = steps.throw(error)
                    continue
                if response.status == 503:
                    self._transport.failed(response.node)
                action = steps.send(response)
        except StopIteration as finished:
            return finished.value  # type: ignore[no-any-return]

    async def _send(self, call: Call[Any], read_timeout: float) -> Response:
        if self._batcher is not None and call.batchable:
            return await self._batcher.submit(call, read_timeout)
        return await self._transport.request(call.method, call.path, call.encoded_body(), read_timeout)

    # --- the API -----------------------------------------------------------------------------
    def lock(
        self,
        name: str,
        *,
        ttl: float = 30.0,
        wait: float = 10.0,
        holder: str | None = None,
        auto_renew: bool = True,
        cancel_on_loss: bool = False,
        on_lost: Callable[[Lease], None] | None = None,
    ) -> AsyncLeaseContext:
        """`async with lg.lock("name", ttl=10) as lease:` — waits up to `wait` seconds, renews in the background."""
        return AsyncLeaseContext(self, "lock", name, ttl=ttl, wait=wait, holder=holder, auto_renew=auto_renew,
                                 cancel_on_loss=cancel_on_loss, on_lost=on_lost)  # fmt: skip

    def semaphore(
        self,
        name: str,
        *,
        limit: int,
        permits: int = 1,
        ttl: float = 30.0,
        wait: float = 10.0,
        holder: str | None = None,
        auto_renew: bool = True,
        cancel_on_loss: bool = False,
        on_lost: Callable[[Lease], None] | None = None,
    ) -> AsyncLeaseContext:
        return AsyncLeaseContext(self, "semaphore", name, ttl=ttl, wait=wait, holder=holder, limit=limit,
                                 permits=permits, auto_renew=auto_renew, cancel_on_loss=cancel_on_loss,
                                 on_lost=on_lost)  # fmt: skip

    async def lock_status(self, name: str, *, kind: str = "lock") -> _core.LockStatus:
        return await self.run(_core.status_call(self.namespace, kind, name))

    async def release(self, lease: Lease) -> bool:
        """Release a lease; False (not an error) if it had already expired or been released."""
        try:
            released = await self.run(_core.release_call(lease))
        except errors.NotOwner:
            released = False
        lease.released = True
        return released

    async def renew(self, lease: Lease, ttl: float | None = None, *, timeouts: Timeouts | None = None) -> None:
        lease.ttl = await self.run(_core.renew_call(lease, ttl), timeouts=timeouts)

    async def rate_limit(
        self, key: str, *, limit: int, per: float, cost: int = 1, burst: int | None = None, algorithm: str = "gcra"
    ) -> _core.RateLimitDecision:
        """Check and consume `cost` against `limit` per `per` seconds; cost=0 peeks."""
        call = _core.rate_limit_call(self.namespace, key, limit=limit, per=per, cost=cost, burst=burst,
                                     algorithm=algorithm)  # fmt: skip
        return await self.run(call)

    async def reset_rate_limit(self, key: str) -> None:
        await self.run(_core.rate_limit_reset_call(self.namespace, key))

    def counter(self, name: str) -> AsyncCounter:
        return AsyncCounter(self, name)

    async def fence_check(self, name: str, token: int, *, kind: str = "lock") -> bool:
        """Is `token` the current fencing token of the lock (or a live semaphore lease)?"""
        return await self.run(_core.fence_check_call(self.namespace, kind, name, token))


class AsyncCounter:
    def __init__(self, client: AsyncClient, name: str) -> None:
        self._client = client
        self.name = name

    async def get(self) -> int:
        return await self._client.run(_core.counter_get_call(self._client.namespace, self.name))

    async def add(self, delta: int = 1, *, minimum: int | None = None, maximum: int | None = None) -> int:
        call = _core.counter_add_call(self._client.namespace, self.name, delta, minimum=minimum, maximum=maximum)
        return await self._client.run(call)

    async def set(self, value: int) -> int:
        return await self._client.run(_core.counter_set_call(self._client.namespace, self.name, value))

    async def compare_and_set(self, expected: int, value: int) -> _core.CompareAndSet:
        return await self._client.run(_core.counter_cas_call(self._client.namespace, self.name, expected, value))


class AsyncLeaseContext:
    """Acquire on enter, renew while inside, release on exit."""

    def __init__(
        self,
        client: AsyncClient,
        kind: str,
        name: str,
        *,
        ttl: float,
        wait: float,
        holder: str | None,
        limit: int = 1,
        permits: int = 1,
        auto_renew: bool = True,
        cancel_on_loss: bool = False,
        on_lost: Callable[[Lease], None] | None = None,
    ) -> None:
        self._client = client
        # A fresh call (and request_id) per acquire: re-entering must not replay an old grant.
        self._new_call = functools.partial(_core.acquire_call, client.namespace, kind, name, ttl=ttl, wait=wait,
                                           limit=limit, permits=permits, holder=holder)  # fmt: skip
        self._auto_renew = auto_renew
        self._cancel_on_loss = cancel_on_loss
        self._on_lost = on_lost
        self._renewer: asyncio.Task[None] | None = None
        self._guarded: asyncio.Task[Any] | None = None
        self._cancelled_by_us = False
        self.lease: Lease | None = None

    async def acquire(self) -> Lease:
        """Acquire without the context manager; the same request_id is reused on every retry."""
        if self.lease is not None and not self.lease.released:
            raise RuntimeError("this lease is still held: release it before acquiring again")
        self._cancelled_by_us = False
        sent_at = time.monotonic()
        self.lease = await self._client.run(self._new_call())
        if self._auto_renew:
            keeper = LeaseKeeper(self.lease, confirmed_at=sent_at, on_lost=self._on_lost)
            self._renewer = asyncio.ensure_future(self._keep(keeper))
        return self.lease

    async def __aenter__(self) -> Lease:
        self._guarded = asyncio.current_task()
        return await self.acquire()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.release()
        if self._cancelled_by_us and exc_type is asyncio.CancelledError and self._guarded is not None:
            self._guarded.uncancel()
            raise errors.LeaseLost("the lease was lost; the guarded block was cancelled") from exc

    async def release(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        if self.lease is not None and not self.lease.released:
            await self._client.release(self.lease)

    async def _keep(self, keeper: LeaseKeeper) -> None:
        lease = keeper.lease
        while not lease.released:
            await asyncio.sleep(keeper.next_delay(time.monotonic()))
            sent_at = time.monotonic()
            try:
                await self._client.renew(lease, timeouts=keeper.renewal_timeouts(self._client.timeouts, sent_at))
            except errors.LockgateError as error:
                if keeper.failed(error, time.monotonic()):
                    if self._cancel_on_loss and self._guarded is not None and not self._guarded.done():
                        self._cancelled_by_us = True
                        self._guarded.cancel()
                    return
                await asyncio.sleep(keeper.retry_delay())
                continue
            keeper.renewed(sent_at)
