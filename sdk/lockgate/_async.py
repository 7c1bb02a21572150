"""AsyncClient: the asyncio shell around the core, with transparent auto-batching."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

from . import _core, errors
from ._core import (
    Call,
    CompareAndSet,
    Lease,
    LeaseKeeper,
    LockStatus,
    RateLimitDecision,
    Response,
    RetryPolicy,
    Send,
    Timeouts,
)

T = TypeVar("T")


class _Connection:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        self.writer.close()

    def is_stale(self) -> bool:
        """Closed by the server while idle (its keep-alive timeout, a restart), or holding bytes
        nobody asked for. The loop reads idle sockets, so a FIN or RST has already landed here."""
        unread = len(getattr(self.reader, "_buffer", b""))  # StreamReader has no public peek
        return self.writer.is_closing() or self.reader.at_eof() or unread > 0 or self.reader.exception() is not None


class _StaleConnection(Exception):
    """A reused connection failed before any byte of the answer: the server had closed it."""


# What a connection the server closed raises when we write to it or wait for the answer.
_CLOSED_ERRORS = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


class AsyncTransport:
    """A small HTTP/1.1 keep-alive client on asyncio streams.

    Measured against httpx and aiohttp for this workload (small bodies, many concurrent
    calls) a direct stream client costs the fewest microseconds per call; the protocol
    subset we need (Content-Length or chunked answers, keep-alive) is small.
    """

    def __init__(self, base_url: str, api_key: str | None, max_connections: int, node: int = 0) -> None:
        self.node = node
        self._address = _core.node_address(base_url)
        self._host = self._address.host
        self._port = self._address.port
        self._api_key = _core.checked_api_key(api_key)
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(max_connections)
        self.requests_sent = 0

    async def request(self, method: str, path: str, body: bytes, timeout: float, connect_timeout: float) -> Response:
        """One request; `timeout` bounds all of it: waiting for a connection, connecting, answering."""
        try:
            async with asyncio.timeout(timeout):
                return await self._request(method, path, body, min(timeout, connect_timeout))
        except TimeoutError as error:
            raise errors.TransportError(f"{method} {path}: no answer within {timeout:.3f} s") from error

    async def _request(self, method: str, path: str, body: bytes, connect_timeout: float) -> Response:
        async with self._slots:
            while True:  # ends: every stale connection is taken out of the pool, then a fresh one is opened
                connection = self._checkout()
                reused = connection is not None
                if connection is None:
                    connection = await self._connect(connect_timeout)
                try:
                    return await self._exchange(connection, method, path, body, reused)
                except _StaleConnection:
                    continue  # not an attempt: the same request (and request_id) on another connection

    def _checkout(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()
            if not connection.is_stale():
                return connection
            connection.close()
        return None

    async def _exchange(self, connection: _Connection, method: str, path: str, body: bytes, reused: bool) -> Response:
        answer_started = False
        target = self._address.target(path)
        request = _core.request_head(method, target, self._address.host_header, len(body), self._api_key)
        try:
            connection.writer.write(request + body)
            self.requests_sent += 1
            head = await connection.reader.readuntil(b"\r\n\r\n")
            answer_started = True
            answer, data = await _read_response(connection.reader, head)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as error:
            connection.close()
            nothing_came = isinstance(error, _CLOSED_ERRORS) or (
                isinstance(error, asyncio.IncompleteReadError) and not error.partial
            )
            if reused and not answer_started and nothing_came:
                raise _StaleConnection from error
            raise errors.TransportError(f"{method} {path}: {error!r}") from error
        except BaseException:
            # Cancelled mid-request, or an answer refused unread (too long): the connection's state is unknown.
            connection.close()
            raise
        if answer.keep_alive:
            self._idle.append(connection)
        else:
            connection.close()
        return Response(answer.status, _core.decode_body(data, answer.content_type), self.node, answer.relayed)

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

    def __init__(self, urls: list[str], api_key: str | None, max_connections: int) -> None:
        self._transports = [AsyncTransport(url, api_key, max_connections, node) for node, url in enumerate(urls)]
        self._nodes = _core.Nodes(len(urls))

    @property
    def requests_sent(self) -> int:
        return sum(transport.requests_sent for transport in self._transports)

    async def request(self, method: str, path: str, body: bytes, timeout: float, connect_timeout: float) -> Response:
        index = self._nodes.current
        try:
            answer = await self._transports[index].request(method, path, body, timeout, connect_timeout)
        except errors.TransportError:
            self._nodes.move_on(index)
            raise
        return self._nodes.answered(answer)

    def answered(self, response: Response) -> None:
        """One op of a batch answered: a 503 for it moves on, like a 503 for a whole request."""
        self._nodes.answered(response)

    async def close(self) -> None:
        for transport in self._transports:
            await transport.close()


async def _read_response(reader: asyncio.StreamReader, head: bytes) -> tuple[_core.ResponseHead, bytes]:
    """The final answer (its head and body) to the request whose first answer head was read.

    1xx interim answers (100 Continue, 103 Early Hints) are skipped, up to INTERIM_ANSWERS_MAX.
    ValueError for a malformed answer, UnexpectedResponse for a body past RESPONSE_BYTES_MAX.
    """
    answer = _core.parse_response_head(head)
    for _ in range(_core.INTERIM_ANSWERS_MAX):
        if not answer.interim:
            break
        answer = _core.parse_response_head(await reader.readuntil(b"\r\n\r\n"))
    if answer.interim:
        raise ValueError(f"more than {_core.INTERIM_ANSWERS_MAX} interim (1xx) answers")
    if answer.framing == "none":
        return answer, b""
    if answer.framing == "length":
        return answer, await reader.readexactly(answer.length)
    if answer.framing == "chunked":
        return answer, await _read_chunked(reader)
    chunks: list[bytes] = []  # until the server closes the connection
    received = 0
    while chunk := await reader.read(65536):
        received += len(chunk)
        _core.check_response_length(received)
        chunks.append(chunk)
    return answer, b"".join(chunks)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    received = 0
    while True:
        size = _core.parse_chunk_size(await reader.readuntil(b"\r\n"))
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass  # trailer fields: nothing we read
            return b"".join(chunks)
        received += size
        _core.check_response_length(received)  # before reading this chunk
        chunk = await reader.readexactly(size + 2)
        if chunk[-2:] != b"\r\n":
            raise ValueError("a chunk not followed by CRLF")
        chunks.append(chunk[:-2])


_Item = tuple[Send, "asyncio.Future[Response]"]

# One tick's calls leave as several batches of at most this many, not as one: while the server
# applies and commits the first, this process is still encoding the next and reading answers.
# One batch per tick runs client, server and store in lock-step. 64 tasks through one client
# (loadtests/bench_sdk.py, 2 cores): 32 per batch gave 22-28k checks/s, 64 or 256 gave 14-22k;
# 16 or fewer pays for more requests than the overlap wins.
MAX_BATCH_OPS = 32


class _Batcher:
    """Calls made in the same event-loop tick leave together, in /v1/batch requests of at most `max_ops`.

    Each caller waits for its own answer under its own deadline (see `AsyncClient._send`); the
    batch request itself may take as long as the most patient of them.
    """

    def __init__(self, transport: AsyncNodes, max_ops: int) -> None:
        self._transport = transport
        self._max_ops = max_ops
        self._queue: list[_Item] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, send: Send) -> asyncio.Future[Response]:
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._queue.append((send, future))
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

    async def _send(self, items: list[_Item]) -> None:
        items = [item for item in items if not item[1].done()]  # callers that gave up already
        if not items:
            return
        timeout = max(send.timeout for send, _ in items)
        connect_timeout = max(send.connect_timeout for send, _ in items)
        try:
            if len(items) == 1:
                call = items[0][0].call
                body = call.encoded_body()
                responses = [await self._transport.request(call.method, call.path, body, timeout, connect_timeout)]
            else:
                body = _core.encode_batch([send.call for send, _ in items])
                response = await self._transport.request("POST", "/v1/batch", body, timeout, connect_timeout)
                if response.status == 413:  # more bytes than the server takes in one body: halve it
                    self._max_ops = max(1, min(self._max_ops, len(items) // 2))
                    half = len(items) // 2
                    await asyncio.gather(self._send(items[:half]), self._send(items[half:]))
                    return
                if _core.batch_refused_whole(response):
                    await asyncio.gather(*(self._send([item]) for item in items))
                    return
                responses = _core.split_batch(response, len(items))
                for each in responses:
                    self._transport.answered(each)
        except BaseException as error:  # every caller in the batch learns the same failure
            for _, future in items:
                if not future.done():
                    future.set_exception(error)
            if not isinstance(error, Exception):
                raise
            return
        for (send, future), response in zip(items, responses, strict=True):
            if not future.done():
                future.set_result(response)
            elif future.cancelled():
                self._give_back(send, response)

    def _give_back(self, send: Send, response: Response) -> None:
        """A caller cancelled while its batch was on the wire was granted a lease it will never
        hear of: release it. (One that timed out retries with its request_id and gets it.)"""
        release = _core.release_of_unheard_grant(send.call, response)
        if release is None:
            return

        async def give_back(call: Call[bool]) -> None:
            with contextlib.suppress(errors.LockgateError, OSError):  # at worst it expires by its TTL
                await self._transport.request(
                    call.method, call.path, call.encoded_body(), send.timeout, send.connect_timeout
                )

        task = asyncio.ensure_future(give_back(release))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _give_up(future: asyncio.Future[Response], send: Send) -> None:
    if not future.done():  # the batch leaves it out if it has not gone yet
        call = send.call
        future.set_exception(errors.TransportError(f"{call.method} {call.path}: no answer within {send.timeout:.3f} s"))


class AsyncClient:
    """Async Lockgate client. Use `async with AsyncClient(...) as lg:` or call `aclose()`.

    Every call takes `timeouts=` to override the client's `Timeouts` for that call alone.
    """

    def __init__(
        self,
        url: str | Sequence[str] = "http://127.0.0.1:8420",
        *,
        api_key: str | None = None,
        namespace: str = "default",
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        batching: bool = True,
        max_batch_ops: int = MAX_BATCH_OPS,
        max_connections: int = 32,
    ) -> None:
        """`url`: a node, or every node of a deployment (a list, or comma-separated): the client
        talks to one and moves to the next when it cannot connect or gets a 503."""
        self.namespace = namespace
        self.timeouts = timeouts or Timeouts()
        self.retry = retry or RetryPolicy()
        self._transport = AsyncNodes(_core.node_urls(url), api_key, max_connections)
        self._batcher = _Batcher(self._transport, max_batch_ops) if batching else None
        self._rng = random.Random()
        # The leases this client renews in the background, by lease_id: a renewal by hand tells their keeper.
        self._renewing: dict[str, AsyncLeaseContext] = {}

    @property
    def requests_sent(self) -> int:
        """HTTP requests this client has sent (a batch counts once)."""
        return self._transport.requests_sent

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Release the leases this client still renews, briefly, then close the pooled
        connections.

        A renewer left running would reopen a connection and keep its lease alive for as long
        as the loop runs. A release that fails leaves its lease to expire by its TTL.
        """
        for context in list(self._renewing.values()):
            await context._release(briefly=True)
        await self._transport.close()

    async def run(self, call: Call[T], *, timeouts: Timeouts | None = None) -> T:
        """Send one call with retries (decided by `_core.Attempts`); every public method ends here."""
        loop = asyncio.get_running_loop()
        attempts = _core.Attempts(call, self.retry, timeouts or self.timeouts, self._rng, loop.time())
        while True:
            send = attempts.send(loop.time())
            try:
                response = await self._send(send)
            except errors.TransportError as error:
                step: _core.Done[T] | _core.Sleep = attempts.failed(error, loop.time())
            else:
                step = attempts.answered(response, loop.time())
            if isinstance(step, _core.Done):
                return step.value
            await asyncio.sleep(step.seconds)

    async def _send(self, send: Send) -> Response:
        call = send.call
        if self._batcher is None or not call.batchable:
            return await self._transport.request(
                call.method, call.path, call.encoded_body(), send.timeout, send.connect_timeout
            )
        future = self._batcher.submit(send)
        # Our own deadline, not the batch's: it may carry calls that are allowed longer. A bare
        # timer, not asyncio.timeout(): that one's bookkeeping was a tenth of the client's CPU.
        expiry = asyncio.get_running_loop().call_later(send.timeout, _give_up, future, send)
        try:
            return await future
        finally:
            expiry.cancel()

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
        timeouts: Timeouts | None = None,
    ) -> AsyncLeaseContext:
        """`async with lg.lock("name", ttl=10) as lease:` — waits up to `wait` seconds, renews in the background.

        `on_lost(lease)` is called if renewal fails for good; with `cancel_on_loss` the guarded
        task is cancelled too and the `async with` raises LeaseLost. `timeouts` apply to the
        acquire and the release.
        """
        return AsyncLeaseContext(self, "lock", name, ttl=ttl, wait=wait, holder=holder, auto_renew=auto_renew,
                                 cancel_on_loss=cancel_on_loss, on_lost=on_lost, timeouts=timeouts)  # fmt: skip

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
        timeouts: Timeouts | None = None,
    ) -> AsyncLeaseContext:
        """`async with lg.semaphore("name", limit=4) as lease:` — `permits` of `limit`, else as `lock()`."""
        return AsyncLeaseContext(self, "semaphore", name, ttl=ttl, wait=wait, holder=holder, limit=limit,
                                 permits=permits, auto_renew=auto_renew, cancel_on_loss=cancel_on_loss,
                                 on_lost=on_lost, timeouts=timeouts)  # fmt: skip

    async def lock_status(self, name: str, *, kind: str = "lock", timeouts: Timeouts | None = None) -> LockStatus:
        """The state of a lock (or, with kind="semaphore", a semaphore), without changing it."""
        return await self.run(_core.status_call(self.namespace, kind, name), timeouts=timeouts)

    async def release(self, lease: Lease, *, timeouts: Timeouts | None = None) -> bool:
        """Release a lease and stop its renewal; False (not an error) if it had already expired or been released."""
        lease.releasing = True
        try:
            released = await self.run(_core.release_call(lease), timeouts=timeouts)
        except errors.NotOwner:
            released = False
        lease.released = True
        return released

    async def renew(self, lease: Lease, ttl: float | None = None, *, timeouts: Timeouts | None = None) -> None:
        """Extend a lease to `ttl` seconds from now (its own TTL by default); NotOwner if it is gone.

        A lease this client renews in the background (`lock()`, `semaphore()`) is then renewed
        on the new TTL's schedule, and a refusal here counts as its loss.
        """
        context = self._renewing.get(lease.lease_id)
        sent_at = time.monotonic()
        try:
            lease.ttl = await self.run(_core.renew_call(lease, ttl), timeouts=timeouts)
        except errors.LockgateError as error:
            _core.report_renewal_by_hand(context, lease, ttl, sent_at=sent_at, now=time.monotonic(), outcome=error)
            raise
        _core.report_renewal_by_hand(context, lease, ttl, sent_at=sent_at, now=time.monotonic(), outcome=lease.ttl)

    async def rate_limit(
        self,
        key: str,
        *,
        limit: int,
        per: float,
        cost: int = 1,
        burst: int | None = None,
        algorithm: str = "gcra",
        timeouts: Timeouts | None = None,
    ) -> RateLimitDecision:
        """Check and consume `cost` against `limit` per `per` seconds; cost=0 peeks."""
        call = _core.rate_limit_call(self.namespace, key, limit=limit, per=per, cost=cost, burst=burst,
                                     algorithm=algorithm)  # fmt: skip
        return await self.run(call, timeouts=timeouts)

    async def reset_rate_limit(self, key: str, *, timeouts: Timeouts | None = None) -> None:
        """Forget what `key` has consumed: it is full again."""
        await self.run(_core.rate_limit_reset_call(self.namespace, key), timeouts=timeouts)

    def counter(self, name: str) -> AsyncCounter:
        """A handle on the counter `name` (nothing is sent until you call a method)."""
        return AsyncCounter(self, name)

    async def fence_check(self, name: str, token: int, *, kind: str = "lock", timeouts: Timeouts | None = None) -> bool:
        """Is `token` the current fencing token of the lock (or a live semaphore lease)?"""
        return await self.run(_core.fence_check_call(self.namespace, kind, name, token), timeouts=timeouts)


class AsyncCounter:
    """A durable integer counter; every change is applied exactly once, even when retried."""

    def __init__(self, client: AsyncClient, name: str) -> None:
        self._client = client
        self.name = name

    async def get(self, *, timeouts: Timeouts | None = None) -> int:
        """The current value (0 for a counter never written)."""
        return await self._client.run(_core.counter_get_call(self._client.namespace, self.name), timeouts=timeouts)

    async def add(
        self,
        delta: int = 1,
        *,
        minimum: int | None = None,
        maximum: int | None = None,
        timeouts: Timeouts | None = None,
    ) -> int:
        """Add `delta` and return the new value; Conflict if it would leave [minimum, maximum]."""
        call = _core.counter_add_call(self._client.namespace, self.name, delta, minimum=minimum, maximum=maximum)
        return await self._client.run(call, timeouts=timeouts)

    async def set(self, value: int, *, timeouts: Timeouts | None = None) -> int:
        """Set the value; returns it."""
        call = _core.counter_set_call(self._client.namespace, self.name, value)
        return await self._client.run(call, timeouts=timeouts)

    async def compare_and_set(self, expected: int, value: int, *, timeouts: Timeouts | None = None) -> CompareAndSet:
        """Set `value` only if the counter holds `expected`; says whether it swapped, and the value now."""
        call = _core.counter_cas_call(self._client.namespace, self.name, expected, value)
        return await self._client.run(call, timeouts=timeouts)


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
        timeouts: Timeouts | None = None,
    ) -> None:
        self._client = client
        # A fresh call (and request_id) per acquire: re-entering must not replay an old grant.
        self._new_call = functools.partial(_core.acquire_call, client.namespace, kind, name, ttl=ttl, wait=wait,
                                           limit=limit, permits=permits, holder=holder)  # fmt: skip
        self._auto_renew = auto_renew
        self._cancel_on_loss = cancel_on_loss
        self._on_lost = on_lost
        self._timeouts = timeouts
        self._renewer: asyncio.Task[None] | None = None
        self._keeper: LeaseKeeper | None = None
        self._rescheduled = asyncio.Event()  # a renewal by hand changed the keeper's schedule
        self._guarded: asyncio.Task[Any] | None = None
        self._cancelled_by_us = False
        self.lease: Lease | None = None

    async def acquire(self) -> Lease:
        """Acquire without the context manager; the same request_id is reused on every retry."""
        if self.lease is not None and not self.lease.released:
            raise RuntimeError("this lease is still held: release it before acquiring again")
        self._cancelled_by_us = False
        sent_at = time.monotonic()
        self.lease = await self._client.run(self._new_call(), timeouts=self._timeouts)
        if self._auto_renew:
            keeper = LeaseKeeper(self.lease, sent_at=sent_at, answered_at=time.monotonic(),
                                 timeouts=self._client.timeouts, on_lost=self._on_lost)  # fmt: skip
            self._keeper = keeper
            self._rescheduled = asyncio.Event()  # of this loop: a context may be used again under another
            self._client._renewing[self.lease.lease_id] = self
            self._renewer = asyncio.ensure_future(self._keep(keeper))
        return self.lease

    @contextlib.contextmanager
    def rescheduling(self) -> Iterator[LeaseKeeper | None]:
        """The keeper (None once released), to report a renewal sent by hand; the renewer then
        wakes to follow its new schedule."""
        yield self._keeper
        self._rescheduled.set()

    async def __aenter__(self) -> Lease:
        self._guarded = asyncio.current_task()
        return await self.acquire()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        cancelled: BaseException | None = exc if exc_type is asyncio.CancelledError else None
        try:
            await self.release()  # after a loss: brief, and never raises a LockgateError
        except asyncio.CancelledError as late:
            if not self._cancelled_by_us:
                raise
            cancelled = late  # our cancel landed after the block ended, during the release
        if self._cancelled_by_us and cancelled is not None and self._guarded is not None:
            # Take back the cancel we made, as asyncio.timeout does; one from elsewhere still stands.
            if self._guarded.uncancel() == 0:
                raise errors.LeaseLost("the lease was lost; the guarded block was cancelled") from cancelled
            raise cancelled

    async def release(self) -> None:
        """Stop renewing and release. A lost lease is released briefly, and never raises."""
        await self._release(briefly=False)

    async def _release(self, *, briefly: bool) -> None:
        """`briefly`: a closing client releases as a courtesy, never raising; what is not
        released in time expires by its TTL."""
        if self._renewer is not None:
            self._renewer.cancel()
            # asyncio.wait, not `await self._renewer` under suppress(CancelledError): that would
            # also swallow a cancel of this task landing meanwhile, and the task would run on.
            # Cancelled here, the lease is left to its TTL, as when a cancel lands in the release.
            await asyncio.wait([self._renewer])
            self._renewer = None
        lease = self.lease
        if lease is not None and self._client._renewing.get(lease.lease_id) is self:
            del self._client._renewing[lease.lease_id]
        self._keeper = None
        if lease is None or lease.released:
            return
        if not lease.lost and not briefly:
            await self._client.release(lease, timeouts=self._timeouts)
            return
        # Known lost (the server may be away, that may be why) or the client is closing.
        timeouts = _core.release_timeouts_after_loss(self._timeouts or self._client.timeouts)
        with contextlib.suppress(errors.LockgateError):
            await self._client.release(lease, timeouts=timeouts)

    async def _keep(self, keeper: LeaseKeeper) -> None:
        """Do what the keeper says: sleep, renew, or stop (cancelling the guarded task on loss if asked)."""
        while True:
            step = keeper.next(time.monotonic())
            if isinstance(step, _core.Wait):
                self._rescheduled.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(step.seconds):
                        await self._rescheduled.wait()
            elif isinstance(step, _core.Renew):
                try:
                    ttl = await self._client.run(_core.renew_call(keeper.lease), timeouts=step.timeouts)
                except Exception as error:  # any failure is one failed attempt: the renewer must not die of it
                    keeper.renewal_failed(error, time.monotonic())
                else:
                    keeper.renewed(ttl, time.monotonic())
            else:
                if step.lost and self._cancel_on_loss and self._guarded is not None and not self._guarded.done():
                    self._cancelled_by_us = True
                    self._guarded.cancel()
                return
