"""Answers that are not the server's own, and every problem type the server can send.

A proxy in front of the server (nginx, Envoy) answers with an HTML page when the server is
away: 502/503/504 are retried as Unavailable, anything else is an UnexpectedResponse. No
msgspec error ever reaches the caller. Every problem type of the server's table maps to the
SDK class of the same name.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import msgspec
import pytest
from lockgate import (
    AsyncClient,
    Client,
    Conflict,
    LockgateError,
    NotFound,
    QuotaExceeded,
    RetryPolicy,
    Unavailable,
    UnexpectedResponse,
)
from lockgate import _core as core
from lockgate import errors as sdk_errors

from lockgate_server.api import problems

if TYPE_CHECKING:
    from conftest import ServerFactory

RETRY = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02)
HTML = b"<html><body><h1>502 Bad Gateway</h1><hr>nginx</body></html>"


class CannedServer:
    """Answers every request with the same status, content type and body, like a proxy's error page."""

    def __init__(self) -> None:
        self.status = 502
        self.content_type = "text/html"
        self.body = HTML
        self.requests = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    ),
                    0,
                )
                await reader.readexactly(length)
                self.requests += 1
                writer.write(
                    f"HTTP/1.1 {self.status} X\r\nContent-Type: {self.content_type}\r\n"
                    f"Content-Length: {len(self.body)}\r\n\r\n".encode()
                    + self.body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def canned() -> AsyncIterator[CannedServer]:
    instance = CannedServer()
    instance._server = await asyncio.start_server(instance._handle, "127.0.0.1", 0)
    yield instance
    instance._server.close()


CASES = [
    (502, "text/html", HTML, Unavailable, RETRY.attempts),
    (504, "text/html", HTML, Unavailable, RETRY.attempts),
    (500, "text/html", HTML, UnexpectedResponse, 1),
    (403, "text/html", HTML, UnexpectedResponse, 1),
    (200, "text/html", HTML, UnexpectedResponse, 1),  # a captive portal, a misrouted request
    (200, "application/msgpack", msgspec.msgpack.encode({"unexpected": 1}), UnexpectedResponse, 1),
    (404, "application/problem+json", b'{"type":"https://lockgate.dev/problems/not-found","status":404}', NotFound, 1),
]
IDS = ["502-html", "504-html", "500-html", "403-html", "200-html", "200-wrong-shape", "404-problem-json"]


@pytest.mark.parametrize(("status", "content_type", "body", "error_type", "requests"), CASES, ids=IDS)
async def test_async_foreign_answers_raise_typed_errors(
    canned: CannedServer,
    status: int,
    content_type: str,
    body: bytes,
    error_type: type[LockgateError],
    requests: int,
) -> None:
    canned.status, canned.content_type, canned.body = status, content_type, body
    async with AsyncClient(canned.url, retry=RETRY) as lg:
        with pytest.raises(error_type) as raised:
            await lg.counter("n").get()
    assert type(raised.value) is error_type
    assert not isinstance(raised.value.__cause__, msgspec.DecodeError)
    assert canned.requests == requests


@pytest.mark.parametrize(("status", "content_type", "body", "error_type", "requests"), CASES, ids=IDS)
async def test_sync_foreign_answers_raise_typed_errors(
    canned: CannedServer,
    status: int,
    content_type: str,
    body: bytes,
    error_type: type[LockgateError],
    requests: int,
) -> None:
    canned.status, canned.content_type, canned.body = status, content_type, body
    with Client(canned.url, retry=RETRY) as lg, pytest.raises(error_type) as raised:
        await asyncio.to_thread(lg.counter("n").get)
    assert type(raised.value) is error_type
    assert canned.requests == requests


# --- the server's problem types --------------------------------------------------------------------
def test_every_problem_type_of_the_server_maps_to_the_sdk_class_of_that_name() -> None:
    table = [(error_type.__name__, status, slug) for error_type, status, slug, _ in problems.PROBLEM_TABLE]
    for name, status, slug in table:
        assert slug in core.PROBLEM_TYPES, slug
        sdk_type = core.PROBLEM_TYPES[slug]
        assert sdk_type is getattr(sdk_errors, name), (slug, sdk_type)
        problem = {"type": problems.PROBLEM_BASE + slug, "status": status, "detail": "x"}
        assert type(core.error_from(core.Response(status, problem))) is sdk_type
    status, slug, _ = problems.MALFORMED
    assert core.PROBLEM_TYPES[slug] is sdk_errors.InvalidRequest


def test_quota_exceeded_is_a_conflict() -> None:
    assert issubclass(QuotaExceeded, Conflict)


async def test_a_full_namespace_answers_quota_exceeded(start_server: ServerFactory) -> None:
    server = start_server({"LOCKGATE_MAX_OBJECTS_PER_NAMESPACE": "2"})
    async with AsyncClient(server.url, namespace="full") as lg:
        assert await lg.counter("a").add(1) == 1
        assert await lg.counter("b").add(1) == 1
        with pytest.raises(QuotaExceeded):
            await lg.counter("c").add(1)
    with Client(server.url, namespace="full") as sync_lg, pytest.raises(QuotaExceeded):
        sync_lg.counter("d").add(1)
