"""msgpack in, msgpack out: bodies, reads, batches and problems."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest

MSGPACK = "application/msgpack"
PROBLEMS = "https://lockgate.dev/problems/"
NS = "/v1/namespaces/packed"


@pytest.fixture(scope="module")
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=10) as http:
        yield http


def packed(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.content[:300]
    assert response.headers["content-type"] == MSGPACK
    return msgspec.msgpack.decode(response.content)


def post(client: httpx.Client, path: str, body: Any, method: str = "POST") -> httpx.Response:
    return client.request(method, path, content=msgspec.msgpack.encode(body), headers={"Content-Type": MSGPACK})


def test_msgpack_request_gets_a_msgpack_answer(client: httpx.Client) -> None:
    lock = f"{NS}/locks/packed-lock"
    lease = packed(post(client, f"{lock}/acquire", {"ttl_ms": 30_000, "holder": "mp"}))
    assert set(lease) == {"lease_id", "token", "ttl_ms", "permits", "lsn"}
    assert lease["ttl_ms"] == 30_000 and lease["permits"] == 1 and isinstance(lease["token"], int)

    # A read asking for msgpack gets msgpack; the same read in JSON says the same.
    status = packed(client.get(lock, headers={"Accept": MSGPACK}))
    assert status["held"] is True and status["holder"] == "mp" and status["token"] == lease["token"]
    as_json = client.get(lock)
    assert as_json.headers["content-type"] == "application/json"
    assert as_json.json()["token"] == lease["token"]

    renewed = packed(post(client, f"{lock}/renew", {"lease_id": lease["lease_id"], "ttl_ms": 20_000}))
    assert renewed["token"] == lease["token"] and renewed["ttl_ms"] == 20_000
    released = packed(post(client, f"{lock}/release", {"lease_id": lease["lease_id"]}))
    assert released["released"] is True and released["lsn"] > lease["lsn"]


def test_msgpack_counters_and_rate_limits(client: httpx.Client) -> None:
    counter = f"{NS}/counters/packed-counter"
    assert packed(post(client, counter, {"value": -(2**63)}, method="PUT"))["value"] == -(2**63)
    assert packed(post(client, f"{counter}/add", {"delta": 2**63 - 1}))["value"] == -1
    swapped = packed(post(client, f"{counter}/compare-and-set", {"expected": -1, "value": 42}))
    assert swapped["swapped"] is True and swapped["value"] == 42
    decision = packed(post(client, f"{NS}/ratelimits/packed-rate/check", {"limit": 5, "period_ms": 60_000}))
    assert decision["allowed"] is True and decision["limit"] == 5


def test_msgpack_problems_are_msgpack(client: httpx.Client) -> None:
    lock = f"{NS}/locks/packed-problem"
    packed(post(client, f"{lock}/acquire", {"ttl_ms": 30_000}))
    refused = packed(post(client, f"{lock}/acquire", {"ttl_ms": 30_000}), status=409)
    assert refused["type"] == PROBLEMS + "held" and refused["status"] == 409
    invalid = packed(post(client, f"{lock}/acquire", {"ttl_ms": "soon"}), status=422)
    assert invalid["type"] == PROBLEMS + "invalid-request"
    malformed = client.put(f"{NS}/counters/x", content=b"\xc1", headers={"Content-Type": MSGPACK})
    assert packed(malformed, status=400)["type"] == PROBLEMS + "malformed"


def test_msgpack_batch(client: httpx.Client) -> None:
    ops = [
        {"op": "counters.add", "namespace": "packed", "name": "batch-counter", "args": {"delta": 3}},
        {"op": "locks.acquire", "namespace": "packed", "name": "batch-lock", "args": {"ttl_ms": 30_000}},
        {"op": "locks.get", "namespace": "packed", "name": "batch-lock"},
        {"op": "ratelimits.peek", "namespace": "packed", "name": "batch-rate", "args": {"limit": 2, "period_ms": 1000}},
        {"op": "counters.add", "namespace": "packed", "name": "batch-counter", "args": {"delta": "x"}},
    ]
    results = packed(post(client, "/v1/batch", {"ops": ops}))["results"]
    assert [item["status"] for item in results] == [200, 200, 200, 200, 422], results
    assert results[0]["body"]["value"] == 3
    assert results[1]["body"]["permits"] == 1
    assert results[3]["body"]["remaining"] == 2
    assert results[4]["problem"]["type"] == PROBLEMS + "invalid-request"
