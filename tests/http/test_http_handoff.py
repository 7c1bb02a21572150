"""Blocking acquires hand the lock on in FIFO order between separate HTTP clients,
and a waiter whose client hangs up leaves the line without ever being granted."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx

LOCK = "/v1/namespaces/handoff/locks/{name}"
TIMEOUT = httpx.Timeout(60.0)


async def _lock_status(client: httpx.AsyncClient, path: str) -> dict[str, Any]:
    response = await client.get(path)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def _wait_for_waiters(client: httpx.AsyncClient, path: str, expected: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    seen = None
    while time.monotonic() < deadline:
        seen = (await _lock_status(client, path))["waiters"]
        if seen == expected:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{path}: expected {expected} waiters, GET kept showing {seen}")


async def _post_and_stay(server: Any, path: str, body: object) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """POST `body` on a raw connection and leave it open, as a client that waits for its answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    payload = json.dumps(body).encode()
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    await writer.drain()
    return reader, writer


async def test_blocking_acquires_are_served_in_fifo_order_and_leavers_are_skipped(server: Any) -> None:
    path = LOCK.format(name="fifo")
    body = {"ttl_ms": 30_000, "wait_ms": 30_000}
    granted: list[tuple[str, int, str | None]] = []

    async def waiter(label: str) -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
            response = await client.post(f"{path}/acquire", json={**body, "holder": label})
            assert response.status_code == 200, (label, response.status_code, response.text)
            lease = response.json()
            status = await _lock_status(client, path)
            granted.append((label, lease["token"], status["holder"]))
            assert status["token"] == lease["token"]
            await asyncio.sleep(0.02)  # hold it for a moment: the next in line must keep waiting
            released = await client.post(f"{path}/release", json={"lease_id": lease["lease_id"]})
            assert released.status_code == 200, (label, released.text)

    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as observer:
        held = await observer.post(f"{path}/acquire", json={"ttl_ms": 30_000, "holder": "first"})
        assert held.status_code == 200, held.text
        first = held.json()

        tasks: dict[str, asyncio.Task[None]] = {}
        queued = 0

        # A waiter on a raw socket, and one on its own httpx client, both of which hang up while waiting.
        raw_reader, raw_writer = await asyncio.open_connection("127.0.0.1", server.port)
        leaver_client = httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT)
        leaver_task: asyncio.Task[httpx.Response] | None = None

        for label in ["w1", "w2", "leaver-raw", "w3", "leaver-httpx", "w4"]:
            if label == "leaver-raw":
                payload = json.dumps({**body, "holder": label}).encode()
                raw_writer.write(
                    f"POST {path}/acquire HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
                    + payload
                )
                await raw_writer.drain()
            elif label == "leaver-httpx":
                leaver_task = asyncio.create_task(leaver_client.post(f"{path}/acquire", json={**body, "holder": label}))
            else:
                tasks[label] = asyncio.create_task(waiter(label))
            queued += 1
            await _wait_for_waiters(observer, path, queued)

        # The raw client hangs up: it leaves the line.
        raw_writer.close()
        await raw_writer.wait_closed()
        await _wait_for_waiters(observer, path, queued - 1)
        # The httpx client gives up (task cancelled, connection closed): it leaves the line too.
        assert leaver_task is not None
        leaver_task.cancel()
        await leaver_client.aclose()
        await _wait_for_waiters(observer, path, queued - 2)
        assert leaver_task.cancelled() or leaver_task.done()

        status = await _lock_status(observer, path)
        assert status["held"] and status["holder"] == "first" and status["token"] == first["token"]

        released = await observer.post(f"{path}/release", json={"lease_id": first["lease_id"]})
        assert released.status_code == 200, released.text
        await asyncio.wait_for(asyncio.gather(*tasks.values()), timeout=20)

        assert [label for label, _, _ in granted] == ["w1", "w2", "w3", "w4"]
        assert all(label == holder for label, _, holder in granted), granted
        tokens = [first["token"]] + [token for _, token, _ in granted]
        assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens), tokens

        final = await _lock_status(observer, path)
        assert final["held"] is False and final["waiters"] == 0, final
        # The server had answered the raw leaver nothing before it hung up.
        assert await raw_reader.read() == b""


async def test_a_waiter_that_hangs_up_is_never_granted_even_when_the_lock_frees_at_once(server: Any) -> None:
    """The leaver is the head of the line; after it leaves, a release must go to the next waiter."""
    path = LOCK.format(name="head-leaves")
    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as observer:
        first = (await observer.post(f"{path}/acquire", json={"ttl_ms": 30_000, "holder": "first"})).json()

        reader, writer = await _post_and_stay(
            server, f"{path}/acquire", {"ttl_ms": 30_000, "wait_ms": 30_000, "holder": "gone"}
        )
        await _wait_for_waiters(observer, path, 1)

        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as second_client:
            second = asyncio.create_task(
                second_client.post(f"{path}/acquire", json={"ttl_ms": 30_000, "wait_ms": 30_000, "holder": "second"})
            )
            await _wait_for_waiters(observer, path, 2)
            writer.close()
            await writer.wait_closed()
            await _wait_for_waiters(observer, path, 1)

            assert (await observer.post(f"{path}/release", json={"lease_id": first["lease_id"]})).status_code == 200
            response = await asyncio.wait_for(second, timeout=10)
            assert response.status_code == 200, response.text
            lease = response.json()
            assert lease["token"] > first["token"]
            status = await _lock_status(observer, path)
            assert status["holder"] == "second" and status["token"] == lease["token"] and status["waiters"] == 0
            await second_client.post(f"{path}/release", json={"lease_id": lease["lease_id"]})
        del reader


def _batch_acquire(name: str, wait_ms: int, holder: str) -> dict[str, Any]:
    args = {"ttl_ms": 30_000, "wait_ms": wait_ms, "holder": holder}
    return {"op": "locks.acquire", "namespace": "handoff", "name": name, "args": args}


async def test_batch_waiters_that_hang_up_leave_the_line(server: Any) -> None:
    """The same as a single acquire: no lease nobody owns is granted once a lock frees. The
    first waiter is the one being awaited when the client leaves; the second is given up."""
    names = ["batch-leaves-1", "batch-leaves-2"]
    paths = [LOCK.format(name=name) for name in names]
    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as observer:
        held = [(await observer.post(f"{path}/acquire", json={"ttl_ms": 30_000})).json() for path in paths]

        _, writer = await _post_and_stay(
            server, "/v1/batch", {"ops": [_batch_acquire(name, 30_000, "gone") for name in names]}
        )
        for path in paths:
            await _wait_for_waiters(observer, path, 1)
        writer.close()
        await writer.wait_closed()
        for path, lease in zip(paths, held, strict=True):
            await _wait_for_waiters(observer, path, 0)
            assert (await observer.post(f"{path}/release", json={"lease_id": lease["lease_id"]})).status_code == 200
            status = await _lock_status(observer, path)
            assert status["held"] is False, status


async def test_a_batch_waiter_granted_before_its_client_hangs_up_gives_the_grant_back(server: Any) -> None:
    """The batch answers once its slowest op is done: a waiter granted while a later one still
    waits was granted to nobody once the client left, and held the lock for its whole TTL."""
    first, second = LOCK.format(name="batch-granted-1"), LOCK.format(name="batch-granted-2")
    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as observer:
        held = [(await observer.post(f"{path}/acquire", json={"ttl_ms": 30_000})).json() for path in (first, second)]
        ops = [_batch_acquire(name, 30_000, "gone") for name in ("batch-granted-1", "batch-granted-2")]
        _, writer = await _post_and_stay(server, "/v1/batch", {"ops": ops})
        await _wait_for_waiters(observer, first, 1)
        await _wait_for_waiters(observer, second, 1)
        await observer.post(f"{first}/release", json={"lease_id": held[0]["lease_id"]})
        granted = await _lock_status(observer, first)
        assert granted["held"] and granted["holder"] == "gone", granted  # granted, its answer held back
        writer.close()
        await writer.wait_closed()
        await _wait_for_waiters(observer, second, 0)
        deadline = time.monotonic() + 10
        while (await _lock_status(observer, first))["held"]:
            assert time.monotonic() < deadline, "the grant nobody heard of was kept"
            await asyncio.sleep(0.01)


async def test_batch_ops_are_applied_in_the_order_sent(server: Any) -> None:
    """A waiting acquire first in a batch is first in line, ahead of a try-once behind it."""
    name = "batch-order"
    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
        ops = [_batch_acquire(name, 1_000, "waits"), _batch_acquire(name, 0, "tries")]
        response = await client.post("/v1/batch", json={"ops": ops})
        assert response.status_code == 200, response.text
        first, second = response.json()["results"]
        assert first["status"] == 200, first
        assert second["status"] == 409, second
        await client.post(LOCK.format(name=name) + "/release", json={"lease_id": first["body"]["lease_id"]})
