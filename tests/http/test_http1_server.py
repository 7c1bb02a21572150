"""The HTTP/1.1 server on a real socket: framing, keep-alive, pipelining, bounds, disconnects, stop.

A small ASGI app stands in for Lockgate's (the suite's other HTTP tests run the real one
through this same server); clients write raw bytes so every framing case is exact.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from lockgate_server.http1 import HttpLimits, HttpServer

LIMITS = HttpLimits(
    header_bytes_max=4096, body_bytes_max=1024, read_timeout_s=0.5, idle_timeout_s=0.5, connections_max=8
)


class EchoApp:
    """Answers with what it saw; /sleep/<ms> answers after a while; /wait waits for the client to leave."""

    def __init__(self) -> None:
        self.calls = 0
        self.disconnects = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        self.calls += 1
        message = await receive()
        path = scope["path"]
        if path.startswith("/sleep/"):
            await asyncio.sleep(int(path.rsplit("/", 1)[1]) / 1000)
        if path == "/wait":
            if (await receive())["type"] == "http.disconnect":
                self.disconnects += 1
            return
        if path == "/fail":
            raise RuntimeError("the app broke")
        seen = {"path": path, "method": scope["method"], "body": message["body"].decode()}
        body = json.dumps({**seen, "query": scope["query_string"].decode()}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body[:5], "more_body": True})
        await send({"type": "http.response.body", "body": body[5:]})


@pytest.fixture
async def served() -> AsyncIterator[tuple[HttpServer, EchoApp]]:
    app = EchoApp()
    server = HttpServer(app, LIMITS)
    await server.start("127.0.0.1", 0)
    try:
        yield server, app
    finally:
        await server.stop(1.0)


async def connect(server: HttpServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.port)


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode().split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:] if line)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split()[1]), headers, body


def request(path: str, body: bytes = b"", *, method: str = "POST", extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    return await asyncio.wait_for(reader.read(), 5) == b""


async def test_keep_alive_serves_several_requests_and_bodies_sent_in_parts(
    served: tuple[HttpServer, EchoApp],
) -> None:
    server, _ = served
    reader, writer = await connect(server)
    for index in range(3):
        writer.write(request(f"/a/{index}?q=1", b"hello"))
        status, headers, body = await read_answer(reader)
        assert status == 200 and "date" in headers
        assert json.loads(body) == {"path": f"/a/{index}", "method": "POST", "body": "hello", "query": "q=1"}
    writer.close()


async def test_pipelined_requests_are_answered_in_order(served: tuple[HttpServer, EchoApp]) -> None:
    server, app = served
    reader, writer = await connect(server)
    # The first takes longest: answers must still come in request order.
    writer.write(request("/sleep/200") + request("/sleep/50") + request("/sleep/0"))
    paths = [json.loads((await read_answer(reader))[2])["path"] for _ in range(3)]
    assert paths == ["/sleep/200", "/sleep/50", "/sleep/0"]
    assert app.calls == 3
    writer.close()


@pytest.mark.parametrize(
    ("head", "closes"),
    [
        ("GET / HTTP/1.0\r\n\r\n", True),
        ("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", False),
        ("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", True),
    ],
)
async def test_connection_close_and_http_1_0(served: tuple[HttpServer, EchoApp], head: str, closes: bool) -> None:
    server, _ = served
    reader, writer = await connect(server)
    writer.write(head.encode())
    status, headers, _ = await read_answer(reader)
    assert status == 200
    assert headers.get("connection") == ("close" if closes else "keep-alive")
    if closes:
        assert await closed_by_server(reader)
    else:
        writer.write(head.encode())
        assert (await read_answer(reader))[0] == 200
    writer.close()


async def test_expect_100_continue_then_the_answer(served: tuple[HttpServer, EchoApp]) -> None:
    server, _ = served
    reader, writer = await connect(server)
    writer.write(b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"abc")
    status, _, body = await read_answer(reader)
    assert status == 200 and json.loads(body)["body"] == "abc"
    writer.close()


async def test_a_chunked_body_reaches_the_app_decoded(served: tuple[HttpServer, EchoApp]) -> None:
    server, _ = served
    reader, writer = await connect(server)
    writer.write(b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    status, _, body = await read_answer(reader)
    assert status == 200 and json.loads(body)["body"] == "abcde"
    writer.close()


@pytest.mark.parametrize(
    "raw",
    [
        request("/big", b"x" * 1025),
        b"POST /big HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + (b"200\r\n" + b"x" * 512 + b"\r\n") * 3,
    ],
    ids=["declared", "chunked"],
)
async def test_a_body_over_the_limit_gets_413_and_never_reaches_the_app(
    served: tuple[HttpServer, EchoApp], raw: bytes
) -> None:
    server, app = served
    reader, writer = await connect(server)
    writer.write(raw)
    status, headers, body = await read_answer(reader)
    assert status == 413 and headers["content-type"] == "application/problem+json"
    assert json.loads(body)["status"] == 413
    assert await closed_by_server(reader)
    assert app.calls == 0


async def test_a_head_over_the_limit_gets_431(served: tuple[HttpServer, EchoApp]) -> None:
    server, app = served
    reader, writer = await connect(server)
    writer.write(request("/h", extra=f"X-Big: {'a' * 5000}\r\n"))
    assert (await read_answer(reader))[0] == 431
    assert await closed_by_server(reader)
    assert app.calls == 0


async def test_a_malformed_request_gets_400_and_the_connection_closes(served: tuple[HttpServer, EchoApp]) -> None:
    server, _ = served
    reader, writer = await connect(server)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert (await read_answer(reader))[0] == 400
    assert await closed_by_server(reader)


async def test_a_request_that_trickles_in_gets_408(served: tuple[HttpServer, EchoApp]) -> None:
    server, app = served
    reader, writer = await connect(server)
    writer.write(b"POST /slow HTTP/1.1\r\nHost: x\r\n")  # and never the rest
    assert (await read_answer(reader))[0] == 408
    assert await closed_by_server(reader)
    assert app.calls == 0


async def test_an_idle_keep_alive_connection_is_closed(served: tuple[HttpServer, EchoApp]) -> None:
    server, _ = served
    reader, writer = await connect(server)
    writer.write(request("/once"))
    assert (await read_answer(reader))[0] == 200
    started = asyncio.get_running_loop().time()
    assert await closed_by_server(reader)
    assert asyncio.get_running_loop().time() - started >= LIMITS.idle_timeout_s * 0.9


async def test_a_long_request_is_not_cut_by_the_idle_timeout(served: tuple[HttpServer, EchoApp]) -> None:
    server, _ = served
    reader, writer = await connect(server)
    writer.write(request(f"/sleep/{int(LIMITS.idle_timeout_s * 3000)}"))
    assert (await read_answer(reader))[0] == 200
    writer.close()


async def test_the_app_learns_that_its_client_left(served: tuple[HttpServer, EchoApp]) -> None:
    server, app = served
    _, writer = await connect(server)
    writer.write(request("/wait"))
    await asyncio.sleep(0.1)
    writer.close()
    for _ in range(100):
        if app.disconnects:
            break
        await asyncio.sleep(0.02)
    assert app.disconnects == 1


async def test_an_app_error_gets_500_and_the_connection_closes(served: tuple[HttpServer, EchoApp]) -> None:
    server, _ = served
    reader, writer = await connect(server)
    writer.write(request("/fail"))
    assert (await read_answer(reader))[0] == 500
    assert await closed_by_server(reader)


async def test_head_answers_carry_the_length_but_no_body(served: tuple[HttpServer, EchoApp]) -> None:
    server, _ = served
    reader, writer = await connect(server)
    writer.write(request("/h", method="HEAD") + request("/after"))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert int(head.decode().lower().split("content-length:")[1].split("\r\n")[0]) > 0
    # The next answer starts right after the head: no body bytes in between.
    status, _, body = await read_answer(reader)
    assert status == 200 and json.loads(body)["path"] == "/after"
    writer.close()


async def test_connections_past_the_limit_get_503() -> None:
    server = HttpServer(EchoApp(), replace(LIMITS, connections_max=2))
    await server.start("127.0.0.1", 0)
    try:
        held = [await connect(server) for _ in range(2)]
        for reader, writer in held:
            writer.write(request("/held"))
            assert (await read_answer(reader))[0] == 200
        reader, _ = await connect(server)
        assert (await read_answer(reader))[0] == 503
        assert await closed_by_server(reader)
    finally:
        await server.stop(1.0)


async def test_stop_answers_the_request_in_flight_and_closes_idle_connections() -> None:
    server = HttpServer(EchoApp(), LIMITS)
    await server.start("127.0.0.1", 0)
    port = server.port
    busy_reader, busy_writer = await connect(server)
    idle_reader, idle_writer = await connect(server)
    idle_writer.write(request("/idle"))
    assert (await read_answer(idle_reader))[0] == 200
    busy_writer.write(request("/sleep/300"))
    await asyncio.sleep(0.05)
    await server.stop(2.0)
    assert await closed_by_server(idle_reader)
    assert (await read_answer(busy_reader))[0] == 200
    assert await closed_by_server(busy_reader)
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_a_refusal_behind_a_request_in_flight_comes_after_its_answer(
    served: tuple[HttpServer, EchoApp],
) -> None:
    server, app = served
    reader, writer = await connect(server)
    writer.write(request("/sleep/200") + request("/big", b"x" * 1025))
    first, second = await read_answer(reader), await read_answer(reader)
    assert (first[0], json.loads(first[2])["path"]) == (200, "/sleep/200")
    assert second[0] == 413
    assert await closed_by_server(reader)
    assert app.calls == 1


async def test_an_upgrade_is_ignored_and_the_request_answered_over_http_1_1(
    served: tuple[HttpServer, EchoApp],
) -> None:
    server, _ = served
    reader, writer = await connect(server)
    upgrade = "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
    writer.write(request("/first", method="GET", extra=upgrade) + request("/second"))
    assert [json.loads((await read_answer(reader))[2])["path"] for _ in range(2)] == ["/first", "/second"]
    writer.close()
