"""Client: the blocking shell around the core (http.client keep-alive pool, renewal threads)."""

from __future__ import annotations

import contextlib
import functools
import http.client
import queue
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

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

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

T = TypeVar("T")


class SyncTransport:
    """A thread-safe pool of keep-alive http.client connections."""

    def __init__(self, base_url: str, api_key: str | None, node: int = 0) -> None:
        self.node = node
        self._address = _core.node_address(base_url)
        self._host = self._address.host
        self._port = self._address.port
        # Host as the async client sends it (http.client would build the same from host and port).
        self._headers = {"Host": self._address.host_header, "Content-Type": _core.MSGPACK, "Accept": _core.MSGPACK}
        api_key = _core.checked_api_key(api_key)
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._idle: queue.LifoQueue[_Connection] = queue.LifoQueue()
        self._count_lock = threading.Lock()
        self.requests_sent = 0

    def request(self, method: str, path: str, body: bytes, timeout: float, connect_timeout: float) -> Response:
        """One request; `timeout` bounds all of it (connecting, sending, every read of the answer)."""
        deadline = time.monotonic() + timeout
        while True:  # ends: every stale connection is taken out of the pool, then a fresh one is opened
            connection = self._checkout()
            reused = connection is not None
            if connection is None:
                connection = _Connection(self._host, self._port)
            try:
                return self._exchange(connection, method, path, body, deadline, connect_timeout, reused)
            except _StaleConnection:
                continue  # not an attempt: the same request (and request_id) on another connection

    def _checkout(self) -> _Connection | None:
        while True:
            try:
                connection = self._idle.get_nowait()
            except queue.Empty:
                return None
            if not _is_stale(connection):
                return connection
            connection.close()

    def _exchange(
        self,
        connection: _Connection,
        method: str,
        path: str,
        body: bytes,
        deadline: float,
        connect_timeout: float,
        reused: bool,
    ) -> Response:
        answer_started = False
        try:
            if connection.sock is None:
                connection.timeout = min(connect_timeout, _time_left(deadline))
                connection.connect()
            sock = connection.sock  # http.client lets go of it early when the answer closes the connection
            assert isinstance(sock, _DeadlineSocket)
            sock.deadline = deadline
            connection.request(method, self._address.target(path), body=body, headers=self._headers)
            with self._count_lock:
                self.requests_sent += 1
            answer = connection.getresponse()
            answer_started = True
            if answer.length is not None:  # a Content-Length: refused before a byte of the body is read
                _core.check_response_length(answer.length)
                data = answer.read()  # whole, or IncompleteRead (read(amt) would hide a short body)
            else:  # chunked, or until the server closes: read one byte past the bound at most
                data = answer.read(_core.RESPONSE_BYTES_MAX + 1)
                _core.check_response_length(len(data))
            sock.deadline = None  # idle in the pool: no attempt's deadline applies
        except (TimeoutError, OSError, http.client.HTTPException) as error:
            connection.close()
            # Closed or reset before the head of an answer (RemoteDisconnected is a ConnectionResetError).
            nothing_came = isinstance(error, _CLOSED_ERRORS)
            if reused and not answer_started and nothing_came:
                raise _StaleConnection from error
            raise errors.TransportError(f"{method} {path}: {error!r}") from error
        except errors.LockgateError:
            connection.close()  # an answer refused unread (too long): what is left of it is never read
            raise
        if answer.will_close:
            connection.close()
        else:
            self._idle.put(connection)
        relayed = answer.getheader(_core.RELAYED_BY) is not None
        content_type = answer.getheader("content-type") or _core.MSGPACK
        return Response(answer.status, _core.decode_body(data, content_type), self.node, relayed)

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


class _DeadlineSocket(socket.socket):
    """A socket whose every send and receive is bounded by what is left of one deadline.

    A plain socket timeout bounds each recv on its own: a server trickling a byte at a time
    would keep an attempt going for as long as it liked. http.client reads the answer through
    `makefile()`, which calls our `recv_into`, so the whole answer is bounded by the deadline.
    """

    deadline: float | None = None  # monotonic; None while idle in the pool

    def _bound(self) -> None:
        if self.deadline is not None:
            self.settimeout(_time_left(self.deadline))

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        self._bound()
        return super().recv(bufsize, flags)

    def recv_into(self, buffer: WriteableBuffer, nbytes: int = 0, flags: int = 0) -> int:
        self._bound()
        return super().recv_into(buffer, nbytes, flags)

    def sendall(self, data: ReadableBuffer, flags: int = 0) -> None:
        self._bound()
        super().sendall(data, flags)


class _Answer(http.client.HTTPResponse):
    """http.client's answer, skipping every 1xx interim answer, not only 100 Continue.

    http.client takes a 103 Early Hints (which a proxy or CDN may send) for the final answer,
    with no body, and leaves the real one unread. RFC 9110 §15.2: a client must skip them.
    """

    def _read_status(self) -> tuple[str, int, str]:
        for _ in range(_core.INTERIM_ANSWERS_MAX):
            version, status, reason = super()._read_status()  # type: ignore[misc]
            if status == 100 or not 100 <= status < 200:  # begin() skips a 100 itself
                return version, status, reason
            http.client.parse_headers(self.fp)  # the interim answer's headers: dropped
        raise http.client.HTTPException(f"more than {_core.INTERIM_ANSWERS_MAX} interim (1xx) answers")


class _Connection(http.client.HTTPConnection):
    """An http.client connection on a `_DeadlineSocket`."""

    response_class = _Answer

    def connect(self) -> None:
        super().connect()  # bounded by self.timeout
        plain = self.sock
        assert isinstance(plain, socket.socket)
        timeout = plain.gettimeout()
        wrapped = _DeadlineSocket(fileno=plain.detach())
        wrapped.settimeout(timeout)  # a socket made from a file descriptor starts out without one
        self.sock = wrapped


def _time_left(deadline: float) -> float:
    """Seconds until `deadline`, for a socket timeout; TimeoutError once it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the attempt's timeout passed")
    return left


class _StaleConnection(Exception):
    """A reused connection failed before any byte of the answer: the server had closed it."""


_CLOSED_ERRORS = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


def _is_stale(connection: _Connection) -> bool:
    """Closed by the server while idle (its keep-alive timeout, a restart), or holding bytes nobody
    asked for: an idle socket that is readable is one of those."""
    sock = connection.sock
    if sock is None:
        return False
    timeout = sock.gettimeout()
    try:
        sock.settimeout(0)  # a peek that never blocks
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return False  # nothing to read: open and quiet, as an idle connection should be
    except OSError:
        return True
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(timeout)
    return True  # EOF, or stray bytes


class SyncNodes:
    """Transports to every node of a deployment, used one at a time (see `_core.Nodes`)."""

    def __init__(self, urls: list[str], api_key: str | None) -> None:
        self._transports = [SyncTransport(url, api_key, node) for node, url in enumerate(urls)]
        self._nodes = _core.Nodes(len(urls))

    @property
    def requests_sent(self) -> int:
        return sum(transport.requests_sent for transport in self._transports)

    def request(self, send: Send) -> Response:
        index = self._nodes.current
        call = send.call
        try:
            answer = self._transports[index].request(
                call.method, call.path, call.encoded_body(), send.timeout, send.connect_timeout
            )
        except errors.TransportError:
            self._nodes.move_on(index)
            raise
        return self._nodes.answered(answer)

    def close(self) -> None:
        for transport in self._transports:
            transport.close()


class Client:
    """Blocking Lockgate client; safe to share between threads.

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
    ) -> None:
        """`url`: a node, or every node of a deployment (a list, or comma-separated): the client
        talks to one and moves to the next when it cannot connect or gets a 503."""
        self.namespace = namespace
        self.timeouts = timeouts or Timeouts()
        self.retry = retry or RetryPolicy()
        self._transport = SyncNodes(_core.node_urls(url), api_key)
        self._rng = random.Random()
        # The leases this client renews in the background, by lease_id: a renewal by hand tells their keeper.
        self._renewing: dict[str, LeaseContext] = {}

    @property
    def requests_sent(self) -> int:
        """HTTP requests this client has sent."""
        return self._transport.requests_sent

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the leases this client still renews, briefly, then close the pooled
        connections.

        A renewer left running would reopen a connection and keep its lease alive for as long
        as the process lives. A release that fails leaves its lease to expire by its TTL.
        """
        for context in list(self._renewing.values()):
            context._release(briefly=True)
        self._transport.close()

    def run(self, call: Call[T], *, timeouts: Timeouts | None = None) -> T:
        """Send one call with retries (decided by `_core.Attempts`); every public method ends here."""
        attempts = _core.Attempts(call, self.retry, timeouts or self.timeouts, self._rng, time.monotonic())
        while True:
            send = attempts.send(time.monotonic())
            try:
                response = self._transport.request(send)
            except errors.TransportError as error:
                step: _core.Done[T] | _core.Sleep = attempts.failed(error, time.monotonic())
            else:
                step = attempts.answered(response, time.monotonic())
            if isinstance(step, _core.Done):
                return step.value
            time.sleep(step.seconds)

    # --- the API -----------------------------------------------------------------------------
    def lock(
        self,
        name: str,
        *,
        ttl: float = 30.0,
        wait: float = 10.0,
        holder: str | None = None,
        auto_renew: bool = True,
        on_lost: Callable[[Lease], None] | None = None,
        timeouts: Timeouts | None = None,
    ) -> LeaseContext:
        """`with lg.lock("name", ttl=10) as lease:` — waits up to `wait` seconds, renews in the background.

        `on_lost(lease)` is called (from the renewal thread) if renewal fails for good.
        `timeouts` apply to the acquire and the release.
        """
        return LeaseContext(self, "lock", name, ttl=ttl, wait=wait, holder=holder, auto_renew=auto_renew,
                            on_lost=on_lost, timeouts=timeouts)  # fmt: skip

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
        on_lost: Callable[[Lease], None] | None = None,
        timeouts: Timeouts | None = None,
    ) -> LeaseContext:
        """`with lg.semaphore("name", limit=4) as lease:` — `permits` of `limit`, else as `lock()`."""
        return LeaseContext(self, "semaphore", name, ttl=ttl, wait=wait, holder=holder, limit=limit,
                            permits=permits, auto_renew=auto_renew, on_lost=on_lost, timeouts=timeouts)  # fmt: skip

    def lock_status(self, name: str, *, kind: str = "lock", timeouts: Timeouts | None = None) -> LockStatus:
        """The state of a lock (or, with kind="semaphore", a semaphore), without changing it."""
        return self.run(_core.status_call(self.namespace, kind, name), timeouts=timeouts)

    def release(self, lease: Lease, *, timeouts: Timeouts | None = None) -> bool:
        """Release a lease and stop its renewal; False (not an error) if it had already expired or been released."""
        lease.releasing = True
        try:
            released = self.run(_core.release_call(lease), timeouts=timeouts)
        except errors.NotOwner:
            released = False
        lease.released = True
        return released

    def renew(self, lease: Lease, ttl: float | None = None, *, timeouts: Timeouts | None = None) -> None:
        """Extend a lease to `ttl` seconds from now (its own TTL by default); NotOwner if it is gone.

        A lease this client renews in the background (`lock()`, `semaphore()`) is then renewed
        on the new TTL's schedule, and a refusal here counts as its loss.
        """
        context = self._renewing.get(lease.lease_id)
        sent_at = time.monotonic()
        try:
            lease.ttl = self.run(_core.renew_call(lease, ttl), timeouts=timeouts)
        except errors.LockgateError as error:
            _core.report_renewal_by_hand(context, lease, ttl, sent_at=sent_at, now=time.monotonic(), outcome=error)
            raise
        _core.report_renewal_by_hand(context, lease, ttl, sent_at=sent_at, now=time.monotonic(), outcome=lease.ttl)

    def rate_limit(
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
        return self.run(call, timeouts=timeouts)

    def reset_rate_limit(self, key: str, *, timeouts: Timeouts | None = None) -> None:
        """Forget what `key` has consumed: it is full again."""
        self.run(_core.rate_limit_reset_call(self.namespace, key), timeouts=timeouts)

    def counter(self, name: str) -> Counter:
        """A handle on the counter `name` (nothing is sent until you call a method)."""
        return Counter(self, name)

    def fence_check(self, name: str, token: int, *, kind: str = "lock", timeouts: Timeouts | None = None) -> bool:
        """Is `token` the current fencing token of the lock (or a live semaphore lease)?"""
        return self.run(_core.fence_check_call(self.namespace, kind, name, token), timeouts=timeouts)


class Counter:
    """A durable integer counter; every change is applied exactly once, even when retried."""

    def __init__(self, client: Client, name: str) -> None:
        self._client = client
        self.name = name

    def get(self, *, timeouts: Timeouts | None = None) -> int:
        """The current value (0 for a counter never written)."""
        return self._client.run(_core.counter_get_call(self._client.namespace, self.name), timeouts=timeouts)

    def add(
        self,
        delta: int = 1,
        *,
        minimum: int | None = None,
        maximum: int | None = None,
        timeouts: Timeouts | None = None,
    ) -> int:
        """Add `delta` and return the new value; Conflict if it would leave [minimum, maximum]."""
        call = _core.counter_add_call(self._client.namespace, self.name, delta, minimum=minimum, maximum=maximum)
        return self._client.run(call, timeouts=timeouts)

    def set(self, value: int, *, timeouts: Timeouts | None = None) -> int:
        """Set the value; returns it."""
        return self._client.run(_core.counter_set_call(self._client.namespace, self.name, value), timeouts=timeouts)

    def compare_and_set(self, expected: int, value: int, *, timeouts: Timeouts | None = None) -> CompareAndSet:
        """Set `value` only if the counter holds `expected`; says whether it swapped, and the value now."""
        call = _core.counter_cas_call(self._client.namespace, self.name, expected, value)
        return self._client.run(call, timeouts=timeouts)


class LeaseContext:
    """Acquire on enter, renew from a background thread while inside, release on exit."""

    def __init__(
        self,
        client: Client,
        kind: str,
        name: str,
        *,
        ttl: float,
        wait: float,
        holder: str | None,
        limit: int = 1,
        permits: int = 1,
        auto_renew: bool = True,
        on_lost: Callable[[Lease], None] | None = None,
        timeouts: Timeouts | None = None,
    ) -> None:
        self._client = client
        # A fresh call (and request_id) per acquire: re-entering must not replay an old grant.
        self._new_call = functools.partial(_core.acquire_call, client.namespace, kind, name, ttl=ttl, wait=wait,
                                           limit=limit, permits=permits, holder=holder)  # fmt: skip
        self._auto_renew = auto_renew
        self._on_lost = on_lost
        self._timeouts = timeouts
        self._stop = threading.Event()
        self._rescheduled = threading.Event()  # a renewal by hand changed the keeper's schedule
        # The keeper is used by the renewal thread and by renewals by hand from the caller's
        # threads; reentrant, for an on_lost callback that renews or releases.
        self._keeper_lock = threading.RLock()
        self._keeper: LeaseKeeper | None = None
        self._renewer: threading.Thread | None = None
        self.lease: Lease | None = None

    def acquire(self) -> Lease:
        """Acquire without the context manager; the same request_id is reused on every retry."""
        if self.lease is not None and not self.lease.released:
            raise RuntimeError("this lease is still held: release it before acquiring again")
        self._stop = threading.Event()
        sent_at = time.monotonic()
        self.lease = self._client.run(self._new_call(), timeouts=self._timeouts)
        if self._auto_renew:
            keeper = LeaseKeeper(self.lease, sent_at=sent_at, answered_at=time.monotonic(),
                                 timeouts=self._client.timeouts, on_lost=self._on_lost)  # fmt: skip
            self._keeper = keeper
            self._client._renewing[self.lease.lease_id] = self
            self._renewer = threading.Thread(target=self._keep, args=(keeper,), daemon=True, name="lockgate-renew")
            self._renewer.start()
        return self.lease

    @contextlib.contextmanager
    def rescheduling(self) -> Iterator[LeaseKeeper | None]:
        """The keeper (None once released), under its lock, to report a renewal sent by hand;
        the renewer then wakes to follow its new schedule."""
        with self._keeper_lock:
            yield self._keeper
        self._rescheduled.set()

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.release()

    def release(self) -> None:
        """Stop renewing and release. A lost lease is released briefly, and never raises."""
        self._release(briefly=False)

    def _release(self, *, briefly: bool) -> None:
        """`briefly`: a closing client releases as a courtesy, never raising; what is not
        released in time expires by its TTL."""
        self._stop.set()
        self._rescheduled.set()
        if self._renewer is not None:
            self._renewer.join()
            self._renewer = None
        lease = self.lease
        if lease is not None and self._client._renewing.get(lease.lease_id) is self:
            del self._client._renewing[lease.lease_id]
        with self._keeper_lock:
            self._keeper = None
        if lease is None or lease.released:
            return
        if not lease.lost and not briefly:
            self._client.release(lease, timeouts=self._timeouts)
            return
        # Known lost (the server may be away, that may be why) or the client is closing.
        timeouts = _core.release_timeouts_after_loss(self._timeouts or self._client.timeouts)
        with contextlib.suppress(errors.LockgateError):
            self._client.release(lease, timeouts=timeouts)

    def _keep(self, keeper: LeaseKeeper) -> None:
        """Do what the keeper says: sleep (unless stopped), renew, or stop."""
        while True:
            # Cleared before `_stop` and the schedule are read: a stop or a renewal by hand after
            # that sets it again, and the wait below ends at once.
            self._rescheduled.clear()
            if self._stop.is_set():
                return
            with self._keeper_lock:
                step = keeper.next(time.monotonic())
            if isinstance(step, _core.Wait):
                self._rescheduled.wait(step.seconds)
            elif isinstance(step, _core.Renew):
                try:
                    ttl = self._client.run(_core.renew_call(keeper.lease), timeouts=step.timeouts)
                except Exception as error:  # any failure is one failed attempt: the renewer must not die of it
                    with self._keeper_lock:
                        keeper.renewal_failed(error, time.monotonic())
                else:
                    with self._keeper_lock:
                        keeper.renewed(ttl, time.monotonic())
            else:
                return


__all__ = ["Client", "Counter", "LeaseContext"]
