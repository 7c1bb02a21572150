"""One caller's bad input in an auto-batch fails that caller alone, never its batch-mates."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import pytest
from lockgate import AsyncClient, InvalidRequest

INVALID = msgspec.msgpack.encode(
    {
        "type": "https://lockgate.dev/problems/invalid-request",
        "title": "Invalid request",
        "status": 422,
        "detail": "name must match the pattern",
    }
)


async def test_one_bad_name_in_a_batch_fails_only_its_caller(base_url: str, namespace: str) -> None:
    async with AsyncClient(base_url, namespace=namespace) as lg:
        sent_before = lg.requests_sent
        results = await asyncio.gather(
            *(lg.counter("good").add(1) for _ in range(5)),
            lg.counter("bad name").add(1),
            lg.counter("x" * 300).add(1),
            return_exceptions=True,
        )
        assert lg.requests_sent - sent_before == 1  # one tick, one batch: the bad ops were in it
        assert sorted(results[:5]) == [1, 2, 3, 4, 5]  # type: ignore[type-var]
        assert all(isinstance(result, InvalidRequest) for result in results[5:]), results
        assert await lg.counter("good").get() == 5


class BatchRefusingServer:
    """Refuses every /v1/batch whole with a 422, as an older server did for one bad name; answers
    single requests on their own: 422 for the object named "bad name", a counter value otherwise."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                path = head.split(" ", 2)[1]
                length = next(
                    int(line.split(":")[1]) for line in head.split("\r\n") if line.lower().startswith("content-length")
                )
                await reader.readexactly(length)
                self.paths.append(path)
                if path == "/v1/batch" or "bad%20name" in path:
                    status, body = 422, INVALID
                else:
                    status, body = 200, msgspec.msgpack.encode({"value": 7, "lsn": 1})
                answer_head = b"HTTP/1.1 %d X\r\nContent-Type: application/msgpack\r\nContent-Length: %d\r\n\r\n"
                writer.write(answer_head % (status, len(body)) + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def refusing() -> AsyncIterator[BatchRefusingServer]:
    instance = BatchRefusingServer()
    instance._server = await asyncio.start_server(instance._handle, "127.0.0.1", 0)
    yield instance
    instance._server.close()


async def test_a_batch_refused_whole_is_sent_again_op_by_op(refusing: BatchRefusingServer) -> None:
    async with AsyncClient(refusing.url, namespace="ns") as lg:
        results = await asyncio.gather(
            *(lg.counter(f"good-{index}").add(1) for index in range(3)),
            lg.counter("bad name").add(1),
            return_exceptions=True,
        )
    assert results[:3] == [7, 7, 7]
    assert isinstance(results[3], InvalidRequest)
    assert refusing.paths[0] == "/v1/batch"
    assert sorted(refusing.paths[1:]) == sorted(
        [f"/v1/namespaces/ns/counters/good-{index}/add" for index in range(3)]
        + ["/v1/namespaces/ns/counters/bad%20name/add"]
    )
