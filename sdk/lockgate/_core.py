"""The I/O-free core shared by the sync and async clients.

It builds requests, parses answers into results or typed errors, and decides retries and
renewals. The shells only move bytes and sleep: `Attempts` says what to send, how long it
may take and how long to sleep before the next attempt; `LeaseKeeper` says when to renew a
lease and when it is lost. Neither reads a clock: the shells pass `now` in, so the same
policy drives the async and the blocking client.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar
from urllib.parse import quote, urlsplit

import msgspec

from . import errors

T = TypeVar("T")

MSGPACK = "application/msgpack"
RELAYED_BY = "lockgate-forwarded-by"
"""Set on an answer that a standby relayed from the active node."""
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()
_json_decoder = msgspec.json.Decoder()
# The one side effect of the core: a user's on_lost callback that raises, or a renewal that
# fails with an exception that is not a LockgateError, is logged, because the renewer must
# carry on (and the caller's block must still be released).
_log = logging.getLogger("lockgate")

# Problem `type` URIs the server answers with, mapped to our exception classes.
PROBLEM_TYPES: dict[str, type[errors.LockgateError]] = {
    "held": errors.LockHeld,
    "not-owner": errors.NotOwner,
    "quota-exceeded": errors.QuotaExceeded,
    "conflict": errors.Conflict,
    "invalid-request": errors.InvalidRequest,
    "malformed": errors.InvalidRequest,
    "not-found": errors.NotFound,
    "method-not-allowed": errors.MethodNotAllowed,
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
    releasing: bool = False  # a release was sent: renewal stops, and its failures mean nothing


@dataclass(frozen=True)
class RateLimitDecision:
    """The answer of a rate-limit check; true when allowed."""

    allowed: bool
    limit: int
    remaining: int
    reset_after: float  # seconds until the key is full again
    retry_after: float  # seconds until the same request would be allowed (0 when allowed)

    def __bool__(self) -> bool:
        return self.allowed


@dataclass(frozen=True)
class LockStatus:
    """A lock's or semaphore's state as the server sees it (`remaining` in seconds)."""

    held: bool
    holder: str | None
    token: int | None
    remaining: float | None  # seconds
    waiters: int
    limit: int
    permits_used: int


@dataclass(frozen=True)
class CompareAndSet:
    """The answer of a counter's compare-and-set: whether it swapped, and the value now."""

    swapped: bool
    value: int


# --- timeouts and retries -----------------------------------------------------------------------
@dataclass(frozen=True)
class Timeouts:
    """Every wait is finite, in seconds. `connect` bounds opening a connection, `read` one
    answer, `total` the whole call with its retries. A blocking acquire adds its `wait` to
    both `read` and `total`: the wait the caller asked for is never cut short by them."""

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
        """Seconds to sleep before retry number `attempt + 1` (at least what the server asked)."""
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


@dataclass(frozen=True)
class NodeAddress:
    """Where one node is and how to address it, read from its URL once."""

    host: str  # to connect to (an IPv6 address without brackets)
    port: int
    host_header: str  # the Host header: hostname (bracketed if IPv6) and the port if the URL gave one
    path_prefix: str  # "" or e.g. "/lockgate": the server mounted under a path behind a proxy

    def target(self, path: str) -> str:
        """The request target for an API path such as /v1/batch."""
        return self.path_prefix + path


# Characters a path prefix keeps as they are: RFC 3986 pchar and "/", plus "%" so that a
# prefix already percent-encoded is not encoded twice.
_PATH_SAFE = "/%:@!$&'()*+,;=~"


def node_address(url: str) -> NodeAddress:
    """A node's URL checked and taken apart, for both clients.

    Only http:// (TLS belongs to a sidecar or proxy). A path is kept as a prefix of every
    request (http://proxy/lockgate/ sends /lockgate/v1/...). Credentials in the URL are
    refused, not ignored: the server reads only its API key, so a user:password that was
    meant to authenticate would silently not, and one sent in the Host header would leak.
    The messages never repeat the URL, which may hold such a secret.
    """
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError("only http:// URLs are supported (put TLS in front with a sidecar)")
    if parts.username is not None or parts.password is not None:
        raise ValueError("a node URL may not carry credentials (user:password@): give the API key as api_key=")
    if parts.query or parts.fragment:
        raise ValueError("a node URL takes no query string or fragment")
    host = parts.hostname or "127.0.0.1"
    if not host.isascii():
        host = host.encode("idna").decode("ascii")  # an internationalised name, as DNS and Host carry it
    port = parts.port  # ValueError for a port that is not a number in 0-65535
    bracketed = f"[{host}]" if ":" in host else host
    host_header = bracketed if port is None else f"{bracketed}:{port}"
    prefix = quote(parts.path.rstrip("/"), safe=_PATH_SAFE)
    return NodeAddress(host=host, port=80 if port is None else port, host_header=host_header, path_prefix=prefix)


def checked_api_key(api_key: str | None) -> str | None:
    """The API key as it will be sent, checked once when a client is made; None sends none.

    Surrounding whitespace is stripped: a key read from a file or an environment variable
    often ends with a newline, no key holds whitespace, and the server strips it as well.
    What is left must be visible ASCII (0x21-0x7E): anything else would break the request
    head (CR, LF) or be encoded differently by the two clients and the server. The error
    says where the bad character is and never repeats the key, which would otherwise end up
    in logs and tracebacks. An empty key (after stripping) means no key, as it always has.
    """
    if api_key is None:
        return None
    if not isinstance(api_key, str):
        raise TypeError(f"api_key must be a str, not {type(api_key).__name__}")
    key = api_key.strip()
    for position, char in enumerate(key, start=1):
        if not "\x21" <= char <= "\x7e":
            control = char < "\x20" or char == "\x7f"
            what = "whitespace" if char.isspace() else "a control character" if control else "not ASCII"
            raise ValueError(f"api_key: character {position} is {what}; a key is visible ASCII only (0x21-0x7E)")
    return key or None


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
        """Use the answer; after a 503, or if a standby relayed it, the next call tries the next node."""
        if response.relayed or response.status == 503:
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
    wait: float = 0.0  # seconds a blocking acquire may wait in line: added to read and total
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
    payload: Any  # decoded body, or an `Undecodable`
    node: int = 0  # which of the client's nodes answered
    relayed: bool = False  # a standby relayed the request to the active node


@dataclass(frozen=True)
class Undecodable:
    """A body that is neither msgpack nor JSON, e.g. an HTML error page from a proxy."""

    excerpt: bytes


def decode_body(data: bytes, content_type: str = MSGPACK) -> Any:
    """The body as Python values; never raises (what cannot be decoded is `Undecodable`)."""
    if not data:
        return None
    try:
        # A few answers (a 404 from the router, say) are problem+json whatever we accept.
        return _json_decoder.decode(data) if "json" in content_type else _decoder.decode(data)
    except msgspec.DecodeError:
        return Undecodable(data[:200])


def encode_batch(calls: list[Call[Any]]) -> bytes:
    return _encoder.encode({"ops": [call.batch_entry() for call in calls]})


def split_batch(response: Response, count: int) -> list[Response]:
    """The batch answer, one Response per op, or the whole batch's error for each."""
    if response.status != 200:
        return [response] * count
    try:
        items = response.payload["results"]
        answers = [
            Response(item["status"], item.get("body") if item["status"] == 200 else item.get("problem"), response.node)
            for item in items
        ]
    except (KeyError, TypeError) as error:
        answers = [Response(response.status, Undecodable(repr(error).encode()), response.node)] * count
    if len(answers) != count:
        return [Response(response.status, Undecodable(b"a batch answer of the wrong length"), response.node)] * count
    return answers


def batch_refused_whole(response: Response) -> bool:
    """The server refused a whole batch for its input (400/422) and applied none of it.

    One op's bad input can do that, and would fail every caller in the batch: the shell sends
    each op again on its own, so only the caller whose op is bad fails.
    """
    return response.status in (400, 422)


GATEWAY_STATUSES = frozenset({502, 503, 504})
"""What a proxy in front of the server answers when the server is away: worth a retry."""


def error_from(response: Response) -> errors.LockgateError:
    """The typed error for an answer that is not a 200."""
    error_type: type[errors.LockgateError] | None
    if not isinstance(response.payload, dict):  # not a problem document: a proxy's page, say
        error_type = errors.Unavailable if response.status in GATEWAY_STATUSES else errors.UnexpectedResponse
        excerpt = response.payload.excerpt if isinstance(response.payload, Undecodable) else b""
        return error_type(f"HTTP {response.status} {excerpt[:80]!r}", status=response.status)
    payload = response.payload
    slug = str(payload.get("type", "")).rsplit("/", 1)[-1]
    error_type = PROBLEM_TYPES.get(slug)
    if error_type is None and response.status in GATEWAY_STATUSES:
        error_type = errors.Unavailable
    elif error_type is None and response.status >= 500:
        # The server's own failure (a 500 `internal`, say): the same request would most likely
        # fail the same way, so it is not retried; only 503s and gateway errors are.
        error_type = errors.UnexpectedResponse
    elif error_type is None:
        error_type = errors.InvalidRequest
    retry_after_ms = payload.get("retry_after_ms")
    return error_type(
        str(payload.get("detail") or payload.get("title") or f"HTTP {response.status}"),
        status=response.status,
        retry_after=retry_after_ms / 1000 if isinstance(retry_after_ms, int) else None,
    )


def result_from(call: Call[T], response: Response) -> T:
    """The call's result from its answer, or the typed error it stands for."""
    if response.status != 200:
        raise error_from(response)
    if isinstance(response.payload, Undecodable):
        raise errors.UnexpectedResponse(f"HTTP 200 that is not msgpack: {response.payload.excerpt[:80]!r}", status=200)
    try:
        return call.parse(response.payload)
    except (KeyError, TypeError, ValueError) as error:
        raise errors.UnexpectedResponse(f"HTTP 200 of an unexpected shape: {error!r}", status=200) from error


# --- the retry policy of one call -------------------------------------------------------------
@dataclass(frozen=True)
class Send:
    """Send `call` once; `timeout` bounds all of it (a free connection, connecting, the answer)."""

    call: Call[Any]
    timeout: float
    connect_timeout: float


@dataclass(frozen=True)
class Sleep:
    """Sleep, then ask `Attempts.send` again."""

    seconds: float


@dataclass(frozen=True)
class Done(Generic[T]):
    """The call succeeded with `value`."""

    value: T


class Attempts(Generic[T]):
    """One call's attempts: what to send, whether to retry, how long to back off, when to stop.

    The shells drive it: `send(now)`, do the I/O, then `answered(response, now)` or
    `failed(error, now)`, which give `Done` or `Sleep` or raise the error to give up with.
    Every attempt reuses the call, so every retry carries the same request_id.
    """

    def __init__(self, call: Call[T], policy: RetryPolicy, timeouts: Timeouts, rng: random.Random, now: float) -> None:
        self.call = call
        self._policy = policy
        self._timeouts = timeouts
        self._rng = rng
        self._attempt = 0
        # The wait the caller asked for comes on top of `total`, or a long wait could never end in LockHeld.
        self.deadline = now + timeouts.total + call.wait

    def send(self, now: float) -> Send:
        left = self.deadline - now
        if left <= 0:
            raise errors.TransportError("the call's total timeout passed")
        read = self._timeouts.read + self.call.wait
        return Send(self.call, min(read, left), min(self._timeouts.connect, left))

    def answered(self, response: Response, now: float) -> Done[T] | Sleep:
        try:
            return Done(result_from(self.call, response))
        except errors.LockgateError as error:
            return self.failed(error, now)

    def failed(self, error: errors.LockgateError, now: float) -> Sleep:
        """Back off before the next attempt, or raise `error` when there is none."""
        self._attempt += 1
        if not error.retryable or self._attempt >= self._policy.attempts:
            raise error
        delay = self._policy.delay(self._attempt - 1, error, self._rng)
        if now + delay >= self.deadline:
            raise error  # no time left for another attempt: the caller learns why now, not at the deadline
        return Sleep(delay)


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


# --- reading answers ---------------------------------------------------------------------------------
RESPONSE_BYTES_MAX = 16 * 2**20
"""The largest answer body either client reads (16 MiB); a larger one is refused unread as an
UnexpectedResponse. The largest answers the server gives (a batch of `max_batch_ops` results, a
listing of held locks) are far below it; a body past it is not the server's own (a proxy's
download, a confused peer) and would otherwise be read into memory whole."""

INTERIM_ANSWERS_MAX = 16
"""How many 1xx interim answers (100 Continue, 103 Early Hints) may come before the final one,
which each is skipped for; more is a peer in a loop, refused rather than read until the timeout."""

# RFC 9110 §6.4.1: these answers never have a body, whatever their headers say.
_BODYLESS_STATUSES = frozenset({204, 304})

Framing = Literal["none", "length", "chunked", "close"]
"""How an answer's body is delimited: none, `length` bytes, chunks, or until the peer closes."""


def check_response_length(length: int) -> None:
    """Refuse an answer body longer than RESPONSE_BYTES_MAX (raises UnexpectedResponse)."""
    if length > RESPONSE_BYTES_MAX:
        raise errors.UnexpectedResponse(
            f"an answer body of more than {RESPONSE_BYTES_MAX} bytes (RESPONSE_BYTES_MAX) was refused unread"
        )


@dataclass(frozen=True)
class ResponseHead:
    """The status and framing of one answer, from its head (RFC 9112)."""

    status: int
    keep_alive: bool  # the connection may carry the next request once this body is read
    relayed: bool
    content_type: str
    framing: Framing
    length: int = 0

    @property
    def interim(self) -> bool:
        """A 1xx: another head follows, on the same connection, for the same request."""
        return self.status < 200


def parse_response_head(head: bytes) -> ResponseHead:
    """Read an answer's head (status line and headers, up to the blank line).

    Raises ValueError for a head that is not HTTP/1.x (the shell turns it into a
    TransportError, as http.client's BadStatusLine is in the blocking client), and
    UnexpectedResponse for a body longer than RESPONSE_BYTES_MAX.
    """
    lines = head.decode("latin-1").split("\r\n")
    fields = lines[0].split(" ", 2)
    version = fields[0]
    if not version.startswith("HTTP/1.") or len(fields) < 2 or len(fields[1]) != 3 or not fields[1].isdigit():
        raise ValueError(f"not an HTTP/1.x status line: {lines[0][:60]!r}")
    status = int(fields[1])
    if status < 100:
        raise ValueError(f"not an HTTP status: {status}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            # Repeated fields are one list (RFC 9110 §5.3): two Content-Lengths that differ are caught below.
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    connection = {token.strip().lower() for token in headers.get("connection", "").split(",")}
    keep_alive = "close" not in connection and (version != "HTTP/1.0" or "keep-alive" in connection)
    relayed = RELAYED_BY in headers
    content_type = headers.get("content-type", MSGPACK)

    def framed(framing: Framing, length: int = 0, *, keep: bool = keep_alive) -> ResponseHead:
        return ResponseHead(status, keep, relayed, content_type, framing, length)

    # RFC 9112 §6.3, in its order.
    if status < 200 or status in _BODYLESS_STATUSES:
        return framed("none")
    if "transfer-encoding" in headers:
        codings = [coding.strip().lower() for coding in headers["transfer-encoding"].split(",")]
        if codings[-1] != "chunked":
            return framed("close", keep=False)
        # With a Content-Length too, Transfer-Encoding wins; such an answer may be smuggled: never reuse it.
        return framed("chunked", keep=keep_alive and "content-length" not in headers)
    if "content-length" in headers:
        values = {value.strip() for value in headers["content-length"].split(",")}
        text = values.pop()
        if values or not text.isdigit() or not text.isascii():
            raise ValueError(f"not a Content-Length: {headers['content-length'][:40]!r}")
        length = int(text)
        check_response_length(length)
        return framed("length", length)
    return framed("close", keep=False)


def parse_chunk_size(line: bytes) -> int:
    """The size from a chunk's size line (hex digits, then maybe extensions); ValueError if malformed."""
    size = line.split(b";", 1)[0].strip()
    if not size or size.strip(b"0123456789abcdefABCDEF"):
        raise ValueError(f"not a chunk size: {line[:40]!r}")
    return int(size, 16)


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
        wait=wait,
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


def release_of_unheard_grant(call: Call[Any], response: Response) -> Call[bool] | None:
    """The release that gives back a lease granted to a caller who is gone (cancelled while its
    request was on the wire), so that nobody holds it for its whole TTL; None for anything else."""
    if response.status != 200 or call.operation not in ("locks.acquire", "semaphores.acquire"):
        return None
    try:
        lease = result_from(call, response)
    except errors.LockgateError:
        return None
    return release_call(lease) if isinstance(lease, Lease) else None


class Rescheduling(Protocol):
    """A lease context whose background keeper a renewal sent by hand must reach."""

    def rescheduling(self) -> AbstractContextManager[LeaseKeeper | None]: ...


def report_renewal_by_hand(
    context: Rescheduling | None,
    lease: Lease,
    ttl: float | None,
    *,
    sent_at: float,
    now: float,
    outcome: float | errors.LockgateError,
) -> None:
    """Tell a lease's keeper (if a client renews it in the background) about a renewal sent by
    hand at `sent_at`: the TTL granted, or the error it met. Both shells call this."""
    if context is None:
        return
    with context.rescheduling() as keeper:
        if keeper is None:
            return
        if isinstance(outcome, errors.LockgateError):
            keeper.renewal_by_hand_failed(outcome, sent_at=sent_at, ttl=renewal_ttl(lease, ttl))
        else:
            keeper.renewed_by_hand(sent_at=sent_at, ttl=outcome, now=now)


def renewal_ttl(lease: Lease, ttl: float | None = None) -> float:
    """The TTL a renewal asks for, in seconds: `ttl`, else the lease's own."""
    return _ms(ttl or lease.ttl) / 1000


def renew_call(lease: Lease, ttl: float | None = None) -> Call[float]:
    collection = "locks" if lease.kind == "lock" else "semaphores"
    body = {"lease_id": lease.lease_id, "ttl_ms": _ms(renewal_ttl(lease, ttl)), "request_id": new_request_id()}
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
@dataclass(frozen=True)
class Wait:
    """Sleep this long (or until told to stop), then ask `LeaseKeeper.next` again."""

    seconds: float


@dataclass(frozen=True)
class Renew:
    """Renew the lease once, within `timeouts`; report to `renewed` or `renewal_failed`."""

    timeouts: Timeouts


@dataclass(frozen=True)
class Stop:
    """Renewal is over: the lease was released (`lost` false) or is lost."""

    lost: bool


RenewalStep = Wait | Renew | Stop


class LeaseKeeper:
    """When to renew a lease, and when to give it up as lost.

    The lease is safe until `expires_by`: the send time of the last request that set its
    expiry (the grant or a renewal) plus the TTL, by our own monotonic clock. The server set
    the expiry no earlier than that send time, so this bound errs on the early side. Renewal
    runs at a third of the TTL; a failed one is retried sooner; a refused one (NotOwner...),
    or one still failing at `expires_by`, means the lease is lost.

    A grant that came after a long wait in line may arrive past its own bound (the acquire was
    sent before the wait). It is renewed at once, once, with a budget of its own: if the
    server accepts, the lease was ours all along and the bound is based on that renewal.

    A renewal made by hand (`client.renew(lease, ttl=...)`) sets the expiry as much as ours
    do, so the shells report it here too (`renewed_by_hand`, `renewal_by_hand_failed`) and
    wake the renewer: after renew(lease, ttl=1) the lease is safe for 1 s, not for the 30 s
    of the last background renewal, and the next one is due in a third of a second.
    Two renewals in flight at once may be applied in either order, so the bound after both
    is the earlier of the two; only a renewal sent after the last answer extends it as is.
    """

    def __init__(
        self,
        lease: Lease,
        *,
        sent_at: float,
        answered_at: float,
        timeouts: Timeouts,
        on_lost: Callable[[Lease], None] | None = None,
    ) -> None:
        self.lease = lease
        self.on_lost = on_lost
        self._timeouts = timeouts
        self.expires_by = sent_at + lease.ttl
        self._next_renewal_at = sent_at + lease.ttl / 3
        self._confirm_at_once = answered_at >= self._next_renewal_at
        self._renewal_sent_at: float | None = None
        # When the last answer that set the expiry came: a renewal sent before it was in flight
        # with that one, and either may have been the one the server applied last.
        self._settled_at = answered_at
        self._lost_callback_fired = False

    def next(self, now: float) -> RenewalStep:
        lease = self.lease
        if lease.released or lease.releasing:
            return Stop(lost=False)
        if lease.lost:
            return Stop(lost=True)
        if now < self._next_renewal_at:
            return Wait(self._next_renewal_at - now)
        budget = self.expires_by - now  # a renewal may not outlive the lease: past its end there is nothing left
        if self._confirm_at_once:
            budget = max(budget, min(lease.ttl, self._timeouts.total))
        elif budget <= 0:
            self.mark_lost()
            return Stop(lost=True)
        self._renewal_sent_at = now
        return Renew(Timeouts(connect=min(self._timeouts.connect, budget), read=min(self._timeouts.read, budget),
                              total=budget))  # fmt: skip

    def renewed(self, ttl: float, now: float | None = None) -> None:
        """The renewal sent at the last `Renew` was accepted at `now` (by default: at once); the
        server now holds the lease for `ttl`."""
        sent_at = self._renewal_sent_at
        assert sent_at is not None
        self._renewal_sent_at = None
        self._settle(sent_at, ttl, sent_at if now is None else now)

    def renewed_by_hand(self, *, sent_at: float, ttl: float, now: float) -> None:
        """A renewal the caller sent at `sent_at` was accepted at `now` for `ttl`."""
        self._settle(sent_at, ttl, now)

    def _settle(self, sent_at: float, ttl: float, answered_at: float) -> None:
        self.lease.ttl = ttl
        self._confirm_at_once = False
        if sent_at >= self._settled_at:  # sent after every earlier answer: the server applied it last
            self.expires_by = sent_at + ttl
            self._next_renewal_at = sent_at + ttl / 3
        else:
            self.expires_by = min(self.expires_by, sent_at + ttl)
            self._next_renewal_at = min(self._next_renewal_at, sent_at + ttl / 3)
        self._settled_at = max(self._settled_at, answered_at)

    def renewal_failed(self, error: Exception, now: float) -> None:
        """The renewal sent at the last `Renew` failed with `error`, a LockgateError or any
        other exception (a bug, say): that is one failed attempt, retried until the bound."""
        self._renewal_sent_at = None
        self._confirm_at_once = False
        if self.lease.released or self.lease.releasing:
            return  # refused because we released it: that is no loss
        if not isinstance(error, errors.LockgateError):
            # Not ours to swallow silently, nor to let end the renewal: the lease would be kept by nobody.
            _log.warning("renewing lease %s on %r raised", self.lease.lease_id, self.lease.name, exc_info=error)
        if _hopeless(error) or now >= self.expires_by:
            self.mark_lost()
        else:
            self._next_renewal_at = now + max(0.05, self.lease.ttl / 20)

    def renewal_by_hand_failed(self, error: errors.LockgateError, *, sent_at: float, ttl: float) -> None:
        """A renewal the caller sent at `sent_at` for `ttl` failed with `error`.

        A refusal (NotOwner...) means the lease is lost. Any other failure may still have been
        applied (an answer lost on the way back): the lease may now end at `sent_at + ttl`, so the
        bound and the next renewal are moved no later than that.
        """
        if self.lease.released or self.lease.releasing:
            return
        if _hopeless(error):
            self.mark_lost()
            return
        self.expires_by = min(self.expires_by, sent_at + ttl)
        self._next_renewal_at = min(self._next_renewal_at, sent_at + ttl / 3)

    def mark_lost(self) -> None:
        self.lease.lost = True
        if self.on_lost is not None and not self._lost_callback_fired:
            self._lost_callback_fired = True
            try:
                self.on_lost(self.lease)
            except Exception:
                _log.exception("the on_lost callback of lease %s on %r raised", self.lease.lease_id, self.lease.name)


def _hopeless(error: Exception) -> bool:
    """A renewal refused for good: the lease is gone, or this key may not keep it."""
    return isinstance(error, errors.NotOwner | errors.Forbidden | errors.Unauthorized)


def release_timeouts_after_loss(defaults: Timeouts) -> Timeouts:
    """A lost lease is released only as a courtesy: briefly, so leaving its block never hangs."""
    return Timeouts(connect=min(defaults.connect, 0.5), read=min(defaults.read, 1.0), total=min(defaults.total, 1.0))
