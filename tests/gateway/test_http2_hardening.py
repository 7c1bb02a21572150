"""Our HTTP/2 server against clients that shrink the HPACK table, go quiet, hold streams open or
break the stream rules: each case a reviewer found the server getting wrong.

Raw frames as in test_grpc_http2.py; the table size case also through libnghttp2, the HTTP/2
library inside Envoy, driven with ctypes (skipped where the library is not installed).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from hyperframe.frame import (
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from lockgate_server.gateway.grpc_server import GrpcConnection, GrpcServer, Metadata
from lockgate_server.gateway.http2 import DECODED_BLOCK_BYTES_MAX, WINDOW_MAX, ErrorCode
from lockgate_server.gateway.proto.envoy.service.ratelimit.v3.rls_pb2 import RateLimitRequest, RateLimitResponse

from .test_grpc_http2 import PATH, PREFACE, FrameClient, decoded, echo, grpc_message, start_server

Serve = Callable[..., Awaitable[tuple[GrpcServer, int]]]


@pytest.fixture
async def served() -> AsyncIterator[Serve]:
    """served(handler=echo, **limits) -> (server, port); every server is stopped after the test."""
    servers: list[GrpcServer] = []

    async def start(handler: Any = echo, **limits: Any) -> tuple[GrpcServer, int]:
        server, port = await start_server(handler, **limits)
        servers.append(server)
        return server, port

    yield start
    for server in servers:
        await server.stop(1.0)


def only_connection(server: GrpcServer) -> GrpcConnection:
    (connection,) = server._connections
    return connection


async def frames_until_pong(client: FrameClient) -> list[Frame]:
    """The frames the server sends before answering a PING sent now: all it made of what came before."""
    client.send(PingFrame(0, b"sync...."))
    seen: list[Frame] = []
    while not (isinstance(frame := await client.frame(), PingFrame) and frame.opaque_data == b"sync...."):
        seen.append(frame)
    return seen


# --- 1. a client that shrinks its HPACK table ---------------------------------------------------


async def test_a_client_that_shrinks_its_table_gets_a_size_update_first(served: Serve) -> None:
    """RFC 7541 §4.2: hpack's decoder, like nghttp2's, refuses a block without the update."""
    _, port = await served()
    client = await FrameClient.open(port, {SettingsFrame.HEADER_TABLE_SIZE: 0})
    client.decoder.max_allowed_table_size = 0  # what the client's decoder applies from the server's ACK on
    client.call(1, RateLimitRequest(domain="deny"))
    while not (isinstance(frame := await client.frame(), HeadersFrame) and frame.stream_id == 1):
        pass
    first_block = frame.data
    assert first_block[:1] == b"\x20", "the first block after the ACK must shrink the table to 0"
    assert dict(client.decoder.decode(first_block, raw=True))[b":status"] == b"200"
    _, data, trailers = await client.answer(1)
    assert decoded(data).overall_code == RateLimitResponse.OVER_LIMIT and trailers == {"grpc-status": "0"}
    client.call(3, RateLimitRequest(domain="x"))  # the update is owed once
    assert (await client.answer(3))[2] == {"grpc-status": "0"}
    client.close()


_NGHTTP2 = ctypes.util.find_library("nghttp2")


class _NameValue(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("value", ctypes.c_char_p),
        ("namelen", ctypes.c_size_t),
        ("valuelen", ctypes.c_size_t),
        ("flags", ctypes.c_uint8),
    ]


class _SettingsEntry(ctypes.Structure):
    _fields_ = [("settings_id", ctypes.c_int32), ("value", ctypes.c_uint32)]


_ReadBody = ctypes.CFUNCTYPE(
    ctypes.c_ssize_t,
    ctypes.c_void_p,
    ctypes.c_int32,
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.POINTER(ctypes.c_uint32),
    ctypes.c_void_p,
    ctypes.c_void_p,
)
_OnHeader = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_uint8,
    ctypes.c_void_p,
)


class _DataProvider(ctypes.Structure):
    _fields_ = [("source", ctypes.c_void_p), ("read_callback", _ReadBody)]


@pytest.mark.skipif(_NGHTTP2 is None, reason="libnghttp2 (the HTTP/2 library inside Envoy) is not installed")
async def test_nghttp2_reads_our_answer_after_shrinking_its_table(served: Serve) -> None:
    """Envoy's `hpack_table_size: 0`: before the fix nghttp2 ended the connection (COMPRESSION_ERROR)."""
    _, port = await served()
    nghttp2 = ctypes.CDLL(_NGHTTP2)
    nghttp2.nghttp2_session_mem_send.restype = ctypes.c_ssize_t
    nghttp2.nghttp2_session_mem_send.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]
    nghttp2.nghttp2_session_mem_recv.restype = ctypes.c_ssize_t
    nghttp2.nghttp2_session_mem_recv.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    received: list[tuple[bytes, bytes]] = []

    @_OnHeader
    def on_header(session: Any, frame: Any, name: int, name_length: int, value: int, value_length: int, *_: Any) -> int:
        received.append((ctypes.string_at(name, name_length), ctypes.string_at(value, value_length)))
        return 0

    body = grpc_message(RateLimitRequest(domain="deny"))

    @_ReadBody
    def read_body(session: Any, stream_id: int, buffer: int, length: int, flags: Any, *_: Any) -> int:
        ctypes.memmove(buffer, body, len(body))  # far below `length`, one call is the whole body
        flags[0] |= 0x1  # NGHTTP2_DATA_FLAG_EOF
        return len(body)

    callbacks, session = ctypes.c_void_p(), ctypes.c_void_p()
    nghttp2.nghttp2_session_callbacks_new(ctypes.byref(callbacks))
    nghttp2.nghttp2_session_callbacks_set_on_header_callback(callbacks, on_header)
    nghttp2.nghttp2_session_client_new(ctypes.byref(session), callbacks, None)
    settings = (_SettingsEntry * 1)(_SettingsEntry(0x1, 0))  # SETTINGS_HEADER_TABLE_SIZE: 0
    nghttp2.nghttp2_submit_settings(session, 0, settings, 1)
    fields = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", PATH.encode()), (b":authority", b"test")]
    fields += [(b"content-type", b"application/grpc"), (b"te", b"trailers")]
    headers = (_NameValue * len(fields))(*(_NameValue(n, v, len(n), len(v), 0) for n, v in fields))
    provider = _DataProvider(None, read_body)
    assert nghttp2.nghttp2_submit_request(session, None, headers, len(fields), ctypes.byref(provider), None) == 1

    def outgoing() -> bytes:
        out = b""
        while (size := nghttp2.nghttp2_session_mem_send(session, ctypes.byref(pointer := ctypes.c_void_p()))) > 0:
            out += ctypes.string_at(pointer, size)
        return out

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = b""
    try:
        writer.write(outgoing())
        async with asyncio.timeout(5):
            while not any(name == b"grpc-status" for name, _ in received) and (chunk := await reader.read(65_536)):
                assert nghttp2.nghttp2_session_mem_recv(session, chunk, len(chunk)) == len(chunk)
                out = outgoing()
                sent += out
                writer.write(out)
        goaways = [frame for frame in _parsed(sent) if isinstance(frame, GoAwayFrame)]
        assert not goaways, f"nghttp2 ended the connection: {ErrorCode(goaways[0].error_code).name}"
        assert (b":status", b"200") in received and (b"grpc-status", b"0") in received
    finally:
        writer.close()
        nghttp2.nghttp2_session_del(session)
        nghttp2.nghttp2_session_callbacks_del(callbacks)


def _parsed(data: bytes) -> list[Frame]:
    frames, position = [], 0
    while position + 9 <= len(data):
        frame, length = Frame.parse_frame_header(memoryview(data[position : position + 9]))
        frame.parse_body(memoryview(data[position + 9 : position + 9 + length]))
        frames.append(frame)
        position += 9 + length
    return frames


# --- 2. idle connections and requests that never end ------------------------------------------


async def test_quiet_connections_are_closed_and_free_their_places(served: Serve) -> None:
    """Two clients that say hello, then nothing (nor read), held a connections_max=2 server for ever."""
    _, port = await served(connections_max=2, idle_timeout_s=0.2)
    quiet = []
    for _ in range(2):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(PREFACE + SettingsFrame(0).serialize())
        quiet.append((reader, writer))
    for reader, writer in quiet:
        async with asyncio.timeout(5):  # the server's end of the connection
            while await reader.read(65_536):
                pass
        writer.close()
    await asyncio.sleep(0.2)  # the server sees the closes
    client = await FrameClient.open(port)
    client.call(1, RateLimitRequest(domain="x"))
    assert (await client.answer(1))[2] == {"grpc-status": "0"}
    client.close()


async def test_an_idle_connection_goes_away_gracefully_and_serves_a_call_that_crossed(served: Serve) -> None:
    _, port = await served(idle_timeout_s=0.2)
    client = await FrameClient.open(port)
    started = asyncio.get_running_loop().time()
    client.call(1, RateLimitRequest(domain="x"))
    await client.answer(1)
    first = await client.goaway()
    assert asyncio.get_running_loop().time() - started >= 0.2
    assert (first.error_code, first.last_stream_id) == (ErrorCode.NO_ERROR, WINDOW_MAX)
    ping = await client.frame()
    assert isinstance(ping, PingFrame) and "ACK" not in ping.flags
    client.call(3, RateLimitRequest(domain="deny"))  # sent before the client read the GOAWAY
    assert decoded((await client.answer(3))[1]).overall_code == RateLimitResponse.OVER_LIMIT
    client.send(PingFrame(0, ping.opaque_data, flags=["ACK"]))
    last = await client.goaway()
    assert (last.error_code, last.last_stream_id) == (ErrorCode.NO_ERROR, 3)
    await client.wait_closed()
    client.close()


async def test_a_request_that_never_ends_is_reset_and_a_slow_handler_is_not(served: Serve) -> None:
    async def slow(request: RateLimitRequest, metadata: Metadata) -> RateLimitResponse:
        await asyncio.sleep(0.5)  # longer than the request timeout: the request itself was complete
        return RateLimitResponse(overall_code=RateLimitResponse.OK)

    server, port = await served(slow, request_timeout_s=0.2)
    client = await FrameClient.open(port)
    started = asyncio.get_running_loop().time()
    client.call(1, RateLimitRequest(domain="x"))
    message = grpc_message(RateLimitRequest(domain="x"))
    client.send(HeadersFrame(3, client.header_block(), flags=["END_HEADERS"]), DataFrame(3, message[:3]))
    while not isinstance(frame := await client.frame(), RstStreamFrame):
        pass
    assert (frame.stream_id, frame.error_code) == (3, ErrorCode.CANCEL)
    assert asyncio.get_running_loop().time() - started >= 0.2
    assert only_connection(server).requests_timed_out == 1
    _, data, trailers = await client.answer(1)
    assert decoded(data).overall_code == RateLimitResponse.OK and trailers == {"grpc-status": "0"}
    client.close()


async def test_an_answer_the_client_never_takes_is_reset_and_frees_its_place(served: Serve) -> None:
    server, port = await served(request_timeout_s=0.3, streams_max=1)
    client = await FrameClient.open(port, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 0})
    started = asyncio.get_running_loop().time()
    client.call(1, RateLimitRequest(domain="x"))  # answered, but no window for its DATA
    while not isinstance(frame := await client.frame(), RstStreamFrame):
        assert not isinstance(frame, DataFrame), "DATA sent past a shut window"
    assert (frame.stream_id, frame.error_code) == (1, ErrorCode.CANCEL)
    assert asyncio.get_running_loop().time() - started >= 0.3
    connection = only_connection(server)
    assert connection.streams == {} and connection.requests_timed_out == 1
    client.send(SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 65_535}))
    client.call(3, RateLimitRequest(domain="x"))  # the one place is free again
    _, data, trailers = await client.answer(3)
    assert decoded(data).overall_code == RateLimitResponse.OK and trailers == {"grpc-status": "0"}
    client.close()


# --- 3. header lists of open streams are request bytes ------------------------------------------


async def test_open_streams_header_lists_count_against_the_connection_buffer(served: Serve) -> None:
    _, port = await served(buffered_bytes_max=20_000)
    client = await FrameClient.open(port)
    for number, stream_id in enumerate((1, 3, 5, 7)):  # about 5,200 bytes of header list each, never ended
        padding = ("x-pad", chr(ord("a") + number) * 4_900)
        client.send(HeadersFrame(stream_id, client.header_block(padding), flags=["END_HEADERS"]))
    resets = [frame for frame in await frames_until_pong(client) if isinstance(frame, RstStreamFrame)]
    assert [(frame.stream_id, frame.error_code) for frame in resets] == [(7, ErrorCode.ENHANCE_YOUR_CALM)]
    client.send(RstStreamFrame(1, error_code=ErrorCode.CANCEL))  # the client gives one up: its bytes are freed
    client.call(9, RateLimitRequest(domain="deny"), ("x-pad", "e" * 4_900))
    assert decoded((await client.answer(9))[1]).overall_code == RateLimitResponse.OVER_LIMIT
    client.close()


# --- 4. the decoded-block cache ------------------------------------------------------------------


async def test_only_short_header_blocks_within_the_limit_are_kept_decoded(served: Serve) -> None:
    server, port = await served(header_list_bytes_max=4_000)
    client = await FrameClient.open(port)
    big = ("x-big", "b" * 3_000)  # one dynamic table entry of 3,037 bytes (RFC 9113's measure)
    for stream_id in (1, 3):  # the second time, the block is table indexes only: a few bytes
        client.call(stream_id, RateLimitRequest(domain="x"), big)
        await client.answer(stream_id)
    repeated = client.header_block(big)  # what the client sends for the same call from now on
    assert len(repeated) <= DECODED_BLOCK_BYTES_MAX and min(repeated) >= 0x80
    over_the_limit = b"\xbe\xbe"  # the newest dynamic entry (x-big) twice: 6,074 bytes, answered 431
    long_block = b"\x84" * 80  # `:path: /` 80 times: 3,040 bytes, within the limit, but 80 fields to keep
    client.send(
        HeadersFrame(5, over_the_limit, flags=["END_HEADERS", "END_STREAM"]),
        HeadersFrame(7, long_block, flags=["END_HEADERS", "END_STREAM"]),
    )
    await frames_until_pong(client)
    cached = only_connection(server)._decoded_blocks
    assert repeated in cached, "the cache is for blocks like this one"
    assert over_the_limit not in cached and long_block not in cached
    client.close()


# --- 5. stream rules of RFC 9113 -----------------------------------------------------------------


async def test_a_new_stream_below_the_highest_one_is_a_protocol_error(served: Serve) -> None:
    _, port = await served()
    client = await FrameClient.open(port)
    client.call(5, RateLimitRequest(domain="x"))
    await client.answer(5)
    client.call(3, RateLimitRequest(domain="x"))  # RFC 9113 §5.1.1: stream ids only grow
    assert (await client.goaway()).error_code == ErrorCode.PROTOCOL_ERROR
    await client.wait_closed()
    client.close()


async def test_trailers_on_a_stream_we_closed_are_still_ignored(served: Serve) -> None:
    _, port = await served(body_bytes_max=100)
    client = await FrameClient.open(port)
    client.send(
        HeadersFrame(1, client.header_block(), flags=["END_HEADERS"]),
        DataFrame(1, grpc_message(RateLimitRequest(domain="x" * 200))),  # over the limit: answered at once
    )
    await client.answer(1)
    trailers = bytes(client.encoder.encode([("x-trailer", "late")]))  # no pseudo-header fields
    client.send(HeadersFrame(1, trailers, flags=["END_HEADERS", "END_STREAM"]))
    assert not [frame for frame in await frames_until_pong(client) if isinstance(frame, GoAwayFrame)]
    client.call(3, RateLimitRequest(domain="x"))
    assert (await client.answer(3))[2] == {"grpc-status": "0"}
    client.close()


async def test_a_settings_change_past_the_largest_window_is_a_flow_control_error(served: Serve) -> None:
    _, port = await served()
    client = await FrameClient.open(port)
    client.send(
        HeadersFrame(1, client.header_block(), flags=["END_HEADERS"]),
        WindowUpdateFrame(1, WINDOW_MAX - 65_535),  # the stream's window at the largest allowed
        SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: WINDOW_MAX}),  # RFC 9113 §6.9.2
    )
    assert (await client.goaway()).error_code == ErrorCode.FLOW_CONTROL_ERROR
    await client.wait_closed()
    client.close()


async def test_window_update_on_an_idle_stream_is_a_protocol_error(served: Serve) -> None:
    _, port = await served()
    client = await FrameClient.open(port)
    client.send(WindowUpdateFrame(99, 10))  # RFC 9113 §5.1: stream 99 was never opened
    assert (await client.goaway()).error_code == ErrorCode.PROTOCOL_ERROR
    await client.wait_closed()
    client.close()
