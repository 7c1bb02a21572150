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
  push, no priorities (PRIORITY is read and ignored, as RFC 9113 allows).

Header blocks are decoded with `hpack` (python-hyper's HPACK codec). The blocks we send are
literals without indexing, so we keep no encoder table and never touch the client's.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Final, cast

import hpack

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
    body: bytearray = field(default_factory=bytearray)
    unacknowledged: int = 0  # received bytes not yet given back with WINDOW_UPDATE
    body_too_large: bool = False  # past ConnectionLimits.body_bytes_max: answered at once
    received: bool = False  # the client ended its side
    answered: bool = False
    pending: bytes = b""  # our DATA that flow control holds back
    pending_trailers: bytes = b""
    task: asyncio.Task[None] | None = None


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    streams_max: int
    header_list_bytes_max: int
    body_bytes_max: int
    buffered_bytes_max: int  # request bytes held for the streams of one connection, all together
    handshake_timeout_s: float  # for the client's preface and SETTINGS


class Http2ServerConnection(asyncio.Protocol):
    """One client connection. Subclasses answer `request_received` with `respond`."""

    def __init__(self, limits: ConnectionLimits, *, refusal: str | None = None) -> None:
        """`refusal`: why this connection is closed as soon as it opens (None: it is served)."""
        self.limits = limits
        self.refusal = refusal
        self.streams: dict[int, Stream] = {}
        self._transport: asyncio.Transport | None = None
        self._buffered = 0
        self._handshake_timer: asyncio.TimerHandle | None = None
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
        self._handshake_timer = asyncio.get_running_loop().call_later(
            self.limits.handshake_timeout_s, self._handshake_timed_out
        )
        if self.refusal is not None:  # after SETTINGS, which must be the first frame a server sends
            self._send(_goaway_frame(0, ErrorCode.ENHANCE_YOUR_CALM, self.refusal))
            self._flush()
            self._linger()

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

    def connection_lost(self, exc: Exception | None) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
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
            return  # a stream that is closed already
        self._last_stream_id = stream_id
        if _header_list_size(headers) > self.limits.header_list_bytes_max:  # RFC 9113 §10.5.1
            self._send(frame(HEADERS, END_HEADERS | END_STREAM, stream_id, header_block([(b":status", b"431")])))
            if not flags & END_STREAM:
                self._send(frame(RST_STREAM, 0, stream_id, ErrorCode.NO_ERROR.to_bytes(4, "big")))
            return
        if self.going_away or len(self.streams) >= self.limits.streams_max:
            self._send(frame(RST_STREAM, 0, stream_id, ErrorCode.REFUSED_STREAM.to_bytes(4, "big")))
            return
        stream = Stream(stream_id, headers, self._peer_initial_window)
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
            if len(self._decoded_blocks) < DECODED_BLOCKS_CACHED:
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
            elif identifier == SETTINGS_MAX_FRAME_SIZE:
                if not DEFAULT_FRAME_SIZE <= value <= LARGEST_FRAME_SIZE:
                    raise ConnectionFault(ErrorCode.PROTOCOL_ERROR, "a max frame size out of range")
                self._peer_frame_size = value
            elif identifier == SETTINGS_ENABLE_PUSH and value > 1:
                raise ConnectionFault(ErrorCode.PROTOCOL_ERROR, "ENABLE_PUSH must be 0 or 1")
            # HEADER_TABLE_SIZE needs nothing: our blocks never use the dynamic table.
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
            self._buffered -= len(stream.body)
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


def _goaway_frame(last_stream_id: int, code: ErrorCode, detail: str) -> bytes:
    return frame(GOAWAY, 0, 0, last_stream_id.to_bytes(4, "big") + code.to_bytes(4, "big") + detail.encode()[:256])


def _unpad(payload: bytes) -> bytes:
    if not payload:
        raise ConnectionFault(ErrorCode.PROTOCOL_ERROR, "a padded frame without its pad length")
    pad = payload[0]
    if pad >= len(payload):
        raise ConnectionFault(ErrorCode.PROTOCOL_ERROR, "padding longer than the frame")
    return payload[1 : len(payload) - pad]
