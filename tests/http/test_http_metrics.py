"""/metrics exposes the engine and API series, and they move when operations happen."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
LOCK = "/v1/namespaces/metrics/locks/{name}"
SERIES = [
    "lockgate_ops_total",
    "lockgate_op_latency_seconds",
    "lockgate_commit_batch_ops",
    "lockgate_append_latency_seconds",
    "lockgate_inbox_depth",
    "lockgate_waiters",
    "lockgate_shards_owned",
    "lockgate_expiry_sweeps",
]
# test_inbox_depth pauses the store for a moment; that must not count as an outage.
SERVER_ENV = {"LOCKGATE_COMMIT_TIMEOUT_MS": "30000"}


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def scrape(client: httpx.Client) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


def test_every_series_is_exposed(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=10) as client:
        client.get(LOCK.format(name="warm-up"))  # labelled series appear with their first observation
        exposed = names(scrape(client))
    for series in SERIES:
        assert any(name == series or name.startswith(series + "_") for name in exposed), (series, sorted(exposed))
    assert "lockgate_op_latency_seconds_bucket" in exposed
    assert "lockgate_commit_batch_ops_count" in exposed
    assert "lockgate_append_latency_seconds_sum" in exposed


def test_counters_and_histograms_move_with_operations(base_url: str) -> None:
    path = LOCK.format(name="moves")
    with httpx.Client(base_url=base_url, timeout=10) as client:
        before = scrape(client)
        for _ in range(3):
            lease = client.post(f"{path}/acquire", json={"ttl_ms": 10_000}).json()
            assert client.post(f"{path}/release", json={"lease_id": lease["lease_id"]}).status_code == 200
        held = client.post(f"{path}/acquire", json={"ttl_ms": 10_000}).json()
        assert client.post(f"{path}/acquire", json={"ttl_ms": 10_000}).status_code == 409
        assert client.post(f"{path}/acquire", json={"ttl_ms": 1}).status_code == 422
        assert client.post(f"{path}/release", json={"lease_id": held["lease_id"]}).status_code == 200
        after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("lockgate_ops_total", kind="locks", op="acquire", outcome="ok") == 4
    assert delta("lockgate_ops_total", kind="locks", op="acquire", outcome="held") == 1
    assert delta("lockgate_ops_total", kind="locks", op="acquire", outcome="invalid") == 1
    assert delta("lockgate_ops_total", kind="locks", op="release", outcome="ok") == 4
    assert delta("lockgate_op_latency_seconds_count", kind="locks", op="acquire") == 6
    assert delta("lockgate_op_latency_seconds_count", kind="locks", op="release") == 4
    assert delta("lockgate_op_latency_seconds_sum", kind="locks", op="acquire") > 0
    assert delta("lockgate_op_latency_seconds_bucket", kind="locks", op="acquire", le="+Inf") == 6
    # Eight logged ops (4 grants, 4 releases) went out in at least one commit each time we waited.
    assert delta("lockgate_commit_batch_ops_count") >= 8
    assert delta("lockgate_commit_batch_ops_sum") >= 8
    assert delta("lockgate_append_latency_seconds_count") >= 8
    # Not `_sum > 0`: the server times appends with uvloop's loop.time(), which has millisecond
    # resolution, so sub-millisecond appends are recorded as 0 s.
    assert delta("lockgate_append_latency_seconds_sum") >= 0
    assert delta("lockgate_http_requests_total", route="v1") == 10
    assert value(after, "lockgate_shards_owned") == 8


def test_batch_ops_with_made_up_names_add_no_series(base_url: str) -> None:
    """Their names were the `kind` label: any key could grow the public /metrics without bound."""
    ops = [{"op": f"made-up-{index}.x", "namespace": "metrics"} for index in range(50)]
    with httpx.Client(base_url=base_url, timeout=10) as client:
        before = scrape(client)
        results = client.post("/v1/batch", json={"ops": ops}).json()["results"]
        assert {item["status"] for item in results} == {422}
        after = scrape(client)
    assert not any(("made-up" in label) for _, labels in after for _, label in labels)
    unknown = {"kind": "batch", "op": "unknown", "outcome": "invalid-request"}
    assert value(after, "lockgate_ops_total", **unknown) - value(before, "lockgate_ops_total", **unknown) == 50


def test_every_op_of_a_batch_is_one_latency_observation(base_url: str) -> None:
    """Before, a batch of 32 adds counted 32 ops but a single latency observation."""
    ops = [{"op": "counters.add", "namespace": "metrics", "name": "batched", "args": {"delta": 1}}] * 32
    with httpx.Client(base_url=base_url, timeout=10) as client:
        before = scrape(client)
        assert {item["status"] for item in client.post("/v1/batch", json={"ops": ops}).json()["results"]} == {200}
        after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("lockgate_ops_total", kind="counters", op="add", outcome="ok") == 32
    assert delta("lockgate_op_latency_seconds_count", kind="counters", op="add") == 32
    assert delta("lockgate_op_latency_seconds_bucket", kind="counters", op="add", le="+Inf") == 32


async def test_ops_of_a_batch_whose_client_left_are_counted(server: Any) -> None:
    """They were counted nowhere, though the add before the waiting acquire took effect."""
    lock = LOCK.format(name="batch-left")
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        held = (await client.post(f"{lock}/acquire", json={"ttl_ms": 30_000})).json()
        before = parse((await client.get("/metrics")).text)
        waits = {"ttl_ms": 1_000, "wait_ms": 30_000}
        ops = [
            {"op": "counters.add", "namespace": "metrics", "name": "before-leaving", "args": {"delta": 1}},
            {"op": "locks.acquire", "namespace": "metrics", "name": "batch-left", "args": waits},
        ]
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        payload = httpx.Request("POST", "/v1/batch", json={"ops": ops}).read()
        writer.write(
            f"POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        await writer.drain()
        deadline = time.monotonic() + 10
        while (await client.get(lock)).json()["waiters"] != 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        writer.close()
        await writer.wait_closed()
        del reader
        deadline = time.monotonic() + 10
        while True:
            after = parse((await client.get("/metrics")).text)
            left = value(after, "lockgate_ops_total", kind="locks", op="acquire", outcome="client_left")
            if left - value(before, "lockgate_ops_total", kind="locks", op="acquire", outcome="client_left") == 1:
                break
            assert time.monotonic() < deadline, "the acquire of the abandoned batch was never counted"
            await asyncio.sleep(0.01)
        added = value(after, "lockgate_ops_total", kind="counters", op="add", outcome="ok")
        assert added - value(before, "lockgate_ops_total", kind="counters", op="add", outcome="ok") == 1
        await client.post(f"{lock}/release", json={"lease_id": held["lease_id"]})


async def test_waiters_gauge_follows_the_line(base_url: str) -> None:
    path = LOCK.format(name="line")
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:

        async def metric(name: str) -> float:
            return value(parse((await client.get("/metrics")).text), name)

        assert await metric("lockgate_waiters") == 0
        holder = (await client.post(f"{path}/acquire", json={"ttl_ms": 30_000})).json()
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as other:
            waiting = asyncio.create_task(other.post(f"{path}/acquire", json={"ttl_ms": 30_000, "wait_ms": 20_000}))
            deadline = time.monotonic() + 5
            while await metric("lockgate_waiters") != 1:
                assert time.monotonic() < deadline, "lockgate_waiters never showed the queued acquire"
                await asyncio.sleep(0.01)
            await client.post(f"{path}/release", json={"lease_id": holder["lease_id"]})
            granted = await asyncio.wait_for(waiting, 10)
            assert granted.status_code == 200
        assert await metric("lockgate_waiters") == 0
        await client.post(f"{path}/release", json={"lease_id": granted.json()["lease_id"]})


def test_expiry_sweeps_count_expired_leases(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=10) as client:
        before = value(scrape(client), "lockgate_expiry_sweeps")
        for index in range(3):
            assert client.post(f"{LOCK.format(name=f'short-{index}')}/acquire", json={"ttl_ms": 100}).status_code == 200
        deadline = time.monotonic() + 5
        while value(scrape(client), "lockgate_expiry_sweeps") < before + 1:
            assert time.monotonic() < deadline, "lockgate_expiry_sweeps did not move after leases expired"
            time.sleep(0.02)
        for index in range(3):
            assert client.get(LOCK.format(name=f"short-{index}")).json()["held"] is False


async def test_inbox_depth_shows_ops_waiting_for_a_commit(server: Any) -> None:
    """While the store is stuck, every op applied waits for durability: the gauge counts them.

    The embedded Valkey is paused (SIGSTOP) so the first commit stays in flight; the
    commit timeout is raised for this module so that pause is not an outage.
    """
    valkey = server.member_pid("valkey-server")
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:

        async def depth() -> float:
            return value(parse((await client.get("/metrics")).text), "lockgate_inbox_depth")

        async def add(index: int) -> httpx.Response:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as own:
                return await own.post(f"/v1/namespaces/metrics/counters/inbox-{index}/add", json={"delta": 1})

        assert await depth() == 0
        os.kill(valkey, signal.SIGSTOP)
        try:
            in_flight = asyncio.create_task(add(0))
            await asyncio.sleep(0.2)  # its commit is sent, and stuck
            waiting = [asyncio.create_task(add(index)) for index in range(1, 6)]
            deadline = time.monotonic() + 5
            seen = [await depth()]
            while seen[-1] != 6:  # all six wait for durability: one commit in flight, five more
                assert time.monotonic() < deadline, seen
                await asyncio.sleep(0.02)
                seen.append(await depth())
        finally:
            os.kill(valkey, signal.SIGCONT)
        answers = await asyncio.wait_for(asyncio.gather(in_flight, *waiting), 20)
        assert [answer.status_code for answer in answers] == [200] * 6
        assert await depth() == 0
