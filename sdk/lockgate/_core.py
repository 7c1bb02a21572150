"""The I/O-free core shared by the sync and async clients.

It builds requests, parses answers into results or typed errors, and decides retries and
renewals. The shells only move bytes and sleep: `drive()` is a generator that yields
`Send` and `Sleep` actions and receives the answers, so the retry logic exists once.
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import msgspec

from . import errors

T = TypeVar("T")

MSGPACK = "application/msgpack"
RELAYED_BY = "lockgate-forwarded-by"
"""Set on an answer that a standby relayed from the active node."""
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()

# Problem `type` URIs the server answers with, mapped to our exception classes.
PROBLEM_TYPES: dict[str, type[errors.LockgateError]] = {
    "held": errors.LockHeld,
    "not-owner": errors.NotOwner,
    "conflict": errors.Conflict,
    "invalid-request": errors.InvalidRequest,
    "malformed": errors.InvalidRequest,
    "not-found": errors.NotFound,
    "method-not-allowed": errors.InvalidRequest,
    "unauthorized": errors.Unauthorized,
    "forbidden": errors.Forbidden,
    "too-large": errors.PayloadTooLarge,
    "unavailable": errors.Unavailable,
    "outcome-unknown": errors.OutcomeUnknown,
}


# --- results ----------------------------------------------------------------------------------
@dataclass
class Lease:
    """A held lock or semaphore lease. `token` is its fencing token: pass it to what you write."""

    namespace: str
    kind: str
    name: str
    lease_id: str
    token: int
    ttl: float  # seconds
    permits: int = 1
    lost: bool = False
    released: bool = False


@dataclass(frozen=True)
class RateLimitDecision:
    allowed: bool
    limit: int
    remaining: int
    reset_after: float  # seconds until the key is full again
    retry_after: float  # seconds until the same request would be allowed (0 when allowed)

    def __bool__(self) -> bool:
        return self.allowed


@dataclass(frozen=True)
class LockStatus:
    held: bool
    holder: str | None
    token: int | None
    remaining: float | None  # seconds
    waiters: int
    limit: int
    permits_used: int


@dataclass(frozen=True)
class CompareAndSet:
    swapped: bool
    value: int


# --- timeouts and retries -----------------------------------------------------------------------
@dataclass(frozen=True)
class Timeouts:
    """Every wait is finite. `read` is per answer; a blocking acquire adds its wait to it."""

    connect: float = 2.0
    read: float = 10.0
    total: float = 30.0


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, for 503s and connection errors only.

    The defaults keep retrying for about 13 s on average (never past `Timeouts.total`):
    long enough to ride out a node's restart, which waits out its old leases (3 s), or a
    failover to a standby. A caller that would rather fail fast passes fewer attempts.
    """

    attempts: int = 30
    base_delay: float = 0.05
    max_delay: float = 1.0

    def delay(self, attempt: int, error: errors.LockgateError, rng: random.Random) -> float:
        ceiling = min(self.max_delay, self.base_delay * (2**attempt))
        jittered = rng.uniform(0, ceiling)
        if error.retry_after is not None:
            return max(jittered, min(error.retry_after, self.max_delay))
        return jittered


# --- nodes ------------------------------------------------------------------------------------------
def node_urls(url: str | Sequence[str]) -> list[str]:
    """The nodes of one deployment: one URL, a comma-separated list, or a sequence of URLs."""
    parts = url.split(",") if isinstance(url, str) else url
    urls = [part.strip() for part in parts if part.strip()]
    if not urls:
        raise ValueError("give at least one node URL")
    return urls


class Nodes:
    """Which of several nodes (an active one and its standbys) to send to.

    Stick with one while it answers; after a connection failure or a 503 (a node stopping, a
    store away, a standby with nowhere to relay), of a whole request or of one op in a batch,
    move on to the next, so the retry that follows tries another node. An answer a standby
    relayed from the active node is used, and the next call tries the next node too: that
    finds the active node, which saves the relay's extra hop.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self.current = 0

    def move_on(self, index: int) -> None:
        """`index` failed, or is a standby that relayed our request: the next call tries the next."""
        if index == self.current:  # concurrent failures of one node move on once
            self.current = (index + 1) % self.count

    def answered(self, response: Response) -> Response:
        """Use the answer; if a standby relayed it, the next call tries the next node."""
        if response.relayed:
            self.move_on(response.node)
        return response


# --- calls ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Call(Generic[T]):
    """One API operation: how to send it, how to read its answer, how to batch it."""

    method: str
    path: str
    body: dict[str, Any] | None
    parse: Callable[[dict[str, Any]], T]
    operation: str  # the batch op name, e.g. "locks.acquire"
    namespace: str
    name: str | None
    read_timeout_extra: float = 0.0  # a blocking acquire may legitimately take this long
    batchable: bool = True

    def encoded_body(self) -> bytes:
        return b"" if self.body is None else _encoder.encode(self.body)

    def batch_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"op": self.operation, "namespace": self.namespace}
        if self.name is not None:
            entry["name"] = self.name
        if self.body is not None:
            entry["args"] = msgspec.Raw(_encoder.encode(self.body))
        return entry


@dataclass(frozen=True)
class Response:
    status: int
    payload: Any  # decoded body
    node: int = 0  # which of the client's nodes answered
    relayed: bool = False  # a standby relayed the request to the active node


@dataclass(frozen=True)
class Send:
    call: Call[Any]
    read_timeout: float


@dataclass(frozen=True)
class Sleep:
    seconds: float


Action = Send | Sleep


def decode_body(data: bytes) -> Any:
    return _decoder.decode(data) if data else None


def encode_batch(calls: list[Call[Any]]) -> bytes:
    return _encoder.encode({"ops": [call.batch_entry() for call in calls]})


def split_batch(response: Response, count: int) -> list[Response]:
    """The batch answer, one Response per op, or the whole batch's error for each."""
    if response.status != 200:
        return [response] * count
    items = response.payload["results"]
    node = response.node
    return [
        Response(item["status"], item.get("body") if item["status"] == 200 else item.get("problem"), node)
        for item in items
    ]


def error_from(response: Response) -> errors.LockgateError:
    payload = response.payload if isinstance(response.payload, dict) else {}
    slug = str(payload.get("type", "")).rsplit("/", 1)[-1]
    error_type = PROBLEM_TYPES.get(slug)
    if error_type is None:
        error_type = errors.Unavailable if response.status >= 500 else errors.InvalidRequest
    retry_after_ms = payload.get("retry_after_ms")
    return error_type(
        str(payload.get("detail") or payload.get("title") or f"HTTP {response.status}"),
        status=response.status,
        retry_after=retry_after_ms / 1000 if isinstance(retry_after_ms, int) else None,
    )


def drive(
    call: Call[T], policy: RetryPolicy, timeouts: Timeouts, rng: random.Random
) -> Generator[Action, Response | None, T]:
    """The retry loop. Send `Send`'s answer back (or throw a TransportError into it)."""
    attempt = 0
    while True:
        try:
            response = yield Send(call, timeouts.read + call.read_timeout_extra)
            assert response is not None
            if response.status == 200:
                return call.parse(response.payload)
            error = error_from(response)
        except errors.TransportError as transport_error:
            error = transport_error
        attempt += 1
        if not error.retryable or attempt >= policy.attempts:
            raise error
        yield Sleep(policy.delay(attempt - 1, error, rng))


def time_left(read_timeout: float, deadline: float, now: float) -> float:
    """The read timeout for the next attempt, never past the call's total deadline."""
    left = deadline - now
    if left <= 0:
        raise errors.TransportError("the call's total timeout passed")
    return min(read_timeout, left)


def request_head(method: str, path: str, host: str, body_length: int, api_key: str | None) -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        f"Host: {host}",
        f"Content-Type: {MSGPACK}",
        f"Accept: {MSGPACK}",
        f"Content-Length: {body_length}",
    ]
    if api_key:
        lines.append(f"Authorization: Bearer {api_key}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# --- building calls ----------------------------------------------------------------------------------
class _RequestIds:
    """Unique request ids without a syscall each: 64 random bits per process and a counter.

    uuid4 reads os.urandom for every id, which was a quarter of the async client's CPU when
    profiled. A forked child draws new random bits, so two processes never share a sequence.
    """

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count()  # next() on it is atomic under the GIL: thread-safe

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):x}"


_request_ids = _RequestIds()
os.register_at_fork(after_in_child=_request_ids.reseed)


def new_request_id() -> str:
    return _request_ids.next()


def _object_path(namespace: str, collection: str, name: str) -> str:
    return f"/v1/namespaces/{quote(namespace, safe='')}/{collection}/{quote(name, safe='')}"


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def acquire_call(
    namespace: str,
    kind: str,
    name: str,
    *,
    ttl: float,
    wait: float,
    limit: int = 1,
    permits: int = 1,
    holder: str | None = None,
    request_id: str | None = None,
) -> Call[Lease]:
    collection = "locks" if kind == "lock" else "semaphores"
    body: dict[str, Any] = {"ttl_ms": _ms(ttl), "wait_ms": _ms(wait), "request_id": request_id or new_request_id()}
    if holder is not None:
        body["holder"] = holder
    if kind == "semaphore":
        body["limit"] = limit
        body["permits"] = permits

    def parse(payload: dict[str, Any]) -> Lease:
        return Lease(
            namespace=namespace,
            kind=kind,
            name=name,
            lease_id=payload["lease_id"],
            token=payload["token"],
            ttl=payload["ttl_ms"] / 1000,
            permits=payload["permits"],
        )

    return Call(
        "POST",
        _object_path(namespace, collection, name) + "/acquire",
        body,
        parse,
        f"{collection}.acquire",
        namespace,
        name,
        read_timeout_extra=wait,
        batchable=wait <= 0,  # a waiting acquire would hold up the whole batch
    )


def release_call(lease: Lease) -> Call[bool]:
    collection = "locks" if lease.kind == "lock" else "semaphores"
    body = {"lease_id": lease.lease_id, "request_id": new_request_id()}
    return Call(
        "POST",
        _object_path(lease.namespace, collection, lease.name) + "/release",
        body,
        lambda payload: bool(payload["released"]),
        f"{collection}.release",
        lease.namespace,
        lease.name,
    )


def renew_call(lease: Lease, ttl: float | None = None) -> Call[float]:
    collection = "locks" if lease.kind == "lock" else "semaphores"
    body = {"lease_id": lease.lease_id, "ttl_ms": _ms(ttl or lease.ttl), "request_id": new_request_id()}
    return Call(
        "POST",
        _object_path(lease.namespace, collection, lease.name) + "/renew",
        body,
        lambda payload: payload["ttl_ms"] / 1000,
        f"{collection}.renew",
        lease.namespace,
        lease.name,
    )


def status_call(namespace: str, kind: str, name: str) -> Call[LockStatus]:
    collection = "locks" if kind == "lock" else "semaphores"

    def parse(payload: dict[str, Any]) -> LockStatus:
        remaining = payload["remaining_ms"]
        return LockStatus(
            held=payload["held"],
            holder=payload["holder"],
            token=payload["token"],
            remaining=None if remaining is None else remaining / 1000,
            waiters=payload["waiters"],
            limit=payload["limit"],
            permits_used=payload["permits_used"],
        )

    return Call("GET", _object_path(namespace, collection, name), None, parse, f"{collection}.get", namespace, name)


def rate_limit_call(
    namespace: str,
    key: str,
    *,
    limit: int,
    per: float,
    cost: int = 1,
    burst: int | None = None,
    algorithm: str = "gcra",
) -> Call[RateLimitDecision]:
    body: dict[str, Any] = {"limit": limit, "period_ms": _ms(per), "cost": cost, "algorithm": algorithm}
    if burst is not None:
        body["burst"] = burst
    if cost:
        body["request_id"] = new_request_id()

    def parse(payload: dict[str, Any]) -> RateLimitDecision:
        return RateLimitDecision(
            allowed=payload["allowed"],
            limit=payload["limit"],
            remaining=payload["remaining"],
            reset_after=payload["reset_after_ms"] / 1000,
            retry_after=payload["retry_after_ms"] / 1000,
        )

    path = _object_path(namespace, "ratelimits", key) + "/check"
    return Call("POST", path, body, parse, "ratelimits.check", namespace, key)


def rate_limit_reset_call(namespace: str, key: str) -> Call[None]:
    path = _object_path(namespace, "ratelimits", key) + "/reset"
    body = {"request_id": new_request_id()}
    return Call("POST", path, body, lambda payload: None, "ratelimits.reset", namespace, key)


def _value(payload: dict[str, Any]) -> int:
    return int(payload["value"])


def counter_get_call(namespace: str, name: str) -> Call[int]:
    return Call("GET", _object_path(namespace, "counters", name), None, _value, "counters.get", namespace, name)


def counter_add_call(namespace: str, name: str, delta: int, *, minimum: int | None, maximum: int | None) -> Call[int]:
    body: dict[str, Any] = {"delta": delta, "request_id": new_request_id()}
    if minimum is not None:
        body["min"] = minimum
    if maximum is not None:
        body["max"] = maximum
    path = _object_path(namespace, "counters", name) + "/add"
    return Call("POST", path, body, _value, "counters.add", namespace, name)


def counter_set_call(namespace: str, name: str, value: int) -> Call[int]:
    body = {"value": value, "request_id": new_request_id()}
    return Call("PUT", _object_path(namespace, "counters", name), body, _value, "counters.set", namespace, name)


def counter_cas_call(namespace: str, name: str, expected: int, value: int) -> Call[CompareAndSet]:
    body = {"expected": expected, "value": value, "request_id": new_request_id()}
    path = _object_path(namespace, "counters", name) + "/compare-and-set"
    return Call(
        "POST",
        path,
        body,
        lambda payload: CompareAndSet(payload["swapped"], payload["value"]),
        "counters.compare_and_set",
        namespace,
        name,
    )


def fence_check_call(namespace: str, kind: str, name: str, token: int) -> Call[bool]:
    body = {"kind": kind, "name": name, "token": token}
    path = f"/v1/namespaces/{quote(namespace, safe='')}/fence/check"
    return Call("POST", path, body, lambda payload: bool(payload["current"]), "fence.check", namespace, None)


# --- renewal policy ----------------------------------------------------------------------------------
@dataclass
class LeaseKeeper:
    """When to renew a lease, and when to give it up as lost.

    Renew at a third of the TTL. A failed renewal is retried sooner, but once the lease's
    TTL has run out since the last confirmed renewal (by our own monotonic clock, started
    before the request was sent, so we err on the early side) it is lost.
    """

    lease: Lease
    confirmed_at: float  # monotonic seconds when the last grant/renewal request was sent
    on_lost: Callable[[Lease], None] | None = None
    _lost_callbacks_fired: bool = field(default=False, repr=False)

    def next_delay(self, now: float) -> float:
        return max(0.0, self.confirmed_at + self.lease.ttl / 3 - now)

    def renewal_timeouts(self, defaults: Timeouts, now: float) -> Timeouts:
        """A renewal may not outlive the lease: past its end there is nothing left to renew."""
        budget = self.confirmed_at + self.lease.ttl - now
        if budget <= 0:
            raise errors.LeaseLost("the lease ran out before it could be renewed")
        return Timeouts(connect=min(defaults.connect, budget), read=min(defaults.read, budget), total=budget)

    def retry_delay(self) -> float:
        return max(0.05, self.lease.ttl / 20)

    def renewed(self, sent_at: float) -> None:
        self.confirmed_at = sent_at

    def failed(self, error: BaseException, now: float) -> bool:
        """Record a failed renewal; True if the lease is now lost for good."""
        hopeless = isinstance(error, errors.NotOwner | errors.Forbidden | errors.Unauthorized)
        expired = now >= self.confirmed_at + self.lease.ttl
        if hopeless or expired:
            self.mark_lost()
            return True
        return False

    def mark_lost(self) -> None:
        self.lease.lost = True
        if self.on_lost is not None and not self._lost_callbacks_fired:
            self._lost_callbacks_fired = True
            self.on_lost(self.lease)
