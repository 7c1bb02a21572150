"""The HTTP/1.1 server against hostile or odd clients: one regression test per bug a review found.

Each goes through a real socket to a server on port 0, with the small limits of
test_http1_server.py, and failed on the server as it was before its fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from test_http1_server import LIMITS, closed_by_server, connect, read_answer

from lockgate_server import http1
from lockgate_server.http1 import HttpServer
from lockgate_server.limits import HTTP_PARSE_SLICE_BYTES, HTTP_PIPELINE_DEPTH

HARDENED = replace(LIMITS, write_timeout_s=0.3)


class ProbeApp:
    """Echoes what it saw (headers included); other paths answer the odd ways apps can."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.calls += 1
        message = await receive()
        path = scope["path"]
        if path.startswith("/sleep/"):
            await asyncio.sleep(int(path.rsplit("/", 1)[1]) / 1000)
        if path.startswith("/big/"):  # /big/<MiB>
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"x" * (int(path.rsplit("/", 1)[1]) << 20)})
            return
        if path == "/cancel":
            raise asyncio.CancelledError  # as if something the app awaited had been cancelled
        if path in ("/start-only", "/fail-after-start"):
            await send({"type": "http.response.start", "status": 200, "headers": []})
            if path == "/fail-after-start":
                raise RuntimeError("the app broke after starting its answer")
            return
        answers = {
            # A body on a 204 would be read as the next answer: here, a forged one.
            "/204": (204, [(b"content-length", b"43")], b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nEVIL!"),
            "/304": (304, [(b"content-length", b"10")], b"0123456789"),
            "/103": (103, [], b""),
        }
        if path in answers:
            status, headers, body = answers[path]
        else:
            seen = {
                "path": path,
                "raw_path": scope["raw_path"].decode(),
                "body": message["body"].decode(),
                "headers": [[name.decode(), value.decode()] for name, value in scope["headers"]],
            }
            status, headers, body = 200, [(b"content-type", b"application/json")], json.dumps(seen).encode()
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture
async def probed() -> AsyncIterator[tuple[HttpServer, ProbeApp]]:
    app = ProbeApp()
    server = HttpServer(app, HARDENED)
    await server.start("127.0.0.1", 0)
    try:
        yield server, app
    finally:
        await server.stop(1.0)


async def wait_until(condition: Any, timeout_s: float = 3.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def trickle_until_answered(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes, piece_bytes: int = 2048
) -> tuple[int, dict[str, str], bytes]:
    """Write in pieces the server reads one by one, stopping once it answers (it then hangs up,
    and writing on would reset the connection, which can lose the answer)."""
    answer = asyncio.ensure_future(read_answer(reader))
    with contextlib.suppress(ConnectionError):
        for start in range(0, len(data), piece_bytes):
            await asyncio.sleep(0.01)
            if answer.done():
                break
            writer.write(data[start : start + piece_bytes])
    return await answer


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode()


# --- 1. a head line that never ends --------------------------------------------------------------
async def test_a_header_line_that_never_ends_gets_431_before_it_ends(probed: tuple[HttpServer, ProbeApp]) -> None:
    server, app = probed
    reader, writer = await connect(server)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ")
    status, _, body = await trickle_until_answered(reader, writer, b"a" * 16384)  # a line never ended
    assert status == 431, body  # before the fix: nothing until the line ends (here, 408 at the read timeout)
    assert await closed_by_server(reader)
    assert app.calls == 0


async def test_a_trailer_line_that_never_ends_gets_431(probed: tuple[HttpServer, ProbeApp]) -> None:
    server, app = probed
    reader, writer = await connect(server)
    writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nX-Trailer: ")
    assert (await trickle_until_answered(reader, writer, b"a" * 16384))[0] == 431
    assert app.calls == 0


async def test_a_head_within_the_limit_sent_in_small_pieces_is_served(probed: tuple[HttpServer, ProbeApp]) -> None:
    server, _ = probed
    reader, writer = await connect(server)
    raw = get("/pieces", extra="X-Long: " + "b" * (LIMITS.header_bytes_max - 200) + "\r\n")
    for start in range(0, len(raw), 100):  # counting what is fed must not count a byte twice
        writer.write(raw[start : start + 100])
        await writer.drain()
        await asyncio.sleep(0.001)
    status, _, body = await read_answer(reader)
    assert status == 200 and json.loads(body)["path"] == "/pieces"
    writer.close()


# --- 2. a client that never reads ----------------------------------------------------------------
@pytest.mark.parametrize(
    "requests", [get("/big/1") * 8, get("/big/8", "Connection: close\r\n")], ids=["keep-alive", "closing"]
)
async def test_a_client_that_never_reads_is_cut_off_after_the_write_timeout(
    probed: tuple[HttpServer, ProbeApp], requests: bytes
) -> None:
    server, _ = probed
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_connect(client, ("127.0.0.1", server.port))
        await loop.sock_sendall(client, requests)  # for 8 MiB of answers it will never read
        assert await wait_until(lambda: any(c._transport.get_write_buffer_size() for c in server.connections))
        # Before the fix the connection waited for the client to read for ever, idle timeout or not
        # (or, closing, for its last answer to be sent).
        assert await wait_until(lambda: not server.connections)
    finally:
        client.close()


# --- 3. trailer fields ---------------------------------------------------------------------------
async def test_trailer_fields_are_not_merged_into_the_headers(probed: tuple[HttpServer, ProbeApp]) -> None:
    server, _ = probed
    reader, writer = await connect(server)
    writer.write(
        b"POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nAuthorization: Bearer good\r\n\r\n"
        b"5\r\nhello\r\n0\r\nAuthorization: Bearer EVIL\r\nContent-Type: application/msgpack\r\n\r\n"
    )
    status, _, body = await read_answer(reader)
    seen = json.loads(body)
    assert status == 200 and seen["body"] == "hello"
    assert seen["headers"] == [["host", "x"], ["transfer-encoding", "chunked"], ["authorization", "Bearer good"]]
    writer.close()


# --- 4. answers that have no body ----------------------------------------------------------------
@pytest.mark.parametrize(("path", "length"), [("/204", None), ("/304", "10")])
async def test_204_and_304_answers_end_at_their_head(
    probed: tuple[HttpServer, ProbeApp], path: str, length: str | None
) -> None:
    server, _ = probed
    reader, writer = await connect(server)
    writer.write(get(path) + get("/after"))
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode().lower()
    assert head.startswith(f"http/1.1 {path[1:]} ")
    lengths = [line.split(":", 1)[1].strip() for line in head.split("\r\n") if line.startswith("content-length:")]
    assert lengths == ([] if length is None else [length])  # a 304 keeps the app's; a 204 has none
    # The next answer starts right after the head: the app's body was not written.
    assert await asyncio.wait_for(reader.readexactly(13), 5) == b"HTTP/1.1 200 "
    writer.close()


async def test_an_interim_status_as_the_answer_is_an_app_error(probed: tuple[HttpServer, ProbeApp]) -> None:
    server, _ = probed
    reader, writer = await connect(server)
    writer.write(get("/103"))
    assert (await read_answer(reader))[0] == 500
    assert await closed_by_server(reader)


# --- 5. a pipelined burst ------------------------------------------------------------------------
async def test_a_pipelined_burst_is_parsed_only_as_far_as_the_queue_allows(
    probed: tuple[HttpServer, ProbeApp],
) -> None:
    server, app = probed
    reader, writer = await connect(server)
    tiny = get("/")
    burst_size = 2000
    writer.write(get("/sleep/300") + tiny * burst_size)
    await writer.drain()
    queued_most = 0
    for _ in range(10):
        await asyncio.sleep(0.02)
        for connection in server.connections:
            queued_most = max(queued_most, len(connection._queue))
    # One slice parsed past a full queue at most; before the fix, all 2,000 (7,108 from 252 kB).
    assert 0 < queued_most <= HTTP_PIPELINE_DEPTH + HTTP_PARSE_SLICE_BYTES // len(tiny)
    # What was kept back is parsed as the queue drains: every request answered, in order.
    first = await read_answer(reader)
    assert json.loads(first[2])["path"] == "/sleep/300"
    for _ in range(burst_size):
        status, _, body = await read_answer(reader)
        assert status == 200 and json.loads(body)["path"] == "/"
    assert app.calls == burst_size + 1
    writer.close()


# --- 6. odd request targets, other callback errors, many upgrades ------------------------------
@pytest.mark.parametrize(
    ("target", "status", "path"),
    [("http://example.com", 200, "/"), ("http://example.com?x=1", 200, "/"), ("example.com:443", 400, None)],
    ids=["absolute-form-without-path", "absolute-form-with-query", "authority-form"],
)
async def test_odd_targets_are_answered_after_the_answer_ahead_of_them(
    probed: tuple[HttpServer, ProbeApp], target: str, status: int, path: str | None
) -> None:
    server, _ = probed
    reader, writer = await connect(server)
    method = "CONNECT" if status == 400 else "GET"
    writer.write(get("/sleep/100") + f"{method} {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    first = await read_answer(reader)
    assert (first[0], json.loads(first[2])["path"]) == (200, "/sleep/100")
    second = await read_answer(reader)
    assert second[0] == status
    if path is not None:
        assert json.loads(second[2])["path"] == json.loads(second[2])["raw_path"] == path
    else:
        assert await closed_by_server(reader)


async def test_a_server_error_while_parsing_is_answered_500_after_the_answer_ahead(
    probed: tuple[HttpServer, ProbeApp], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, _ = probed

    def broken_unquote(text: str) -> str:
        raise RuntimeError("a bug in reading the request")

    monkeypatch.setattr(http1, "unquote", broken_unquote)  # called for a path with a '%' in it
    reader, writer = await connect(server)
    writer.write(get("/sleep/100") + get("/a%20b"))
    first = await read_answer(reader)
    assert (first[0], json.loads(first[2])["path"]) == (200, "/sleep/100")
    assert (await read_answer(reader))[0] == 500
    assert await closed_by_server(reader)


async def test_thousands_of_upgrade_requests_in_one_write_are_all_answered(
    probed: tuple[HttpServer, ProbeApp],
) -> None:
    server, _ = probed
    reader, writer = await connect(server)
    count = 2000
    writer.write(get("/u", extra="Connection: upgrade\r\nUpgrade: foo\r\n") * count)
    for _ in range(count):  # before the fix: RecursionError, the connection dropped unanswered
        status, _, body = await read_answer(reader)
        assert status == 200 and json.loads(body)["path"] == "/u"
    writer.close()


# --- 7. Host -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("head", "status"),
    [
        ("GET / HTTP/1.1\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        ("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        ("GET / HTTP/1.0\r\n\r\n", 200),
    ],
    ids=["1.1-without", "1.1-two", "1.0-two", "1.0-without"],
)
async def test_a_request_needs_one_host_header(probed: tuple[HttpServer, ProbeApp], head: str, status: int) -> None:
    server, app = probed
    reader, writer = await connect(server)
    writer.write(head.encode())
    assert (await read_answer(reader))[0] == status
    assert app.calls == (1 if status == 200 else 0)
    writer.close()


# --- 8. Expect: 100-continue ---------------------------------------------------------------------
async def test_no_100_continue_for_an_http_1_0_client(probed: tuple[HttpServer, ProbeApp]) -> None:
    server, _ = probed
    reader, writer = await connect(server)
    writer.write(b"POST /e HTTP/1.0\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nhi")
    status, _, body = await read_answer(reader)
    assert status == 200 and json.loads(body)["body"] == "hi"
    writer.close()


async def test_100_continue_is_matched_whatever_its_case(probed: tuple[HttpServer, ProbeApp]) -> None:
    server, _ = probed
    reader, writer = await connect(server)
    writer.write(b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-Continue\r\n\r\n")
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 1) == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"hi")
    assert (await read_answer(reader))[0] == 200
    writer.close()


async def test_100_continue_waits_for_the_answer_ahead_of_it(probed: tuple[HttpServer, ProbeApp]) -> None:
    server, _ = probed
    reader, writer = await connect(server)
    expecting = b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
    writer.write(get("/sleep/200") + expecting)  # its body waits for the 100
    first = await read_answer(reader)  # before the fix, the 100 came first and was read as this answer
    assert (first[0], json.loads(first[2])["path"]) == (200, "/sleep/200")
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 1) == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"hi")
    status, _, body = await read_answer(reader)
    assert status == 200 and json.loads(body)["body"] == "hi"
    writer.close()


# --- 9. an answer started, never finished --------------------------------------------------------
@pytest.mark.parametrize("path", ["/fail-after-start", "/start-only"])
async def test_an_answer_started_but_not_finished_gets_500(probed: tuple[HttpServer, ProbeApp], path: str) -> None:
    server, _ = probed
    reader, writer = await connect(server)
    writer.write(get(path))
    assert (await read_answer(reader))[0] == 500  # nothing of the app's answer had been written
    assert await closed_by_server(reader)


# --- 10. CancelledError --------------------------------------------------------------------------
async def test_an_app_raising_cancelled_error_gets_500_and_the_connection_closes(
    probed: tuple[HttpServer, ProbeApp],
) -> None:
    server, _ = probed
    reader, writer = await connect(server)
    writer.write(get("/cancel"))
    assert (await read_answer(reader))[0] == 500
    assert await closed_by_server(reader)
    assert await wait_until(lambda: not server.connections)


async def test_a_cancelled_connection_task_closes_the_connection_and_stays_cancelled(
    probed: tuple[HttpServer, ProbeApp],
) -> None:
    server, _ = probed
    reader, writer = await connect(server)
    writer.write(get("/sleep/5000"))
    assert await wait_until(lambda: any(c.busy for c in server.connections))
    task = next(iter(server.connections))._task
    assert task is not None
    task.cancel()  # what the loop does to tasks left when it shuts down
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await closed_by_server(reader)
    assert await wait_until(lambda: not server.connections)


def send_a_body_past_the_limit_then_read(port: int) -> tuple[str | None, bytes]:
    """A client that sends its whole (too large) body before reading, as most do: (the error its
    sending met, if any; what it then read)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n" % 65536 + b"x" * 65536 + b"\r\n"
        failed = None
        try:
            for _ in range(64):  # 4 MiB against a 1 KiB limit
                client.sendall(chunk)
            client.sendall(b"0\r\n\r\n")
        except OSError as error:
            failed = repr(error)
        try:
            return failed, client.recv(65536)
        except OSError as error:
            return failed or repr(error), b""


async def test_a_client_still_sending_a_refused_body_reads_the_refusal(probed: tuple[HttpServer, ProbeApp]) -> None:
    """The server lingers after refusing: it reads and drops the rest, so the client's sending
    is not reset and the 413 reaches it, however many chunks it sends after the limit."""
    server, app = probed
    for _ in range(3):
        failed, answer = await asyncio.to_thread(send_a_body_past_the_limit_then_read, server.port)
        assert failed is None, failed
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:80]
    assert app.calls == 0
