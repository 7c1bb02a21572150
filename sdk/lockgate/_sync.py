"""Client: the blocking shell around the core (http.client keep-alive pool, renewal threads)."""

from __future__ import annotations

import functools
import http.client
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TypeVar
from urllib.parse import urlsplit

from . import _core, errors
from ._core import Call, Lease, LeaseKeeper, Response, RetryPolicy, Send, Sleep, Timeouts

T = TypeVar("T")


class SyncTransport:
    """A thread-safe pool of keep-alive http.client connections."""

    def __init__(self, base_url: str, api_key: str | None, timeouts: Timeouts, node: int = 0) -> None:
        self.node = node
        parts = urlsplit(base_url)
        if parts.scheme != "http":
            raise ValueError("only http:// URLs are supported (put TLS in front with a sidecar)")
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 80
        self._headers = {"Content-Type": _core.MSGPACK, "Accept": _core.MSGPACK}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeouts = timeouts
        self._idle: queue.LifoQueue[http.client.HTTPConnection] = queue.LifoQueue()
        self._count_lock = threading.Lock()
        self.requests_sent = 0

    def request(self, method: str, path: str, body: bytes, read_timeout: float) -> Response:
        """One request; connecting counts against `read_timeout` (the attempt's budget) too."""
        try:
            connection = self._idle.get_nowait()
        except queue.Empty:
            connection = http.client.HTTPConnection(self._host, self._port)
        try:
            if connection.sock is None:
                connection.timeout = min(self._timeouts.connect, read_timeout)
                connection.connect()
            assert connection.sock is not None
            connection.sock.settimeout(read_timeout)
            connection.request(method, path, body=body, headers=self._headers)
            with self._count_lock:
                self.requests_sent += 1
            answer = connection.getresponse()
            data = answer.read()
        except (TimeoutError, OSError, http.client.HTTPException) as error:
            connection.close()
            raise errors.TransportError(f"{method} {path}: {error!r}") from error
        if answer.will_close:
            connection.close()
        else:
            self._idle.put(connection)
        relayed = answer.getheader(_core.RELAYED_BY) is not None
        return Response(answer.status, _core.decode_body(data), self.node, relayed)

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


class SyncNodes:
    """Transports to every node of a deployment, used one at a time (see `_core.Nodes`)."""

    def __init__(self, urls: list[str], api_key: str | None, timeouts: Timeouts) -> None:
        self._transports = [SyncTransport(url, api_key, timeouts, node) for node, url in enumerate(urls)]
        self._nodes = _core.Nodes(len(urls))

    @property
    def requests_sent(self) -> int:
        return sum(transport.requests_sent for transport in self._transports)

    def request(self, method: str, path: str, body: bytes, read_timeout: float) -> Response:
        index = self._nodes.current
        try:
            return self._nodes.answered(self._transports[index].request(method, path, body, read_timeout))
        except errors.TransportError:
            self._nodes.move_on(index)
            raise

    def failed(self, node: int) -> None:
        """`node` answered 503 (the whole request or one op of a batch): try the next one."""
        self._nodes.move_on(node)

    def close(self) -> None:
        for transport in self._transports:
            transport.close()


class Client:
    """Blocking Lockgate client; safe to share between threads."""

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
        self._transport = SyncNodes(_core.node_urls(url), api_key, self.timeouts)
        self._rng = random.Random()

    @property
    def requests_sent(self) -> int:
        return self._transport.requests_sent

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._transport.close()

    def run(self, call: Call[T], *, timeouts: Timeouts | None = None) -> T:
        """Send one call with retries; every public method ends here."""
        timeouts = timeouts or self.timeouts
        deadline = time.monotonic() + timeouts.total
        steps = _core.drive(call, self.retry, timeouts, self._rng)
        action = next(steps)
        try:
            while True:
                if isinstance(action, Sleep):
                    time.sleep(min(action.seconds, max(0.0, deadline - time.monotonic())))
                    action = steps.send(None)
                    continue
                assert isinstance(action, Send)
                try:
                    read_timeout = _core.time_left(action.read_timeout, deadline, time.monotonic())
                    call_now = action.call
                    response = self._transport.request(
                        call_now.method, call_now.path, call_now.encoded_body(), read_timeout
                    )
                except errors.TransportError as error:
                    action = steps.throw(error)
                    continue
                if response.status == 503:
                    self._transport.failed(response.node)
                action = steps.send(response)
        except StopIteration as finished:
            return finished.value  # type: ignore[no-any-return]

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
    ) -> LeaseContext:
        """`with lg.lock("name", ttl=10) as lease:` — waits up to `wait` seconds, renews in the background."""
        return LeaseContext(self, "lock", name, ttl=ttl, wait=wait, holder=holder, auto_renew=auto_renew,
                            on_lost=on_lost)  # fmt: skip

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
    ) -> LeaseContext:
        return LeaseContext(self, "semaphore", name, ttl=ttl, wait=wait, holder=holder, limit=limit,
                            permits=permits, auto_renew=auto_renew, on_lost=on_lost)  # fmt: skip

    def lock_status(self, name: str, *, kind: str = "lock") -> _core.LockStatus:
        return self.run(_core.status_call(self.namespace, kind, name))

    def release(self, lease: Lease) -> bool:
        """Release a lease; False (not an error) if it had already expired or been released."""
        try:
            released = self.run(_core.release_call(lease))
        except errors.NotOwner:
            released = False
        lease.released = True
        return released

    def renew(self, lease: Lease, ttl: float | None = None, *, timeouts: Timeouts | None = None) -> None:
        lease.ttl = self.run(_core.renew_call(lease, ttl), timeouts=timeouts)

    def rate_limit(
        self, key: str, *, limit: int, per: float, cost: int = 1, burst: int | None = None, algorithm: str = "gcra"
    ) -> _core.RateLimitDecision:
        """Check and consume `cost` against `limit` per `per` seconds; cost=0 peeks."""
        call = _core.rate_limit_call(self.namespace, key, limit=limit, per=per, cost=cost, burst=burst,
                                     algorithm=algorithm)  # fmt: skip
        return self.run(call)

    def reset_rate_limit(self, key: str) -> None:
        self.run(_core.rate_limit_reset_call(self.namespace, key))

    def counter(self, name: str) -> Counter:
        return Counter(self, name)

    def fence_check(self, name: str, token: int, *, kind: str = "lock") -> bool:
        """Is `token` the current fencing token of the lock (or a live semaphore lease)?"""
        return self.run(_core.fence_check_call(self.namespace, kind, name, token))


class Counter:
    def __init__(self, client: Client, name: str) -> None:
        self._client = client
        self.name = name

    def get(self) -> int:
        return self._client.run(_core.counter_get_call(self._client.namespace, self.name))

    def add(self, delta: int = 1, *, minimum: int | None = None, maximum: int | None = None) -> int:
        call = _core.counter_add_call(self._client.namespace, self.name, delta, minimum=minimum, maximum=maximum)
        return self._client.run(call)

    def set(self, value: int) -> int:
        return self._client.run(_core.counter_set_call(self._client.namespace, self.name, value))

    def compare_and_set(self, expected: int, value: int) -> _core.CompareAndSet:
        return self._client.run(_core.counter_cas_call(self._client.namespace, self.name, expected, value))


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
    ) -> None:
        self._client = client
        # A fresh call (and request_id) per acquire: re-entering must not replay an old grant.
        self._new_call = functools.partial(_core.acquire_call, client.namespace, kind, name, ttl=ttl, wait=wait,
                                           limit=limit, permits=permits, holder=holder)  # fmt: skip
        self._auto_renew = auto_renew
        self._on_lost = on_lost
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self.lease: Lease | None = None

    def acquire(self) -> Lease:
        """Acquire without the context manager; the same request_id is reused on every retry."""
        if self.lease is not None and not self.lease.released:
            raise RuntimeError("this lease is still held: release it before acquiring again")
        self._stop = threading.Event()
        sent_at = time.monotonic()
        self.lease = self._client.run(self._new_call())
        if self._auto_renew:
            keeper = LeaseKeeper(self.lease, confirmed_at=sent_at, on_lost=self._on_lost)
            self._renewer = threading.Thread(target=self._keep, args=(keeper,), daemon=True, name="lockgate-renew")
            self._renewer.start()
        return self.lease

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.release()

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
            self._renewer = None
        if self.lease is not None and not self.lease.released:
            self._client.release(self.lease)

    def _keep(self, keeper: LeaseKeeper) -> None:
        lease = keeper.lease
        while not self._stop.wait(keeper.next_delay(time.monotonic())):
            sent_at = time.monotonic()
            try:
                self._client.renew(lease, timeouts=keeper.renewal_timeouts(self._client.timeouts, sent_at))
            except errors.LockgateError as error:
                if keeper.failed(error, time.monotonic()):
                    return
                if self._stop.wait(keeper.retry_delay()):
                    return
                continue
            keeper.renewed(sent_at)


__all__ = ["Client", "Counter", "LeaseContext"]
