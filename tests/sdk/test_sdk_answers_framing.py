"""How the clients read an answer's framing (RFC 9110/9112), against a peer sending canned bytes.

- a garbled status line is a TransportError for every caller of a batch, never an IndexError;
- 1xx interim answers (100 Continue, 103 Early Hints) are skipped, in both clients;
- 204 and 304 have no body: a keep-alive one without Content-Length is read at once;
- Transfer-Encoding wins over Content-Length, and such a connection is not reused;
- an answer past RESPONSE_BYTES_MAX is refused unread, as UnexpectedResponse (not retried).
"""

from __future__ import annotations

import asyncio
import socket
import time

import msgspec
import pytest
from lockgate import AsyncClient, Client, RetryPolicy, Timeouts, TransportError, UnexpectedResponse
from lockgate import _core as core
from raw_http import VALUE_7, RawServer

ONCE = RetryPolicy(attempts=1)
QUICK = Timeouts(connect=1.0, read=2.0, total=3.0)
BODY_7 = msgspec.msgpack.encode({"value": 7, "lsn": 1})


def chunked(body: bytes, *, extra_headers: bytes = b"") -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/msgpack\r\ntransfer-encoding: chunked\r\n%s\r\n"
    return head % extra_headers + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"


@pytest.mark.parametrize("status_line", [b"HTTP/1.1", b"", b"HTTP/1.1 2x0 OK", b"SPDY/9 200 OK"])
async def test_a_garbled_status_line_is_a_transport_error_for_every_caller(status_line: bytes) -> None:
    with RawServer([status_line + b"\r\ncontent-length: 0\r\n\r\n"]) as server:
        async with AsyncClient(server.url, retry=ONCE, timeouts=QUICK) as lg:
            results = await asyncio.gather(lg.counter("a").get(), lg.counter("b").get(), return_exceptions=True)
    assert len(server.heads) == 1  # one batch carried both
    assert all(isinstance(result, TransportError) for result in results), results


@pytest.mark.parametrize(
    "interim",
    [
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n",
    ],
)
async def test_async_interim_answers_are_skipped(interim: bytes) -> None:
    with RawServer([interim + VALUE_7, VALUE_7]) as server:
        async with AsyncClient(server.url, retry=ONCE, timeouts=QUICK, batching=False) as lg:
            started = time.monotonic()
            assert await lg.counter("c").get() == 7
            assert time.monotonic() - started < 1.0  # not the read timeout
            assert await lg.counter("c").get() == 7  # and the connection is still in step
    assert server.connections == 1


def test_sync_interim_answers_are_skipped() -> None:
    early_hints = b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n"
    with RawServer([early_hints + VALUE_7, VALUE_7]) as server, Client(server.url, retry=ONCE, timeouts=QUICK) as lg:
        assert lg.counter("c").get() == 7
        assert lg.counter("c").get() == 7
    assert server.connections == 1


async def test_too_many_interim_answers_are_refused() -> None:
    flood = b"HTTP/1.1 103 Early Hints\r\n\r\n" * (core.INTERIM_ANSWERS_MAX + 1)
    with RawServer([flood + VALUE_7]) as server:
        async with AsyncClient(server.url, retry=ONCE, timeouts=QUICK, batching=False) as lg:
            with pytest.raises(TransportError, match="interim"):
                await lg.counter("c").get()


@pytest.mark.parametrize("status", [204, 304])
async def test_a_keep_alive_answer_without_body_is_read_at_once(status: int) -> None:
    with RawServer([b"HTTP/1.1 %d X\r\n\r\n" % status, VALUE_7]) as server:
        async with AsyncClient(server.url, retry=ONCE, timeouts=QUICK, batching=False) as lg:
            started = time.monotonic()
            with pytest.raises(UnexpectedResponse, match=str(status)):
                await lg.counter("c").get()
            assert time.monotonic() - started < 1.0  # not the read timeout
            assert await lg.counter("c").get() == 7  # the connection went back to the pool, in step
    assert server.connections == 1


async def test_transfer_encoding_wins_over_content_length_and_the_connection_is_dropped() -> None:
    with RawServer([chunked(BODY_7, extra_headers=b"content-length: 5\r\n"), VALUE_7]) as server:
        async with AsyncClient(server.url, retry=ONCE, timeouts=QUICK, batching=False) as lg:
            assert await lg.counter("c").get() == 7
            assert await lg.counter("c").get() == 7
    assert server.connections == 2


async def test_chunked_answers_with_extensions_and_trailers() -> None:
    body = b"%x;name=value\r\n" % len(BODY_7) + BODY_7 + b"\r\n0\r\nx-trailer: 1\r\n\r\n"
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/msgpack\r\ntransfer-encoding: chunked\r\n\r\n"
    with RawServer([head + body, VALUE_7]) as server:
        async with AsyncClient(server.url, retry=ONCE, timeouts=QUICK, batching=False) as lg:
            assert await lg.counter("c").get() == 7
            assert await lg.counter("c").get() == 7
    assert server.connections == 1


@pytest.mark.parametrize("size_line", [b"0x5", b"+5", b"", b"zz"])
async def test_a_malformed_chunk_size_is_a_transport_error(size_line: bytes) -> None:
    head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    with RawServer([head + size_line + b"\r\nhello\r\n0\r\n\r\n"]) as server:
        async with AsyncClient(server.url, retry=ONCE, timeouts=QUICK, batching=False) as lg:
            with pytest.raises(TransportError):
                await lg.counter("c").get()


@pytest.mark.parametrize("length", [b"-1", b"5, 6", b"1e3", b"\xb2"])
async def test_a_malformed_content_length_is_a_transport_error(length: bytes) -> None:
    with RawServer([b"HTTP/1.1 200 OK\r\ncontent-length: %s\r\n\r\nhello" % length]) as server:
        async with AsyncClient(server.url, retry=ONCE, timeouts=QUICK, batching=False) as lg:
            with pytest.raises(TransportError):
                await lg.counter("c").get()


TOO_LONG = core.RESPONSE_BYTES_MAX + 1
HUGE_LENGTH = b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: %d\r\n\r\n<html>" % TOO_LONG


async def test_async_an_answer_past_the_bound_is_refused_unread() -> None:
    # The body never comes: a client that tried to read it would wait for the read timeout.
    with RawServer([HUGE_LENGTH, HUGE_LENGTH]) as server:
        async with AsyncClient(server.url, timeouts=QUICK, batching=False) as lg:  # default retries
            started = time.monotonic()
            with pytest.raises(UnexpectedResponse, match="RESPONSE_BYTES_MAX"):
                await lg.counter("c").get()
            assert time.monotonic() - started < 1.0
    assert len(server.heads) == 1  # not retried


def test_sync_an_answer_past_the_bound_is_refused_unread() -> None:
    with RawServer([HUGE_LENGTH, HUGE_LENGTH]) as server, Client(server.url, timeouts=QUICK) as lg:
        started = time.monotonic()
        with pytest.raises(UnexpectedResponse, match="RESPONSE_BYTES_MAX"):
            lg.counter("c").get()
        assert time.monotonic() - started < 1.0
    assert len(server.heads) == 1


def _endless_chunks(connection: socket.socket) -> None:
    connection.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n" % 2**20 + b"<" * 2**20 + b"\r\n"
    try:
        for _ in range(core.RESPONSE_BYTES_MAX // 2**20 + 4):
            connection.sendall(chunk)
    except OSError:
        pass  # the client hung up once past the bound


async def test_async_a_chunked_answer_past_the_bound_is_refused() -> None:
    with RawServer([_endless_chunks]) as server:
        async with AsyncClient(server.url, retry=ONCE, timeouts=QUICK, batching=False) as lg:
            with pytest.raises(UnexpectedResponse, match="RESPONSE_BYTES_MAX"):
                await lg.counter("c").get()


def test_sync_a_chunked_answer_past_the_bound_is_refused() -> None:
    with (
        RawServer([_endless_chunks]) as server,
        Client(server.url, retry=ONCE, timeouts=QUICK) as lg,
        pytest.raises(UnexpectedResponse, match="RESPONSE_BYTES_MAX"),
    ):
        lg.counter("c").get()


def test_parse_response_head() -> None:
    head = core.parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nConnection: keep-alive")
    assert (head.status, head.framing, head.length, head.keep_alive) == (200, "length", 12, True)
    head = core.parse_response_head(b"HTTP/1.0 200 OK\r\nContent-Length: 3")
    assert not head.keep_alive  # HTTP/1.0 closes unless told otherwise
    head = core.parse_response_head(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3")
    assert not head.keep_alive
    head = core.parse_response_head(b"HTTP/1.1 200 OK")
    assert head.framing == "close" and not head.keep_alive  # until the server closes
    head = core.parse_response_head(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 50")
    assert head.framing == "none" and head.keep_alive
    assert core.parse_response_head(b"HTTP/1.1 103 Early Hints").interim
    with pytest.raises(ValueError):
        core.parse_response_head(b"HTTP/1.1 099 Low")
