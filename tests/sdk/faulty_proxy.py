"""FaultyProxy: an HTTP/1.1 proxy between an SDK client and the server that injects faults."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

OUTCOME_UNKNOWN = msgspec.msgpack.encode(
    {
        "type": "https://lockgate.dev/problems/outcome-unknown",
        "title": "Outcome unknown; retry with the same request_id",
        "status": 503,
        "detail": "injected by the test proxy",
    }
)


@dataclass
class Seen:
    method: str
    path: str
    body: dict[str, object] | None
    fate: str  # "forwarded", "dropped", "replaced", "hung-up" or "refused"


Pick = Callable[[str, str], bool]


class FaultyProxy:
    """Forwards HTTP/1.1 requests to the server; `drop` / `replace` / `hang_up` pick faults.

    `drop(method, path)`: the server's answer arrives and is thrown away, the client is hung up on.
    `replace(method, path)`: the answer is replaced by a 503 outcome-unknown.
    `hang_up(method, path)`: the client is hung up on as soon as the request is forwarded, while
    the server still waits on its side; the server's connection is closed `upstream_hold_s` later.
    Each is asked for every request; faults are injected at most `times` times in all. The
    request always reaches the server first.

    Like a server's keep-alive timeout, `idle_timeout_s` closes a client connection that
    sent nothing for that long. `refuse_reused` requests that arrive on an already used
    connection are not forwarded: the connection is closed at once, as a server does when its
    idle timeout fires just as the request arrives (the client sees no byte of an answer).
    """

    def __init__(
        self,
        upstream_port: int,
        *,
        drop: Pick | None = None,
        replace: Pick | None = None,
        hang_up: Pick | None = None,
        upstream_hold_s: float = 0.0,
        times: int = 1,
        idle_timeout_s: float | None = None,
        refuse_reused: int = 0,
    ) -> None:
        self.upstream_port = upstream_port
        self._drop = drop
        self._replace = replace
        self._hang_up = hang_up
        self._upstream_hold_s = upstream_hold_s
        self._faults_left = times
        self._idle_timeout_s = idle_timeout_s
        self._refuse_reused_left = refuse_reused
        self.connections = 0  # client connections accepted
        self.seen: list[Seen] = []
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> FaultyProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    def requests_to(self, suffix: str) -> list[Seen]:
        return [seen for seen in self.seen if seen.path.endswith(suffix)]

    def _fault(self, pick: Pick | None, method: str, path: str) -> bool:
        if pick is not None and self._faults_left > 0 and pick(method, path):
            self._faults_left -= 1
            return True
        return False

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections += 1
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        served = 0
        try:
            while True:
                async with asyncio.timeout(self._idle_timeout_s):
                    head, body = await read_message(client_reader)
                method, path = head.split(b" ", 2)[:2]
                decoded = msgspec.msgpack.decode(body) if body else None
                seen = Seen(method.decode(), path.decode(), decoded, "forwarded")
                self.seen.append(seen)
                if served and self._refuse_reused_left > 0:
                    self._refuse_reused_left -= 1
                    seen.fate = "refused"
                    return
                served += 1
                upstream_writer.write(head + body)
                if self._fault(self._hang_up, seen.method, seen.path):
                    seen.fate = "hung-up"
                    client_writer.close()
                    await asyncio.sleep(self._upstream_hold_s)
                    return
                answer_head, answer_body = await read_message(upstream_reader)
                if self._fault(self._drop, seen.method, seen.path):
                    seen.fate = "dropped"
                    return  # hang up: the answer is lost
                if self._fault(self._replace, seen.method, seen.path):
                    seen.fate = "replaced"
                    client_writer.write(http_answer(503, OUTCOME_UNKNOWN))
                else:
                    client_writer.write(answer_head + answer_body)
                await client_writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError, TimeoutError):
            pass
        finally:
            client_writer.close()
            upstream_writer.close()
            self._handlers.discard(task)


async def read_message(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    return head, await reader.readexactly(length)


def http_answer(status: int, body: bytes) -> bytes:
    head = f"HTTP/1.1 {status} X\r\nContent-Type: application/msgpack\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def request_ids(seen: list[Seen]) -> set[object]:
    return {entry.body["request_id"] for entry in seen if entry.body is not None}
