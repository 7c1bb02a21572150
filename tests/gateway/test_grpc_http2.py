"""Our gRPC server's HTTP/2 under the cases a well-behaved grpcio client never makes.

The server runs in the test's event loop on a real socket, with handlers of the test's own; the
client writes and reads raw frames (hyperframe builds and parses them, hpack codes the headers),
so flow control, resets, deadlines and protocol errors are under the test's control. The Envoy
service on this server is tested through grpcio in test_grpc.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import hpack
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from lockgate_server.gateway.grpc_server import Abort, GrpcServer, Metadata, StatusCode, UnaryMethod, grpc_timeout_s
from lockgate_server.gateway.http2 import ConnectionLimits, ErrorCode
from lockgate_server.gateway.proto.envoy.config.core.v3.base_pb2 import HeaderValue
from lockgate_server.gateway.proto.envoy.service.ratelimit.v3.rls_pb2 import RateLimitRequest, RateLimitResponse
from lockgate_server.storage.embedded import free_port

PATH = "/test.Limits/Decide"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
Handler = Callable[[RateLimitRequest, Metadata], Awaitable[RateLimitResponse]]


async def echo(request: RateLimitRequest, metadata: Metadata) -> RateLimitResponse:
    """OVER_LIMIT for domain "deny"; the request's size and its x-test header in the answer."""
    code = RateLimitResponse.OVER_LIMIT if request.domain == "deny" else RateLimitResponse.OK
    headers = [HeaderValue(key="size", value=str(request.ByteSize()))]
    headers.append(HeaderValue(key="x-test", value=metadata.get(b"x-test", b"").decode()))
    return RateLimitResponse(overall_code=code, response_headers_to_add=headers)


def grpc_message(message: Any) -> bytes:
    data = message.SerializeToString()
    return b"\x00" + len(data).to_bytes(4, "big") + data


class FrameClient:
    """One HTTP/2 connection driven frame by frame."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.encoder, self.decoder = hpack.Encoder(), hpack.Decoder()

    @classmethod
    async def open(cls, port: int, settings: dict[int, int] | None = None) -> FrameClient:
        client = cls(*await asyncio.open_connection("127.0.0.1", port))
        client.writer.write(PREFACE)
        client.send(SettingsFrame(0, settings=settings or {}))
        return client

    def send(self, *frames: Frame) -> None:
        self.writer.write(b"".join(frame.serialize() for frame in frames))

    def header_block(self, *extra: tuple[str, str], path: str = PATH) -> bytes:
        headers = [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "test")]
        headers += [("content-type", "application/grpc"), ("te", "trailers"), *extra]
        return bytes(self.encoder.encode(headers))

    def call(self, stream_id: int, request: RateLimitRequest, *extra: tuple[str, str]) -> None:
        self.send(
            HeadersFrame(stream_id, self.header_block(*extra), flags=["END_HEADERS"]),
            DataFrame(stream_id, grpc_message(request), flags=["END_STREAM"]),
        )

    async def frame(self) -> Frame:
        """The next frame; SETTINGS are acknowledged as they come."""
        async with asyncio.timeout(5):
            header = await self.reader.readexactly(9)
            frame, length = Frame.parse_frame_header(memoryview(header))
            frame.parse_body(memoryview(await self.reader.readexactly(length)))
        if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
            with contextlib.suppress(ConnectionError):  # a server that refuses us may be gone already
                self.send(SettingsFrame(0, flags=["ACK"]))
        return frame

    async def answer(self, stream_id: int) -> tuple[dict[str, str], bytes, dict[str, str]]:
        """(headers, DATA, trailers) of `stream_id`; trailers-only answers give the headers twice."""
        blocks: list[dict[str, str]] = []
        data = b""
        while True:
            frame = await self.frame()
            if frame.stream_id != stream_id:
                continue
            if isinstance(frame, RstStreamFrame):
                raise AssertionError(f"stream reset with {ErrorCode(frame.error_code).name}")
            if isinstance(frame, HeadersFrame):
                fields = self.decoder.decode(frame.data, raw=True)
                blocks.append({name.decode(): value.decode() for name, value in fields})
            elif isinstance(frame, DataFrame):
                data += frame.data
            if "END_STREAM" in frame.flags:
                return blocks[0], data, blocks[-1]

    async def goaway(self) -> GoAwayFrame:
        while True:
            frame = await self.frame()
            if isinstance(frame, GoAwayFrame):
                return frame

    async def wait_closed(self) -> None:
        """Returns once the server has closed the connection; TimeoutError if it does not."""
        async with asyncio.timeout(5):
            try:
                while await self.reader.read(65_536):
                    pass
            except ConnectionResetError:
                pass  # closed with some of our bytes unread, as after a protocol error

    def close(self) -> None:
        self.writer.close()


StartServer = Callable[..., Awaitable[int]]


async def start_server(handler: Handler, *, connections_max: int = 10, **limits: float) -> tuple[GrpcServer, int]:
    """A GrpcServer answering PATH with `handler`, and its port."""
    settings = {
        "streams_max": 100,
        "header_list_bytes_max": 16_384,
        "body_bytes_max": 1 << 20,
        "buffered_bytes_max": 4 << 20,
        "handshake_timeout_s": 5.0,
    } | limits
    method = UnaryMethod(RateLimitRequest.FromString, RateLimitResponse.SerializeToString, handler)
    server = GrpcServer({PATH: method}, ConnectionLimits(**settings), connections_max=connections_max)
    port = free_port()
    await server.start("127.0.0.1", port)
    return server, port


@pytest.fixture
async def serve() -> AsyncIterator[StartServer]:
    """serve(handler, **limits) -> the port of a server that is stopped after the test."""
    servers: list[GrpcServer] = []

    async def start(handler: Handler = echo, **limits: float) -> int:
        server, port = await start_server(handler, **limits)
        servers.append(server)
        return port

    yield start
    for server in servers:
        await server.stop(1.0)


def unary(channel: grpc.aio.Channel, path: str = PATH) -> grpc.aio.UnaryUnaryMultiCallable:
    return channel.unary_unary(
        path, request_serializer=RateLimitRequest.SerializeToString, response_deserializer=RateLimitResponse.FromString
    )


def decoded(data: bytes) -> RateLimitResponse:
    assert data[0] == 0 and int.from_bytes(data[1:5], "big") == len(data) - 5
    return RateLimitResponse.FromString(data[5:])


async def test_a_call_answers_headers_message_and_ok_trailers(serve: StartServer) -> None:
    client = await FrameClient.open(await serve())
    client.call(1, RateLimitRequest(domain="deny"), ("x-test", "seen"))
    headers, data, trailers = await client.answer(1)
    assert headers == {":status": "200", "content-type": "application/grpc"}
    answer = decoded(data)
    assert answer.overall_code == RateLimitResponse.OVER_LIMIT
    assert {h.key: h.value for h in answer.response_headers_to_add}["x-test"] == "seen"
    assert trailers == {"grpc-status": "0"}
    client.close()


async def test_ping_is_acknowledged_with_its_payload(serve: StartServer) -> None:
    client = await FrameClient.open(await serve())
    client.send(PingFrame(0, b"12345678"))
    while not isinstance(frame := await client.frame(), PingFrame):
        pass
    assert "ACK" in frame.flags and frame.opaque_data == b"12345678"
    client.close()


async def test_our_data_waits_for_the_clients_window(serve: StartServer) -> None:
    client = await FrameClient.open(await serve(), {SettingsFrame.INITIAL_WINDOW_SIZE: 8})
    client.call(1, RateLimitRequest(domain="a" * 100))
    received = b""
    while True:
        frame = await client.frame()
        if isinstance(frame, DataFrame):
            received += frame.data
            assert len(received) <= 8, "DATA beyond the stream's window"
            if len(received) == 8:
                break
        assert not isinstance(frame, HeadersFrame) or "END_STREAM" not in frame.flags
    with pytest.raises(TimeoutError):  # nothing more until the window opens
        async with asyncio.timeout(0.3):
            await client.frame()
    client.send(WindowUpdateFrame(1, window_increment=1000))
    _, rest, trailers = await client.answer(1)
    size = RateLimitRequest(domain="a" * 100).ByteSize()
    assert decoded(received + rest).response_headers_to_add[0].value == str(size)
    assert trailers == {"grpc-status": "0"}
    client.close()


async def test_a_request_larger_than_the_default_window_is_read_whole(serve: StartServer) -> None:
    port = await serve()
    request = RateLimitRequest(domain="x" * 300_000)  # several times the 65,535-byte initial window
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = unary(channel)
        answer = await call(request, timeout=10)
        assert answer.response_headers_to_add[0].value == str(request.ByteSize())


async def test_a_message_over_the_limit_is_resource_exhausted_and_the_connection_lives_on(serve: StartServer) -> None:
    port = await serve(body_bytes_max=10_000)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = unary(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(RateLimitRequest(domain="x" * 50_000), timeout=5)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (await call(RateLimitRequest(domain="deny"), timeout=5)).overall_code == RateLimitResponse.OVER_LIMIT


async def test_an_unknown_method_is_unimplemented(serve: StartServer) -> None:
    port = await serve()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = unary(channel, "/test.Limits/Other")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(RateLimitRequest(domain="x"), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_a_handlers_abort_becomes_the_status_with_its_message_encoded(serve: StartServer) -> None:
    async def refuse(request: RateLimitRequest, metadata: Metadata) -> RateLimitResponse:
        raise Abort(StatusCode.PERMISSION_DENIED, "no rights on «gateway» 100%")

    port = await serve(refuse)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = unary(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(RateLimitRequest(domain="x"), timeout=5)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert refused.value.details() == "no rights on «gateway» 100%"


def blocking_handler() -> tuple[Handler, asyncio.Event, list[str]]:
    """A handler that waits until cancelled, and what happened to it."""
    started, outcomes = asyncio.Event(), []

    async def wait(request: RateLimitRequest, metadata: Metadata) -> RateLimitResponse:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            outcomes.append("cancelled")
            raise
        return RateLimitResponse()

    return wait, started, outcomes


async def test_grpc_timeout_ends_the_call_with_deadline_exceeded(serve: StartServer) -> None:
    handler, _, outcomes = blocking_handler()
    client = await FrameClient.open(await serve(handler))
    client.call(1, RateLimitRequest(domain="x"), ("grpc-timeout", "100m"))
    async with asyncio.timeout(2):
        _, data, trailers = await client.answer(1)
    assert data == b"" and trailers["grpc-status"] == str(StatusCode.DEADLINE_EXCEEDED.value)
    assert outcomes == ["cancelled"]
    client.close()


async def test_a_handlers_own_timeout_is_internal_not_deadline_exceeded(serve: StartServer) -> None:
    async def times_out(request: RateLimitRequest, metadata: Metadata) -> RateLimitResponse:
        raise TimeoutError("a bug, not the caller's deadline")

    client = await FrameClient.open(await serve(times_out))
    client.call(1, RateLimitRequest(domain="x"), ("grpc-timeout", "5S"))
    _, _, trailers = await client.answer(1)
    assert trailers["grpc-status"] == str(StatusCode.INTERNAL.value)
    client.close()


async def test_a_reset_stream_cancels_its_call_and_the_connection_serves_on(serve: StartServer) -> None:
    handler, started, outcomes = blocking_handler()
    waiting_port = await serve(handler)
    client = await FrameClient.open(waiting_port)
    client.call(1, RateLimitRequest(domain="x"))
    async with asyncio.timeout(5):
        await started.wait()
    client.send(RstStreamFrame(1, error_code=ErrorCode.CANCEL))
    for _ in range(100):
        if outcomes:
            break
        await asyncio.sleep(0.01)
    assert outcomes == ["cancelled"]
    client.send(PingFrame(0, b"still-up"))  # the connection is still served
    while not isinstance(frame := await client.frame(), PingFrame):
        assert not isinstance(frame, GoAwayFrame)
    client.close()


async def test_streams_beyond_the_limit_are_refused(serve: StartServer) -> None:
    handler, _, _ = blocking_handler()
    client = await FrameClient.open(await serve(handler, streams_max=2))
    for stream_id in (1, 3, 5):
        client.call(stream_id, RateLimitRequest(domain="x"))
    while not isinstance(frame := await client.frame(), RstStreamFrame):
        pass
    assert (frame.stream_id, frame.error_code) == (5, ErrorCode.REFUSED_STREAM)
    client.close()


async def test_header_blocks_in_continuation_frames_and_padded_frames_are_read(serve: StartServer) -> None:
    client = await FrameClient.open(await serve())
    block = client.header_block(("x-test", "continued"))
    client.send(
        HeadersFrame(1, block[:10], flags=["PADDED"], pad_length=7),
        ContinuationFrame(1, block[10:20]),
        ContinuationFrame(1, block[20:], flags=["END_HEADERS"]),
        DataFrame(1, grpc_message(RateLimitRequest(domain="deny")), flags=["END_STREAM", "PADDED"], pad_length=20),
    )
    _, data, trailers = await client.answer(1)
    answer = decoded(data)
    assert answer.overall_code == RateLimitResponse.OVER_LIMIT
    assert {h.key: h.value for h in answer.response_headers_to_add}["x-test"] == "continued"
    assert trailers == {"grpc-status": "0"}
    client.close()


async def test_a_header_list_over_the_limit_gets_431_and_the_table_stays_in_step(serve: StartServer) -> None:
    client = await FrameClient.open(await serve(header_list_bytes_max=1_000))
    # The big fields come first: a decoder that stops at the limit never adds the ones after
    # them to its table, which the client's next block then points at.
    big = [("x-pad1", "a" * 500), ("x-pad2", "b" * 500)]
    usual = [(":method", "POST"), (":scheme", "http"), (":path", PATH), (":authority", "test")]
    usual += [("content-type", "application/grpc"), ("te", "trailers"), ("x-test", "first")]
    block = bytes(client.encoder.encode([*big, *usual]))
    client.send(
        HeadersFrame(1, block, flags=["END_HEADERS"]),
        DataFrame(1, grpc_message(RateLimitRequest(domain="x")), flags=["END_STREAM"]),
    )
    headers, data, _ = await client.answer(1)
    assert headers[":status"] == "431" and data == b""
    for stream_id in (3, 5):  # table indexes only, the second time from the server's cache
        client.call(stream_id, RateLimitRequest(domain="deny"), ("x-test", "first"))
        _, data, trailers = await client.answer(stream_id)
        assert trailers == {"grpc-status": "0"}
        answer = decoded(data)
        assert answer.overall_code == RateLimitResponse.OVER_LIMIT
        assert {h.key: h.value for h in answer.response_headers_to_add}["x-test"] == "first"
    client.close()


async def test_a_header_list_far_over_the_limit_ends_the_connection(serve: StartServer) -> None:
    client = await FrameClient.open(await serve(header_list_bytes_max=1_000))
    client.call(1, RateLimitRequest(domain="x"), ("x-huge", "h" * 9_000))  # over 8 times the limit
    assert (await client.goaway()).error_code == ErrorCode.ENHANCE_YOUR_CALM
    await client.wait_closed()
    client.close()


async def test_unfinished_bodies_are_bounded_per_connection(serve: StartServer) -> None:
    client = await FrameClient.open(await serve(buffered_bytes_max=100_000))
    message = grpc_message(RateLimitRequest(domain="x" * 60_000))
    first, rest = message[:16_000], message[16_000:]
    for stream_id in (1, 3, 5, 7, 9, 11, 13):  # 7 x 16,000 bytes held, never finished: too many
        client.send(HeadersFrame(stream_id, client.header_block(), flags=["END_HEADERS"]), DataFrame(stream_id, first))
    while not isinstance(frame := await client.frame(), RstStreamFrame):
        pass
    assert (frame.stream_id, frame.error_code) == (13, ErrorCode.ENHANCE_YOUR_CALM)
    for stream_id in (3, 5, 7):  # the client gives up on three: their bytes are freed
        client.send(RstStreamFrame(stream_id, error_code=ErrorCode.CANCEL))
    for offset in range(0, len(rest), 16_000):  # so a held stream completes
        last = offset + 16_000 >= len(rest)
        client.send(DataFrame(1, rest[offset : offset + 16_000], flags=["END_STREAM"] if last else []))
    _, data, trailers = await client.answer(1)
    assert trailers == {"grpc-status": "0"}
    assert decoded(data).response_headers_to_add[0].value == str(RateLimitRequest(domain="x" * 60_000).ByteSize())
    client.close()


async def test_a_connection_that_never_says_hello_is_closed(serve: StartServer) -> None:
    port = await serve(handshake_timeout_s=0.2)
    client = FrameClient(*await asyncio.open_connection("127.0.0.1", port))  # no preface, no SETTINGS
    assert (await client.goaway()).error_code == ErrorCode.PROTOCOL_ERROR
    await client.wait_closed()
    client.close()


OPENED = PREFACE + SettingsFrame(0).serialize()


@pytest.mark.parametrize(
    ("opening", "code"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", ErrorCode.PROTOCOL_ERROR),  # not HTTP/2
        (PREFACE + PingFrame(0, b"12345678").serialize(), ErrorCode.PROTOCOL_ERROR),  # SETTINGS must come first
        (OPENED + HeadersFrame(2, b"", flags=["END_HEADERS"]).serialize(), ErrorCode.PROTOCOL_ERROR),
        (OPENED + b"\x00\x40\x01\x00\x00\x00\x00\x00\x01", ErrorCode.FRAME_SIZE_ERROR),  # 16 KiB + 1
        (OPENED + HeadersFrame(1, b"\xff\xff\xff\xff", flags=["END_HEADERS"]).serialize(), ErrorCode.COMPRESSION_ERROR),
    ],
    ids=["http1", "ping-first", "even-stream", "oversized-frame", "bad-hpack"],
)
async def test_a_broken_connection_gets_goaway_and_is_closed(
    serve: StartServer, opening: bytes, code: ErrorCode
) -> None:
    port = await serve()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    client = FrameClient(reader, writer)
    writer.write(opening)
    goaway = await client.goaway()
    assert goaway.error_code == code
    await client.wait_closed()
    client.close()


async def test_stop_answers_calls_in_flight_then_closes() -> None:
    release = asyncio.Event()

    async def slow(request: RateLimitRequest, metadata: Metadata) -> RateLimitResponse:
        await release.wait()
        return RateLimitResponse(overall_code=RateLimitResponse.OK)

    server, port = await start_server(slow)
    client = await FrameClient.open(port)
    client.call(1, RateLimitRequest(domain="x"))
    await asyncio.sleep(0.1)
    stopping = asyncio.create_task(server.stop(5.0))
    goaway = await client.goaway()
    assert goaway.error_code == ErrorCode.NO_ERROR and goaway.last_stream_id == 1
    release.set()
    _, data, trailers = await client.answer(1)
    assert decoded(data).overall_code == RateLimitResponse.OK and trailers == {"grpc-status": "0"}
    await asyncio.wait_for(stopping, 5)
    await client.wait_closed()
    client.close()


async def test_a_repeated_header_block_is_decoded_against_the_current_table(serve: StartServer) -> None:
    """Blocks of indexed fields only are kept decoded; one that changes the table must drop them."""
    client = await FrameClient.open(await serve())
    reference = hpack.Decoder()  # what any HPACK decoder makes of the same blocks, in order
    blocks = [client.header_block(("x-test", "one")), client.header_block(("x-test", "one"))]
    assert min(blocks[1]) >= 0x80, "the encoder should repeat the headers as table indexes only"
    blocks.append(client.header_block(("x-test", "two")))  # a literal: the table shifts
    blocks.append(blocks[1])  # the same bytes now point at other entries
    for number, block in enumerate(blocks):
        stream_id = 2 * number + 1
        client.send(
            HeadersFrame(stream_id, block, flags=["END_HEADERS"]),
            DataFrame(stream_id, grpc_message(RateLimitRequest(domain="x")), flags=["END_STREAM"]),
        )
        expected = dict(reference.decode(block))
        _, data, trailers = await client.answer(stream_id)
        if expected.get(":path") == PATH:
            assert trailers == {"grpc-status": "0"}
            answer = {h.key: h.value for h in decoded(data).response_headers_to_add}
            assert answer["x-test"] == expected["x-test"]
        else:
            assert trailers["grpc-status"] == str(StatusCode.UNIMPLEMENTED.value)
    assert dict(reference.decode(blocks[3])).get(":path") != PATH, "the last block should no longer name PATH"
    client.close()


async def test_a_connection_over_the_limit_gets_goaway_and_the_others_serve_on(serve: StartServer) -> None:
    port = await serve(connections_max=2)
    served = [await FrameClient.open(port) for _ in range(2)]
    for client in served:  # both are open on the server before the third comes
        client.send(PingFrame(0, b"opened.."))
        while not isinstance(await client.frame(), PingFrame):
            pass
    refused = await FrameClient.open(port)
    assert (await refused.goaway()).error_code == ErrorCode.ENHANCE_YOUR_CALM
    await refused.wait_closed()
    served[0].call(1, RateLimitRequest(domain="deny"))
    assert decoded((await served[0].answer(1))[1]).overall_code == RateLimitResponse.OVER_LIMIT
    served[1].close()
    await asyncio.sleep(0.2)  # the server sees the close; its place is free again
    again = await FrameClient.open(port)
    again.call(1, RateLimitRequest(domain="x"))
    assert (await again.answer(1))[2] == {"grpc-status": "0"}
    for client in (served[0], refused, again):
        client.close()


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(b"5S", 5.0), (b"100m", 0.1), (b"2H", 7200.0), (b"1M", 60.0), (b"250u", 250e-6), (b"99999999n", 0.099999999)],
)
def test_grpc_timeout_values(value: bytes, seconds: float) -> None:
    assert grpc_timeout_s(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [b"", b"S", b"5", b"5s", b"123456789S", b"-1S", b"1.5S"])
def test_malformed_grpc_timeouts(value: bytes) -> None:
    assert grpc_timeout_s(value) is None
