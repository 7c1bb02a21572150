"""The server side of cleartext HTTP/2 with prior knowledge (RFC 9113), for gRPC's unary calls.

Why not grpcio's server: on this project's 2-core machine, grpc.aio spent about 200 µs of CPU
per call with a handler that did nothing, which left no room for the ≥ 5,000 calls/s Envoy's
rate limit service needs on one worker; this connection spends about 40 µs (`make bench-gateway`
measures both, loadtests/grpc_transport.py). It carries what a unary RPC needs and nothing more:

- one request per stream, read whole (headers, then DATA up to END_STREAM), handed to
  `request_received`; the answer is one HEADERS, DATA and trailing HEADERS;
- flow control both ways: we replenish the client's windows as its data arrives (every stream's
  body is bounded by `body_bytes_max`), and we hold back our DATA until the client's windows
  allow it;
- SETTINGS, PING, WINDOW_UPDATE, RST_STREAM, GOAWAY and CONTINUATION as the RFC asks; no server
  push, no priorities (PRIORITY is read and ignored, as RFC 9113 allows);
- what a client holds is bounded: request bytes (bodies and header lists) per connection, the
  time a request may take to arrive, and the time a connection may stay open without a call.

Header blocks are decoded with `hpack` (python-hyper's HPACK codec). The blocks we send are
literals without indexing, so we keep no encoder table and never touch the client's; the one
thing we owe it is a table size update when the client shrinks its table (see _settings).
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Final, cast

import hpack

from ..limits import GRPC_IDLE_TIMEOUT_MS, GRPC_REQUEST_TIMEOUT_MS

log = logging.getLogger("lockgate.gateway")

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM: Final = 0x1
ACK: Final = 0x1
END_HEADERS: Final = 0x4
PADDED: Final = 0x8
PRIORITY_FLAG: Final = 0x20

SETTINGS_HEADER_TABLE_SIZE: Final = 0x1
SETTINGS_ENABLE_PUSH: Final = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS: Final = 0x3
SETTINGS_INITIAL_WINDOW_SIZE: Final = 0x4
SETTINGS_MAX_FRAME_SIZE: Final = 0x5
SETTINGS_MAX_HEADER_LIST_SIZE: Final = 0x6

DEFAULT_WINDOW: Final = 65_535
DEFAULT_FRAME_SIZE: Final = 16_384
LARGEST_FRAME_SIZE: Final = 16_777_215
WINDOW_MAX: Final = 2**31 - 1
CONNECTION_WINDOW: Final = 1 << 20
"""Our receive window for the whole connection; streams keep the default and are replenished."""
LINGER_S: Final = 1.0
"""How long a connection we end stays open after our last frame, for the client to read it."""
HEADER_LIST_HARD_FACTOR: Final = 8
"""A header list this many times the limit ends the connection instead of getting a 431."""
DECODED_BLOCKS_CACHED: Final = 32
"""Header blocks of indexed fields only, kept decoded per connection (see _decode)."""
DECODED_BLOCK_BYTES_MAX: Final = 64
"""Longest header block kept decoded. A gRPC client's repeated blocks are 10 to 20 bytes; each
byte of a cached block pins one decoded field, so 32 long ones would pin megabytes."""
HEADER_TABLE_SIZE_DEFAULT: Final = 4_096
"""SETTINGS_HEADER_TABLE_SIZE until the client sets it (RFC 9113 §6.5.2)."""
TABLE_SIZE_UPDATE_TO_0: Final = b"\x20"
"""RFC 7541 §6.3: the dynamic table's size is now 0. Always within the client's limit, and true
of our blocks, which never add to the table."""
TIMEOUT_CHECKS_PER_PERIOD: Final = 4
"""Times per the shorter of ConnectionLimits' idle and request timeouts that a connection checks
both; each is enforced at most this fraction of the shorter one late. One timer per connection
that fires at a fixed pace costs nothing per frame, where one re-armed per frame or per call would."""
IDLE_PING: Final = b"idle-bye"
"""The payload of the PING that follows our first GOAWAY when a connection is idle (_idle)."""


class ErrorCode(IntEnum):
    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    ENHANCE_YOUR_CALM = 0xB


class ConnectionFault(Exception):
    """The peer broke the protocol: the connection ends with GOAWAY(code)."""

    def __init__(self, code: ErrorCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream_id.to_bytes(4, "big") + payload


def _hpack_integer(value: int, prefix_bits: int) -> bytes:
    """RFC 7541 §5.1, with the pattern bits of the first byte left 0."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((value,))
    out = bytearray((limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def header_block(headers: list[tuple[bytes, bytes]]) -> bytes:
    """`headers` as HPACK literals without indexing (RFC 7541 §6.2.2), no Huffman coding;
    `:status: 200` as its static-table index."""
    out = bytearray()
    for name, value in headers:
        if name == b":status" and value == b"200":
            out.append(0x88)
            continue
        out += b"\x00" + _hpack_integer(len(name), 7) + name + _hpack_integer(len(value), 7) + value
    return bytes(out)


@dataclass(eq=False, slots=True)
class Stream:
    """One request/response exchange; `headers` are the request's, decoded."""

    stream_id: int
    headers: list[tuple[bytes, bytes]]
    send_window: int
    opened_at_check: int = 0  # TimeoutChecks.done when the stream opened
    header_list_bytes: int = 0  # counted in the connection's buffered bytes while the stream is open
    body: bytearray = field(default_factory=bytearray)
    unacknowledged: int = 0  # received bytes not yet given back with WINDOW_UPDATE
    body_too_large: bool = False  # past ConnectionLimits.body_bytes_max: answered at once
    received: bool = False  # the client ended its side
    answered: bool = False
    pending: bytes = b""  # our DATA that flow control holds back
    pending_trailers: bytes = b""
    task: asyncio.Task[None] | None = None


@dataclass(eq=False, slots=True)
class TimeoutChecks:
    """A connection's idle and request timeouts, counted in checks rather than seconds so that
    no clock is read per stream (see Http2ServerConnection._check_timeouts)."""

    interval_s: float
    idle_checks: int  # checks without a stream after which the connection is idle
    request_checks: int  # checks after which a stream's request is late
    done: int = 0  # checks so far; a stream is stamped with it when it opens
    busy_at: int = 0  # the last check that found a stream open, or opened since the one before
    last_stream_id_seen: int = 0
    idle_goaway_sent: bool = False
    requests_timed_out: int = 0  # streams reset because their request did not arrive in time
    timer: asyncio.TimerHandle | None = None


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    streams_max: int
    header_list_bytes_max: int
    body_bytes_max: int
    buffered_bytes_max: int  # request bytes (header lists and bodies) held for one connection's streams
    handshake_timeout_s: float  # for the client's preface and SETTINGS
    idle_timeout_s: float = GRPC_IDLE_TIMEOUT_MS / 1000  # with no stream open: GOAWAY, then closed
    request_timeout_s: float = GRPC_REQUEST_TIMEOUT_MS / 1000  # a stream's HEADERS to our last frame


class Http2ServerConnection(asyncio.Protocol):
    """One client connection. Subclasses answer `request_received` with `respond`."""

    def __init__(self, limits: ConnectionLimits, *, refusal: str | None = None) -> None:
        """`refusal`: why this connection is closed as soon as it opens (None: it is served)."""
        # CPython keeps the attributes of at most 30 names per class in its fast shared-key layout;
        # one more, and every attribute access is a dictionary lookup (measured on 3.11: +0.4 µs a
        # call). Related state is grouped (TimeoutChecks) to stay below that; 28 names now.
        self.limits = limits
        self.refusal = refusal
        self.streams: dict[int, Stream] = {}
        self._transport: asyncio.Transport | None = None
        self._buffered = 0
        self._handshake_timer: asyncio.TimerHandle | None = None
        interval_s = min(limits.idle_timeout_s, limits.request_timeout_s) / TIMEOUT_CHECKS_PER_PERIOD
        self._timeouts = TimeoutChecks(
            interval_s,
            idle_checks=_checks_covering(limits.idle_timeout_s, interval_s),
            request_checks=_checks_covering(limits.request_timeout_s, interval_s),
        )
        self._buffer = bytearray()
        self._preface_seen = False
        self._settings_seen = False
        # hpack stops decoding mid-block at its own cap, leaving the table out of step with the
        # client's: past HEADER_LIST_HARD_FACTOR times our limit the connection ends; between our
        # limit and that, the block is decoded whole (the table stays right) and answered 431.
        self._decoder = hpack.Decoder(max_header_list_size=limits.header_list_bytes_max * HEADER_LIST_HARD_FACTOR)
        self._decoded_blocks: dict[bytes, list[tuple[bytes, bytes]]] = {}
        self._last_stream_id = 0
        self._continuing: tuple[int, int, bytearray] | None = None  # stream id, flags, block so far
        self._receive_unacknowledged = 0
        self._send_window = DEFAULT_WINDOW
        self._peer_initial_window = DEFAULT_WINDOW
        self._peer_frame_size = DEFAULT_FRAME_SIZE
        # None: the client's decoder holds our blocks to the default table size; True: it has
        # shrunk it, and our next block owes it a size update (RFC 7541 §4.2); False: sent, the
        # table is 0 for good (we never signal growth).
        self._table_size_update_due: bool | None = None
        self._blocked: dict[int, Stream] = {}  # streams whose DATA waits for window, in order
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._reading_paused = False
        self._write_closed = False
        self.going_away = False
        self.closed = asyncio.get_running_loop().create_future()
        self.drained = asyncio.get_running_loop().create_future()  # going away, every stream answered

    # --- hooks ------------------------------------------------------------------------------
    def request_received(self, stream: Stream) -> None:
        raise NotImplementedError

    def stream_closed(self, stream: Stream) -> None:
        """The stream ended without our answer (reset, or the connection went)."""
        if stream.task is not None:
            stream.task.cancel()

    # --- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is one, without the subclass
        settings = (
            SETTINGS_MAX_CONCURRENT_STREAMS.to_bytes(2, "big")
            + self.limits.streams_max.to_bytes(4, "big")
            + SETTINGS_MAX_HEADER_LIST_SIZE.to_bytes(2, "big")
            + self.limits.header_list_bytes_max.to_bytes(4, "big")
            + SETTINGS_ENABLE_PUSH.to_bytes(2, "big")
            + (0).to_bytes(4, "big")
        )
        increment = CONNECTION_WINDOW - DEFAULT_WINDOW
        self._send(frame(SETTINGS, 0, 0, settings) + frame(WINDOW_UPDATE, 0, 0, increment.to_bytes(4, "big")))
        loop = asyncio.get_running_loop()
        self._handshake_timer = loop.call_later(self.limits.handshake_timeout_s, self._handshake_timed_out)
        if self.refusal is not None:  # after SETTINGS, which must be the first frame a server sends
            self._send(_goaway_frame(0, ErrorCode.ENHANCE_YOUR_CALM, self.refusal))
            self._flush()
            self._linger()
            return
        self._timeouts.timer = loop.call_later(self._timeouts.interval_s, self._check_timeouts)

    def data_received(self, data: bytes) -> None:
        if self._write_closed:
            return  # we have said our last: what the client still sends is read and dropped
        buffer = self._buffer
        buffer += data
        try:
            if not self._preface_seen:
                if len(buffer) < len(PREFACE):
                    if not PREFACE.startswith(bytes(buffer)):
                        raise ConnectionFault(ErrorCode.PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                    return
                if buffer[: len(PREFACE)] != PREFACE:
                    raise ConnectionFault(ErrorCode.PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                del buffer[: len(PREFACE)]
                self._preface_seen = True
            position, size = 0, len(buffer)
            while size - position >= 9:
                length = int.from_bytes(buffer[position : position + 3], "big")
                if length > DEFAULT_FRAME_SIZE:  # we never raise SETTINGS_MAX_FRAME_SIZE
                    raise ConnectionFault(ErrorCode.FRAME_SIZE_ERROR, f"a frame of {length} bytes")
                end = position + 9 + length
                if end > size:
                    break
                kind, flags = buffer[position + 3], buffer[position + 4]
                stream_id = int.from_bytes(buffer[position + 5 : position + 9], "big") & 0x7FFFFFFF
                payload = bytes(buffer[position + 9 : end])
                position = end
                self._frame_received(kind, flags, stream_id, payload)
            del buffer[:position]
        except ConnectionFault as fault:
            self._go_away(fault.code, str(fault))
        except hpack.HPACKError as error:
            self._go_away(ErrorCode.COMPRESSION_ERROR, f"header block: {error}")

    def _handshake_timed_out(self) -> None:
        if not self._settings_seen:  # a silent connection would hold a place for good
            self._go_away(ErrorCode.PROTOCOL_ERROR, "no connection preface and SETTINGS in time")

    @property
    def requests_timed_out(self) -> int:
        """Streams reset because their request did not arrive, or their answer was not taken
        (the client's window stayed shut), within the request timeout."""
        return self._timeouts.requests_timed_out

    def _check_timeouts(self) -> None:
        """Every TimeoutChecks.interval_s: reset the streams whose request is late, close an idle connection.

        A check that finds no stream open and none opened since the check before (stream ids only
        grow) knows the connection was idle all the time between them; so did every later check
        up to this one: the connection has been idle at least (checks since the last busy one - 1)
        intervals. A stream stamped with the check count when it opened has likewise been open
        at least (checks since then - 1) intervals."""
        timeouts = self._timeouts
        timeouts.done += 1
        if self.streams or self._last_stream_id != timeouts.last_stream_id_seen:
            timeouts.busy_at = timeouts.done
            timeouts.last_stream_id_seen = self._last_stream_id
            if self.streams:
                self._reset_late_requests()
        elif timeouts.done - timeouts.busy_at >= timeouts.idle_checks:
            self._idle()
        if self._transport is not None and not self._transport.is_closing() and not self._write_closed:
            timeouts.timer = asyncio.get_running_loop().call_later(timeouts.interval_s, self._check_timeouts)

    def _reset_late_requests(self) -> None:
        timeouts = self._timeouts
        # A client that never ends its request, or never opens its window to our answer, would
        # hold the stream (its place among streams_max, its bytes) for good.
        late = [
            stream
            for stream in self.streams.values()
            if (not stream.received or stream.stream_id in self._blocked)
            and timeouts.done - stream.opened_at_check >= timeouts.request_checks
        ]
        for stream in late:
            self._reset(stream, ErrorCode.CANCEL)
        if late:
            timeouts.requests_timed_out += len(late)
            log.info(
                "reset %d HTTP/2 streams whose request did not arrive, or whose answer was not taken, within %.1f s",
                len(late),
                self.limits.request_timeout_s,
            )

    def _idle(self) -> None:
        """RFC 9113 §6.8's graceful shutdown. A single GOAWAY naming our last stream would refuse a
        call the client sent as it crossed (Envoy may fail those: envoyproxy/envoy#36450); GOAWAY
        with the largest id, then PING, lets every call sent before the client read it arrive
        ahead of the PING's acknowledgement, and only then does the real GOAWAY (go_away) name the
        last stream. A client that never acknowledges gets the real GOAWAY at the next check."""
        if self.going_away:
            return
        if self._timeouts.idle_goaway_sent:
            self.go_away()
            return
        self._timeouts.idle_goaway_sent = True
        self._send(_goaway_frame(WINDOW_MAX, ErrorCode.NO_ERROR, "idle") + frame(PING, 0, 0, IDLE_PING))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
        if self._timeouts.timer is not None:
            self._timeouts.timer.cancel()
        for stream in list(self.streams.values()):
            if not stream.answered:
                self.stream_closed(stream)
        self.streams.clear()
        self._blocked.clear()
        for done in (self.closed, self.drained):
            if not done.done():
                done.set_result(None)

    def pause_writing(self) -> None:
        # A client that does not read stops being read: what we owe it stays bounded.
        if self._transport is not None and not self._reading_paused:
            self._reading_paused = True
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None and self._reading_paused:
            self._reading_paused = False
            self._transport.resume_reading()

    # --- frames --------------------------------------------------------------------------------
    def _frame_received(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._continuing is not None and kind != CONTINUATION:
            raise ConnectionFault(ErrorCode.PROTOCOL_ERROR, "a header block was interrupted")
        if not self._settings_seen:
            if kind != SETTINGS or flags & ACK:
                raise ConnectionFault(ErrorCode.PROTOCOL_ERROR, "the connection must start with SETTINGS")
            self._settings_seen = True
            if self._handshake_timer is not None:
                self._handshake_timer.cancel()
        if kind == DATA:
            self._data(flags, stream_id, payload)
        elif kind == HEADERS:
            self._headers(flags, stream_id, payload)
        elif kind == CONTINUATION:
            self._continuation(flags, stream_id, payload)
        elif kind == SETTINGS:
            self._settings(flags, stream_id, payload)
        elif kind == WINDOW_UPDATE:
            self._window_update(stream_id, payload)
        elif kind == PING:
            if stream_id != 0 or len(payload) != 8:
                raise ConnectionFault(ErrorCode.PROTOCOL_ERROR, "a malformed PING")
            if not flags & ACK:
                self._send(frame(PING, ACK, 0, payload))
            elif payload == IDLE_PING and self._timeouts.idle_goaway_sent:
                self.go_away()  # the client has read our first GOAWAY: every call it sent before is here
        elif kind == RST_STREAM:
            if stream_id == 0 or len(payload) != 4:
                raise ConnectionFault(ErrorCode.PROTOCOL_ERROR, "a malformed RST_STREAM")
            if stream_id > self._last_stream_id:
                raise ConnectionFault(ErrorCode.PROTOCOL_ERROR, "RST_STREAM on an idle stream")
            stream = self.streams.get(stream_id)
            if stream is not None:
                self._forget(stream)
                if not stream.answered:
                    self.stream_closed(stream)
        elif kind == GOAWAY:
            if stream_id != 0:
                raise ConnectionFault(ErrorCode.PROTOCOL_ERROR, "GOAWAY on a stream")
            self.going_away = True  # the client starts no more streams; ours finish
            self._close_if_drained()
        elif kind == PRIORITY:
            if stream_id == 0 or len(payload) != 5:
                raise ConnectionFault(ErrorCode.PROTOCOL_ERROR, "a malformed PRIORITY")
        elif kind == PUSH_PROMISE:
            raise ConnectionFault(ErrorCode.PROTOCOL_ERROR, "a client may not push")
        # Unknown frame types are ignored (RFC 9113 §4.1).

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ConnectionFault(ErrorCode.PROTOCOL_ERROR, "DATA on stream 0")
        if stream_id > self._last_stream_id:
            raise ConnectionFault(ErrorCode.PROTOCOL_ERROR, "DATA on an idle stream")
        self._receive_unacknowledged += len(payload)
        if self._receive_unacknowledged > CONNECTION_WINDOW:
            raise ConnectionFault(ErrorCode.FLOW_CONTROL_ERROR, "the connection's window was exceeded")
        if self._receive_unacknowledged >= CONNECTION_WINDOW // 2:
            self._send(frame(WINDOW_UPDATE, 0, 0, self._receive_unacknowledged.to_bytes(4, "big")))
            self._receive_unacknowledged = 0
        stream = self.streams.get(stream_id)
        if stream is None or stream.received:
            if stream is not None:  # DATA after END_STREAM
                self._reset(stream, ErrorCode.STREAM_CLOSED)
            return  # a stream we closed: RFC 9113 §5.1 has its late frames ignored
        stream.unacknowledged += len(payload)
        if stream.unacknowledged > DEFAULT_WINDOW:
            self._reset(stream, ErrorCode.FLOW_CONTROL_ERROR)
            return
        if flags & PADDED:
            payload = _unpad(payload)
        if self._buffered + len(payload) > self.limits.buffered_bytes_max:
            self._reset(stream, ErrorCode.ENHANCE_YOUR_CALM)  # the sum of unfinished bodies is bounded
            return
        if len(stream.body) + len(payload) > self.limits.body_bytes_max:
            stream.body_too_large = True  # answered now; the rest of the body is ignored
            self._buffered -= len(stream.body)
            stream.body.clear()
            self.request_received(stream)
            return
        stream.body += payload
        self._buffered += len(payload)
        if flags & END_STREAM:
            stream.received = True
            self.request_received(stream)
        elif stream.unacknowledged >= DEFAULT_WINDOW // 2:
            self._send(frame(WINDOW_UPDATE, 0, stream_id, stream.unacknowledged.to_bytes(4, "big")))
            stream.unacknowledged = 0

    def _headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0 or stream_id % 2 == 0:
            raise ConnectionFault(ErrorCode.PROTOCOL_ERROR, f"HEADERS on stream {stream_id}")
        if flags & PADDED:
            payload = _unpad(payload)
        if flags & PRIORITY_FLAG:
            payload = payload[5:]
        if flags & END_HEADERS:
            self._header_block(stream_id, flags, payload)
        else:
            self._continuing = (stream_id, flags, bytearray(payload))

    def _continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        if self._continuing is None or self._continuing[0] != stream_id:
            raise ConnectionFault(ErrorCode.PROTOCOL_ERROR, "CONTINUATION without its HEADERS")
        block = self._continuing[2]
        block += payload
        if len(block) > 2 * self.limits.header_list_bytes_max:
            raise ConnectionFault(ErrorCode.ENHANCE_YOUR_CALM, "a header block larger than allowed")
        if flags & END_HEADERS:
            stream_id, first_flags, _ = self._continuing
            self._continuing = None
            self._header_block(stream_id, first_flags, bytes(block))

    def _header_block(self, stream_id: int, flags: int, block: bytes) -> None:
        # Decoded even for a stream we refuse: the HPACK table is the connection's.
        headers = self._decode(block)
        stream = self.streams.get(stream_id)
        if stream is not None:  # trailers on the request: accepted, and they end it
            if stream.received or not flags & END_STREAM:
                self._reset(stream, ErrorCode.PROTOCOL_ERROR)
                return
            stream.received = True
            self.request_received(stream)
            return
        if stream_id <= self._last_stream_id:
            # Request headers start with pseudo-header fields (RFC 9113 §8.3), trailers have none.
            if headers and headers[0][0].startswith(b":"):  # RFC 9113 §5.1.1: ids only grow
                raise ConnectionFault(ErrorCode.PROTOCOL_ERROR, f"new stream {stream_id} after {self._last_stream_id}")
            return  # trailers of a stream we closed already, maybe sent before our RST_STREAM reached it
        self._last_stream_id = stream_id
        header_list_bytes = _header_list_size(headers)
        if header_list_bytes > self.limits.header_list_bytes_max:  # RFC 9113 §10.5.1
            answer = header_block([(b":status", b"431")])
            self._send(self._header_frames(stream_id, answer, END_STREAM))
            if not flags & END_STREAM:
                self._send(frame(RST_STREAM, 0, stream_id, ErrorCode.NO_ERROR.to_bytes(4, "big")))
            return
        if self.going_away or len(self.streams) >= self.limits.streams_max:
            self._send(frame(RST_STREAM, 0, stream_id, ErrorCode.REFUSED_STREAM.to_bytes(4, "big")))
            return
        if self._buffered + header_list_bytes > self.limits.buffered_bytes_max:
            # Open streams' header lists are held as long as their bodies: bounded together.
            self._send(frame(RST_STREAM, 0, stream_id, ErrorCode.ENHANCE_YOUR_CALM.to_bytes(4, "big")))
            return
        # Positional, in field order: naming opened_at_check and header_list_bytes cost 2% of a call.
        stream = Stream(stream_id, headers, self._peer_initial_window, self._timeouts.done, header_list_bytes)
        self._buffered += header_list_bytes
        self.streams[stream_id] = stream
        if flags & END_STREAM:
            stream.received = True
            self.request_received(stream)

    def _decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """A client repeats its calls' headers as the same few table indexes (grpc-core and Envoy
        both do), and hpack's pure-Python decoder was a fifth of a call's CPU. A block made only
        of one-byte indexed fields (every byte >= 0x80) leaves the dynamic table as it is, so its
        decoding stays right until a block with literals changes the table: then all are dropped."""
        cached = self._decoded_blocks.get(block)
        if cached is not None:
            return cached
        try:
            headers: list[tuple[bytes, bytes]] = self._decoder.decode(block, raw=True)  # type: ignore[assignment]
        except hpack.OversizedHeaderListError as error:
            self._decoded_blocks.clear()
            raise ConnectionFault(ErrorCode.ENHANCE_YOUR_CALM, "a header list far over the limit") from error
        except hpack.HPACKError:
            self._decoded_blocks.clear()  # the connection ends (COMPRESSION_ERROR) in data_received
            raise
        if block and min(block) >= 0x80:
            if (
                len(self._decoded_blocks) < DECODED_BLOCKS_CACHED
                and len(block) <= DECODED_BLOCK_BYTES_MAX
                and _header_list_size(headers) <= self.limits.header_list_bytes_max
            ):
                self._decoded_blocks[block] = headers
        else:
            self._decoded_blocks.clear()
        return headers

    def _settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise ConnectionFault(ErrorCode.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise ConnectionFault(ErrorCode.FRAME_SIZE_ERROR, "a SETTINGS acknowledgement with a payload")
            return
        if len(payload) % 6:
            raise ConnectionFault(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS of a length not a multiple of 6")
        for offset in range(0, len(payload), 6):
            identifier = int.from_bytes(payload[offset : offset + 2], "big")
            value = int.from_bytes(payload[offset + 2 : offset + 6], "big")
            if identifier == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > WINDOW_MAX:
                    raise ConnectionFault(ErrorCode.FLOW_CONTROL_ERROR, "an initial window over 2^31-1")
                delta = value - self._peer_initial_window
                self._peer_initial_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
                    if stream.send_window > WINDOW_MAX:  # RFC 9113 §6.9.2
                        raise ConnectionFault(ErrorCode.FLOW_CONTROL_ERROR, "a stream's window over 2^31-1")
            elif identifier == SETTINGS_MAX_FRAME_SIZE:
                if not DEFAULT_FRAME_SIZE <= value <= LARGEST_FRAME_SIZE:
                    raise ConnectionFault(ErrorCode.PROTOCOL_ERROR, "a max frame size out of range")
                self._peer_frame_size = value
            elif identifier == SETTINGS_ENABLE_PUSH and value > 1:
                raise ConnectionFault(ErrorCode.PROTOCOL_ERROR, "ENABLE_PUSH must be 0 or 1")
            elif (
                identifier == SETTINGS_HEADER_TABLE_SIZE
                and value < HEADER_TABLE_SIZE_DEFAULT
                and self._table_size_update_due is None
            ):
                # RFC 7541 §4.2: from our acknowledgement on, the client's decoder expects our next
                # block to start by shrinking the table (nghttp2, Envoy's codec, ends the connection
                # with COMPRESSION_ERROR otherwise). That block is queued after the ACK below.
                self._table_size_update_due = True
        self._send(frame(SETTINGS, ACK, 0))
        self._release_blocked()

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionFault(ErrorCode.FRAME_SIZE_ERROR, "a WINDOW_UPDATE of the wrong length")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if stream_id == 0:
            if increment == 0:
                raise ConnectionFault(ErrorCode.PROTOCOL_ERROR, "a WINDOW_UPDATE of 0")
            self._send_window += increment
            if self._send_window > WINDOW_MAX:
                raise ConnectionFault(ErrorCode.FLOW_CONTROL_ERROR, "the connection's window overflowed")
        else:
            stream = self.streams.get(stream_id)
            if stream is None:
                if stream_id > self._last_stream_id:  # RFC 9113 §5.1
                    raise ConnectionFault(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
                return
            if increment == 0:
                self._reset(stream, ErrorCode.PROTOCOL_ERROR)
                return
            stream.send_window += increment
            if stream.send_window > WINDOW_MAX:
                self._reset(stream, ErrorCode.FLOW_CONTROL_ERROR)
                return
        self._release_blocked()

    # --- answers -------------------------------------------------------------------------------
    def respond(self, stream: Stream, headers: bytes, body: bytes, trailers: bytes | None) -> None:
        """Answer `stream`: a header block, DATA, and a trailing header block (None: the
        headers end the stream, gRPC's trailers-only answer). A reset stream takes nothing."""
        if stream.answered or self.streams.get(stream.stream_id) is not stream:
            return
        stream.answered = True
        if trailers is None:
            self._send(self._header_frames(stream.stream_id, headers, END_STREAM))
            self._finish(stream)
            return
        self._send(self._header_frames(stream.stream_id, headers, 0))
        stream.pending, stream.pending_trailers = body, trailers
        self._send_pending(stream)

    def _send_pending(self, stream: Stream) -> None:
        while stream.pending:
            size = min(len(stream.pending), self._peer_frame_size, self._send_window, stream.send_window)
            if size <= 0:
                self._blocked[stream.stream_id] = stream
                return
            chunk, stream.pending = stream.pending[:size], stream.pending[size:]
            self._send_window -= size
            stream.send_window -= size
            self._send(frame(DATA, 0, stream.stream_id, chunk))
        self._blocked.pop(stream.stream_id, None)
        self._send(self._header_frames(stream.stream_id, stream.pending_trailers, END_STREAM))
        self._finish(stream)

    def _release_blocked(self) -> None:
        if not self._blocked:
            return  # the usual case: grpc-core sends WINDOW_UPDATEs with every answer it reads
        for stream in list(self._blocked.values()):
            if self._send_window <= 0:
                return
            self._send_pending(stream)

    def _header_frames(self, stream_id: int, block: bytes, flags: int) -> bytes:
        if self._table_size_update_due:
            self._table_size_update_due = False
            block = TABLE_SIZE_UPDATE_TO_0 + block
        limit = self._peer_frame_size
        if len(block) <= limit:
            return frame(HEADERS, flags | END_HEADERS, stream_id, block)
        parts = [block[offset : offset + limit] for offset in range(0, len(block), limit)]
        frames = [frame(HEADERS, flags, stream_id, parts[0])]
        frames += [frame(CONTINUATION, 0, stream_id, part) for part in parts[1:-1]]
        frames.append(frame(CONTINUATION, END_HEADERS, stream_id, parts[-1]))
        return b"".join(frames)

    def _finish(self, stream: Stream) -> None:
        """Our side has ended; a request the client has not ended yet is cut off."""
        if not stream.received:
            self._send(frame(RST_STREAM, 0, stream.stream_id, ErrorCode.NO_ERROR.to_bytes(4, "big")))
        self._forget(stream)
        self._close_if_drained()

    def _reset(self, stream: Stream, code: ErrorCode) -> None:
        self._send(frame(RST_STREAM, 0, stream.stream_id, code.to_bytes(4, "big")))
        self._forget(stream)
        if not stream.answered:
            self.stream_closed(stream)

    def _forget(self, stream: Stream) -> None:
        if self.streams.pop(stream.stream_id, None) is not None:
            self._buffered -= len(stream.body) + stream.header_list_bytes
        self._blocked.pop(stream.stream_id, None)

    # --- the connection ------------------------------------------------------------------------
    def go_away(self) -> None:
        """Stop taking streams; the connection closes once the ones in flight are answered."""
        if not self.going_away:
            self.going_away = True
            self._send(_goaway_frame(self._last_stream_id, ErrorCode.NO_ERROR, ""))
        self._close_if_drained()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _go_away(self, code: ErrorCode, detail: str) -> None:
        log.info("closing an HTTP/2 connection: %s (%s)", detail, code.name)
        self._send(_goaway_frame(self._last_stream_id, code, detail))
        self._flush()
        if self._transport is not None:
            self._linger()

    def _close_if_drained(self) -> None:
        if self.going_away and not self.streams and self._transport is not None:
            self._flush()
            self._linger()
            if not self.drained.done():
                self.drained.set_result(None)

    def _linger(self) -> None:
        """Close our side now and the socket a moment later: closed with the client's frames
        unread, a socket is reset, and a reset can discard our last frames before they are read."""
        assert self._transport is not None
        if self._transport.is_closing():
            return
        self._write_closed = True
        try:
            self._transport.write_eof()
        except (OSError, NotImplementedError):  # the client is gone already, or no half-close here
            self._transport.close()
            return
        asyncio.get_running_loop().call_later(LINGER_S, self.abort)

    def _send(self, data: bytes) -> None:
        # Answers finishing in one loop iteration (one group commit) leave in one write.
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self._transport is not None and not self._transport.is_closing() and not self._write_closed:
            self._transport.write(b"".join(self._out))
        self._out.clear()


def _header_list_size(headers: list[tuple[bytes, bytes]]) -> int:
    """SETTINGS_MAX_HEADER_LIST_SIZE's measure: each field's name and value plus 32 (RFC 9113 §6.5.2)."""
    return sum(len(name) + len(value) + 32 for name, value in headers)


def _checks_covering(timeout_s: float, interval_s: float) -> int:
    """Checks since a stamp after which `timeout_s` has certainly passed: the stamped moment lies
    anywhere in the interval after its check, so one interval more than the timeout's share."""
    return math.ceil(round(timeout_s / interval_s, 6)) + 1


def _goaway_frame(last_stream_id: int, code: ErrorCode, detail: str) -> bytes:
    return frame(GOAWAY, 0, 0, last_stream_id.to_bytes(4, "big") + code.to_bytes(4, "big") + detail.encode()[:256])


def _unpad(payload: bytes) -> bytes:
    if not payload:
        raise ConnectionFault(ErrorCode.PROTOCOL_ERROR, "a padded frame without its pad length")
    pad = payload[0]
    if pad >= len(payload):
        raise ConnectionFault(ErrorCode.PROTOCOL_ERROR, "padding longer than the frame")
    return payload[1 : len(payload) - pad]
