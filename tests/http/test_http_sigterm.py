"""SIGTERM while requests are in flight: the node exits within ~10 s, and every request
either completed correctly (200) or failed with a connection error or a 503 -- never a
wrong answer; what was acknowledged is still there after a restart."""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

EXIT_WITHIN_S = 10.0
PROBLEMS = "https://lockgate.dev/problems/"
COUNTER = "/v1/namespaces/term/counters/c{index}"
LOCK = "/v1/namespaces/term/locks/l{index}"


@dataclass
class Worker:
    """What one client saw: acknowledged operations and how it ended."""

    acked: int = 0
    last_value: int = 0
    last_token: int = 0
    holding: str | None = None  # lease id of an acknowledged, not yet released acquire
    ending: str = ""  # "503 <type>", "connection: <error>", or a wrong answer
    unknown: bool = False  # the last operation may or may not have happened
    wrong: list[str] = field(default_factory=list)


def _ended(worker: Worker, response: httpx.Response | None, error: Exception | None) -> bool:
    """Classify a non-200 outcome; True means the client stops here."""
    if error is not None:
        if isinstance(error, httpx.TimeoutException):
            worker.wrong.append(f"request hung: {error!r}")
        worker.ending = f"connection: {error!r}"
        worker.unknown = True
        return True
    assert response is not None
    if response.status_code == 503:
        problem_type = response.json().get("type", "")
        worker.ending = f"503 {problem_type}"
        # 'unavailable' is answered before the op is sequenced; anything else may have happened.
        worker.unknown = problem_type != PROBLEMS + "unavailable"
        return True
    worker.wrong.append(
        f"{response.request.method} {response.request.url.path} -> {response.status_code} {response.text}"
    )
    worker.ending = "wrong answer"
    return True


async def _call(client: httpx.AsyncClient, method: str, path: str, body: dict[str, Any]) -> Any:
    try:
        return await client.request(method, path, json=body), None
    except httpx.TransportError as error:
        return None, error


async def counter_client(base_url: str, index: int, worker: Worker) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=20) as client:
        while True:
            response, error = await _call(client, "POST", f"{COUNTER.format(index=index)}/add", {"delta": 1})
            if error is not None or response.status_code != 200:
                _ended(worker, response, error)
                return
            value = response.json()["value"]
            if value != worker.last_value + 1:
                worker.wrong.append(f"counter {index}: {worker.last_value} + 1 answered {value}")
            worker.acked += 1
            worker.last_value = value


async def lock_client(base_url: str, index: int, worker: Worker) -> None:
    path = LOCK.format(index=index)
    async with httpx.AsyncClient(base_url=base_url, timeout=20) as client:
        while True:
            response, error = await _call(client, "POST", f"{path}/acquire", {"ttl_ms": 60_000})
            if error is not None or response.status_code != 200:
                _ended(worker, response, error)
                return
            lease = response.json()
            if lease["token"] <= worker.last_token:
                worker.wrong.append(f"lock {index}: token {lease['token']} after {worker.last_token}")
            worker.last_token = lease["token"]
            worker.holding = lease["lease_id"]
            worker.acked += 1
            response, error = await _call(client, "POST", f"{path}/release", {"lease_id": lease["lease_id"]})
            if error is not None or response.status_code != 200:
                _ended(worker, response, error)
                return
            worker.holding = None
            worker.acked += 1


async def _wait_gone(server: Any, started: float) -> float:
    """Seconds until the whole group is gone; a bit more than EXIT_WITHIN_S if it is not."""
    while time.monotonic() - started < EXIT_WITHIN_S + 2:
        if not server.alive_members():
            gone = time.monotonic() - started
            server.process.wait(timeout=5)  # the leader may be a zombie not yet reaped
            return gone
        await asyncio.sleep(0.02)
    return time.monotonic() - started


@pytest.mark.parametrize("target", ["group", "leader"])
async def test_sigterm_with_requests_in_flight(start_server: Any, tmp_path: Path, target: str) -> None:
    data_dir = tmp_path / "data"
    server = start_server(data_dir)
    counters = [Worker() for _ in range(16)]
    locks = [Worker() for _ in range(8)]
    tasks = [asyncio.create_task(counter_client(server.url, i, w)) for i, w in enumerate(counters)]
    tasks += [asyncio.create_task(lock_client(server.url, i, w)) for i, w in enumerate(locks)]

    deadline = time.monotonic() + 15
    while sum(worker.acked for worker in counters + locks) < 100:  # traffic flowing on every client
        assert time.monotonic() < deadline, [(w.acked, w.ending) for w in counters + locks]
        await asyncio.sleep(0.05)
    assert all(not task.done() for task in tasks), [w.ending for w in counters + locks]
    signalled = time.monotonic()
    if target == "group":
        server.signal_group(signal.SIGTERM)  # like Ctrl-C in a terminal, or systemd's control-group stop
    else:
        server.process.send_signal(signal.SIGTERM)  # like `docker stop`: only the main process
    exit_s = await _wait_gone(server, signalled)
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=20)

    everyone = counters + locks
    assert exit_s <= EXIT_WITHIN_S, f"still running {EXIT_WITHIN_S} s after SIGTERM: {server.alive_members()}"
    assert server.process.returncode == 0, (server.process.returncode, server.log())
    assert not [wrong for worker in everyone for wrong in worker.wrong], [w.wrong for w in everyone if w.wrong]
    assert all(worker.ending for worker in everyone)

    # What was acknowledged survived; nothing that was refused as 'unavailable' happened.
    restarted = start_server(data_dir)
    async with httpx.AsyncClient(base_url=restarted.url, timeout=10) as client:
        for index, worker in enumerate(counters):
            value = (await client.get(COUNTER.format(index=index))).json()["value"]
            allowed = {worker.acked, worker.acked + 1} if worker.unknown else {worker.acked}
            assert value in allowed, (index, value, worker)
        for index, worker in enumerate(locks):
            status = (await client.get(LOCK.format(index=index))).json()
            if not worker.unknown:
                assert status["held"] is (worker.holding is not None), (index, status, worker)
            if status["held"]:
                assert status["token"] >= worker.last_token, (index, status, worker)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_sigterm_with_a_blocking_acquire_in_flight(start_server: Any, tmp_path: Path, signum: int) -> None:
    """A waiter in a long blocking acquire must not hold the shutdown up for its whole wait_ms.

    Ctrl-C in a terminal sends SIGINT to the whole group: it drains the same way."""
    server = start_server(tmp_path / "data")
    path = LOCK.format(index="blocked")
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        held = await client.post(f"{path}/acquire", json={"ttl_ms": 60_000})
        assert held.status_code == 200
        waiter = asyncio.create_task(_call(client, "POST", f"{path}/acquire", {"ttl_ms": 60_000, "wait_ms": 30_000}))
        deadline = time.monotonic() + 5
        while (await client.get(path)).json()["waiters"] != 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)

        signalled = time.monotonic()
        server.signal_group(signum)
        exit_s = await _wait_gone(server, signalled)
        members: list[int] = []
        if exit_s > EXIT_WITHIN_S:
            members = server.alive_members()
            server.signal_group(signal.SIGKILL)  # the waiter then sees the connection drop
        response, error = await asyncio.wait_for(waiter, timeout=40)
        outcome = f"{response.status_code} {response.text}" if response is not None else repr(error)
        assert exit_s <= EXIT_WITHIN_S, (
            f"{signal.Signals(signum).name} with POST {path}/acquire {{ttl_ms: 60000, wait_ms: 30000}} waiting: "
            f"the node was still running {exit_s:.1f} s later (members {members}); the waiter got {outcome}"
        )
        assert error is not None or response.status_code == 503, outcome
