"""Bad requests get a clear 4xx problem and change nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import msgspec
import pytest

PROBLEMS = "https://lockgate.dev/problems/"
NS = "/v1/namespaces/bad"
LOCK = f"{NS}/locks/keeper"
COUNTER = f"{NS}/counters/keeper"
MAX_BODY = 1_048_576  # Settings.max_body_bytes default


@pytest.fixture(scope="module")
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
def keeper(client: httpx.Client) -> dict[str, Any]:
    """A held lock and a counter that every bad request aims at."""
    lease = client.post(f"{LOCK}/acquire", json={"ttl_ms": 600_000, "holder": "keeper"})
    assert lease.status_code == 200, lease.text
    assert client.put(COUNTER, json={"value": 5}).status_code == 200
    result: dict[str, Any] = lease.json()
    return result


def state(client: httpx.Client) -> dict[str, Any]:
    lock = client.get(LOCK).json()
    remaining = lock.pop("remaining_ms")
    return {
        "lock": lock,
        "remaining_ms": remaining,
        "counter": client.get(COUNTER).json(),
        "held": client.get(f"{NS}/held").json(),
    }


def assert_unchanged(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert after["lock"] == before["lock"]  # same holder, token, waiters, and the shard's LSN did not move
    assert after["counter"] == before["counter"]
    assert after["held"] == before["held"]
    assert 0 < after["remaining_ms"] <= before["remaining_ms"]


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    """A problem document; in msgpack when the request was msgpack, else application/problem+json."""
    assert response.status_code == status, (response.request.method, response.request.url, response.text[:500])
    problem: dict[str, Any]
    if response.request.headers.get("content-type", "").startswith("application/msgpack"):
        assert response.headers["content-type"] == "application/msgpack"
        problem = msgspec.msgpack.decode(response.content)
    else:
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
    assert problem["type"] == PROBLEMS + slug and problem["status"] == status
    return problem


JSON = {"Content-Type": "application/json"}
LONG_NAME = "n" * 257
# "keeper\n": Python's `$` matches before a final newline, so it passed as a name of its own.
BAD_NAMES = [
    "a b",
    "a*b",
    "caf\u00e9",
    "a;b",
    "a%00b",
    "a\\b",
    "a'b",
    'a"b',
    "<x>",
    "a|b",
    "a$b",
    "a\tb",
    LONG_NAME,
    "keeper\n",
]
BAD_NAMESPACES = ["Bad", "-bad", "_bad", "b" * 65, "b.d", "b d", "b\u00e9", "bad\n"]

# (id, method, path, request keyword arguments, status, problem slug)
CASES: list[tuple[str, str, str, dict[str, Any], int, str]] = [
    # malformed bodies: 400
    ("truncated-json", "POST", f"{LOCK}/release", {"content": b'{"lease_id": "x"', "headers": JSON}, 400, "malformed"),
    ("not-json", "PUT", COUNTER, {"content": b"value=9", "headers": JSON}, 400, "malformed"),
    ("empty-body", "POST", f"{LOCK}/acquire", {"content": b"", "headers": JSON}, 400, "malformed"),
    ("trailing-garbage", "PUT", COUNTER, {"content": b'{"value": 9} {"value": 10}', "headers": JSON}, 400,
     "malformed"),
    ("bad-msgpack", "PUT", COUNTER, {"content": b"\xc1\xc1\xc1", "headers": {"Content-Type": "application/msgpack"}},
     400, "malformed"),
    ("batch-truncated", "POST", "/v1/batch", {"content": b'{"ops": [', "headers": JSON}, 400, "malformed"),
    # unknown fields: 422
    ("unknown-field-acquire", "POST", f"{LOCK}/acquire", {"json": {"ttl_ms": 1_000, "ttl": 5}}, 422,
     "invalid-request"),
    ("unknown-field-set", "PUT", COUNTER, {"json": {"value": 9, "force": True}}, 422, "invalid-request"),
    ("unknown-field-release", "POST", f"{LOCK}/release", {"json": {"lease_id": "x", "all": True}}, 422,
     "invalid-request"),
    ("unknown-field-batch-op", "POST", "/v1/batch",
     {"json": {"ops": [{"op": "counters.set", "namespace": "bad", "name": "keeper", "args": {"value": 9},
                        "extra": 1}]}}, 422, "invalid-request"),
    ("unknown-field-batch", "POST", "/v1/batch", {"json": {"ops": [], "atomic": True}}, 422, "invalid-request"),
    # out of bounds, wrong types, missing fields: 422
    ("ttl-too-small", "POST", f"{LOCK}/acquire", {"json": {"ttl_ms": 99}}, 422, "invalid-request"),
    ("ttl-too-large", "POST", f"{LOCK}/acquire", {"json": {"ttl_ms": 24 * 3600 * 1000 + 1}}, 422, "invalid-request"),
    ("ttl-string", "POST", f"{LOCK}/acquire", {"json": {"ttl_ms": "1000"}}, 422, "invalid-request"),
    ("ttl-missing", "POST", f"{LOCK}/acquire", {"json": {"wait_ms": 10}}, 422, "invalid-request"),
    ("wait-negative", "POST", f"{LOCK}/acquire", {"json": {"ttl_ms": 1_000, "wait_ms": -1}}, 422, "invalid-request"),
    ("wait-too-large", "POST", f"{LOCK}/acquire", {"json": {"ttl_ms": 1_000, "wait_ms": 300_001}}, 422,
     "invalid-request"),
    ("holder-too-long", "POST", f"{LOCK}/acquire", {"json": {"ttl_ms": 1_000, "holder": "h" * 129}}, 422,
     "invalid-request"),
    ("renew-ttl-too-small", "POST", f"{LOCK}/renew", {"json": {"lease_id": "x", "ttl_ms": 1}}, 422,
     "invalid-request"),
    ("request-id-empty", "PUT", COUNTER, {"json": {"value": 9, "request_id": ""}}, 422, "invalid-request"),
    ("body-is-array", "PUT", COUNTER, {"json": [9]}, 422, "invalid-request"),
    ("delta-over-int64", "POST", f"{COUNTER}/add", {"json": {"delta": 2**63}}, 422, "invalid-request"),
    ("value-under-int64", "PUT", COUNTER, {"json": {"value": -(2**63) - 1}}, 422, "invalid-request"),
    ("cas-missing-expected", "POST", f"{COUNTER}/compare-and-set", {"json": {"value": 9}}, 422, "invalid-request"),
    ("force-release-with-body", "POST", f"{LOCK}/force-release", {"json": {"everything": True}}, 422,
     "invalid-request"),
    ("semaphore-limit-zero", "POST", f"{NS}/semaphores/keeper/acquire", {"json": {"limit": 0, "ttl_ms": 1_000}},
     422, "invalid-request"),
    ("rate-limit-zero", "POST", f"{NS}/ratelimits/keeper/check", {"json": {"limit": 0, "period_ms": 1_000}}, 422,
     "invalid-request"),
    ("rate-bad-algorithm", "POST", f"{NS}/ratelimits/keeper/check",
     {"json": {"limit": 1, "period_ms": 1_000, "algorithm": "leaky"}}, 422, "invalid-request"),
    # A burst reaching back past the longest period: its stored arrival time could pass 2**64.
    ("rate-burst-window-too-long", "POST", f"{NS}/ratelimits/keeper/check",
     {"json": {"limit": 1, "period_ms": 31_622_400_000, "burst": 2**32 - 1, "cost": 10**9}}, 422, "invalid-request"),
    ("peek-burst-window-too-long", "GET", f"{NS}/ratelimits/keeper",
     {"params": {"limit": 1, "period_ms": 31_622_400_000, "burst": 2}}, 422, "invalid-request"),
    ("peek-missing-query", "GET", f"{NS}/ratelimits/keeper", {}, 422, "invalid-request"),
    ("peek-bad-query", "GET", f"{NS}/ratelimits/keeper", {"params": {"limit": "many", "period_ms": 1_000}}, 422,
     "invalid-request"),
    # Requests that could never succeed, whatever the state: refused before they are sequenced.
    ("rate-cost-over-limit", "POST", f"{NS}/ratelimits/keeper/check",
     {"json": {"limit": 5, "period_ms": 1_000, "cost": 6, "algorithm": "fixed_window"}}, 422, "invalid-request"),
    ("rate-cost-over-burst", "POST", f"{NS}/ratelimits/keeper/check",
     {"json": {"limit": 5, "period_ms": 1_000, "burst": 2, "cost": 3}}, 422, "invalid-request"),
    ("counter-min-over-max", "POST", f"{COUNTER}/add", {"json": {"delta": 1, "min": 5, "max": 1}}, 422,
     "invalid-request"),
    ("semaphore-permits-over-limit", "POST", f"{NS}/semaphores/keeper/acquire",
     {"json": {"limit": 2, "permits": 3, "ttl_ms": 1_000}}, 422, "invalid-request"),
    ("fence-bad-kind", "POST", f"{NS}/fence/check", {"json": {"kind": "counter", "name": "keeper", "token": 1}},
     422, "invalid-request"),
    ("batch-unknown-op", "POST", "/v1/batch", {"json": {"ops": [{"op": "locks.steal", "namespace": "bad"}]}}, 200,
     ""),
    # A bad name or namespace fails only its own op (tests/http/test_http_batch_ops.py).
    ("batch-bad-name", "POST", "/v1/batch",
     {"json": {"ops": [{"op": "counters.set", "namespace": "bad", "name": LONG_NAME, "args": {"value": 9}}]}}, 200,
     ""),
    ("batch-bad-namespace", "POST", "/v1/batch",
     {"json": {"ops": [{"op": "counters.set", "namespace": "Bad", "name": "keeper", "args": {"value": 9}}]}}, 200,
     ""),
    ("batch-bad-args", "POST", "/v1/batch",
     {"json": {"ops": [{"op": "counters.set", "namespace": "bad", "name": "keeper", "args": {"value": "9"}}]}}, 200,
     ""),
    # wrong routes and methods
    ("no-such-route", "POST", f"{NS}/mutexes/keeper/acquire", {"json": {"ttl_ms": 1_000}}, 404, "not-found"),
    ("wrong-method", "DELETE", LOCK, {}, 405, "method-not-allowed"),
    ("batch-get", "GET", "/v1/batch", {}, 405, "method-not-allowed"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "slug"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_request_is_refused_and_changes_nothing(
    client: httpx.Client, keeper: dict[str, Any], method: str, path: str, kwargs: dict[str, Any], status: int, slug: str
) -> None:
    before = state(client)
    response = client.request(method, path, **kwargs)
    if status == 200:  # a batch answers each op on its own
        assert response.status_code == 200, response.text
        (item,) = response.json()["results"]
        assert item["status"] == 422 and item["problem"]["type"] == PROBLEMS + "invalid-request", item
    else:
        problem = assert_problem(response, status, slug)
        assert problem["title"]
    assert_unchanged(before, state(client))


@pytest.mark.parametrize("name", BAD_NAMES, ids=lambda name: repr(name)[:20])
def test_bad_object_name_is_422(client: httpx.Client, keeper: dict[str, Any], name: str) -> None:
    before = state(client)
    path = f"{NS}/locks/{quote(name, safe='')}"
    problem = assert_problem(client.post(f"{path}/acquire", json={"ttl_ms": 60_000}), 422, "invalid-request")
    assert "name" in problem["detail"]
    assert_problem(client.put(f"{NS}/counters/{path.rsplit('/', 1)[1]}", json={"value": 1}), 422, "invalid-request")
    assert_unchanged(before, state(client))


@pytest.mark.parametrize("namespace", BAD_NAMESPACES, ids=lambda name: repr(name)[:20])
def test_bad_namespace_is_422(client: httpx.Client, keeper: dict[str, Any], namespace: str) -> None:
    before = state(client)
    quoted = quote(namespace, safe="")
    response = client.post(f"/v1/namespaces/{quoted}/locks/keeper/acquire", json={"ttl_ms": 60_000})
    assert_problem(response, 422, "invalid-request")
    assert_unchanged(before, state(client))


def test_a_batch_op_or_fence_check_naming_a_final_newline_is_422(client: httpx.Client, keeper: dict[str, Any]) -> None:
    before = state(client)
    op = {"op": "counters.set", "namespace": "bad", "name": "keeper\n", "args": {"value": 42}}
    (item,) = client.post("/v1/batch", json={"ops": [op]}).json()["results"]
    assert item["status"] == 422 and item["problem"]["type"] == PROBLEMS + "invalid-request", item
    op = {"op": "counters.set", "namespace": "bad\n", "name": "keeper", "args": {"value": 42}}
    (item,) = client.post("/v1/batch", json={"ops": [op]}).json()["results"]
    assert item["status"] == 422, item
    fence = {"kind": "lock", "name": "keeper\n", "token": 1}
    assert_problem(client.post(f"{NS}/fence/check", json=fence), 422, "invalid-request")
    assert_unchanged(before, state(client))


def test_longest_allowed_name_is_served(client: httpx.Client) -> None:
    name = "N" * 256
    assert client.get(f"{NS}/locks/{name}").status_code == 200
    assert client.get(f"{NS}/counters/{name}").json()["value"] == 0


def test_oversized_body_is_413(client: httpx.Client, keeper: dict[str, Any]) -> None:
    before = state(client)
    padding = "x" * MAX_BODY
    # Declared with Content-Length.
    body = json.dumps({"lease_id": keeper["lease_id"], "request_id": padding}).encode()
    assert len(body) > MAX_BODY
    assert_problem(client.post(f"{LOCK}/release", content=body, headers=JSON), 413, "too-large")
    # Streamed with chunked transfer encoding: no length known up front.

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 65_536):
            yield body[start : start + 65_536]

    assert_problem(client.post(f"{LOCK}/release", content=chunks(), headers=JSON), 413, "too-large")
    big_value = json.dumps({"value": 9, "request_id": padding}).encode()
    assert_problem(client.put(COUNTER, content=big_value, headers=JSON), 413, "too-large")
    big_batch = {"ops": [{"op": "locks.release", "namespace": "bad", "name": "keeper",
                          "args": {"lease_id": keeper["lease_id"]}, "pad": padding}]}  # fmt: skip
    assert_problem(client.post("/v1/batch", json=big_batch), 413, "too-large")
    assert_unchanged(before, state(client))
    # The connection is still good for the next request.
    assert client.get(LOCK).status_code == 200


def test_too_many_batch_ops_is_413(client: httpx.Client, keeper: dict[str, Any]) -> None:
    before = state(client)
    ops = [{"op": "counters.add", "namespace": "bad", "name": "keeper", "args": {"delta": 1}}] * 1001
    assert_problem(client.post("/v1/batch", json={"ops": ops}), 413, "too-large")
    assert_unchanged(before, state(client))


def test_msgpack_bad_input_is_refused_in_msgpack(client: httpx.Client, keeper: dict[str, Any]) -> None:
    before = state(client)
    body = msgspec.msgpack.encode({"value": 9, "unknown": 1})
    response = client.put(COUNTER, content=body, headers={"Content-Type": "application/msgpack"})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/msgpack"
    problem = msgspec.msgpack.decode(response.content)
    assert problem["type"] == PROBLEMS + "invalid-request" and problem["status"] == 422
    assert_unchanged(before, state(client))


MSGPACK = {"Content-Type": "application/msgpack"}
DEEP = b"[" * 5_000 + b"]" * 5_000

# Hostile but small bodies. Each must be refused with a 4xx problem (for the request, or in
# /v1/batch for the op) -- never a 500 "Internal server error" in text/plain.
HOSTILE: list[tuple[str, str, str, bytes, dict[str, str], int]] = [
    ("json-invalid-utf8-in-value", "PUT", COUNTER, b'{"value": 9, "request_id": "\xff\xfe"}', JSON, 400),
    ("json-invalid-utf8-in-key", "PUT", COUNTER, b'{"val\xffue": 9}', JSON, 400),
    ("json-invalid-utf8-release", "POST", f"{LOCK}/release", b'{"lease_id": "\xff"}', JSON, 400),
    ("msgpack-invalid-utf8-in-value", "PUT", COUNTER, b"\x82\xa5value\x09\xaarequest_id\xa2\xff\xfe", MSGPACK, 400),
    ("msgpack-invalid-utf8-in-key", "PUT", COUNTER, b"\x81\xa5val\xff\xfe\x09", MSGPACK, 400),
    ("batch-invalid-utf8-in-args", "POST", "/v1/batch",
     b'{"ops": [{"op": "counters.set", "namespace": "bad", "name": "keeper", "args": {"value": 9, '
     b'"request_id": "\xff"}}]}', JSON, 400),
    ("batch-invalid-utf8-in-op", "POST", "/v1/batch",
     b'{"ops": [{"op": "counters.s\xffet", "namespace": "bad", "name": "keeper", "args": {"value": 9}}]}', JSON, 400),
    ("batch-deeply-nested-args", "POST", "/v1/batch",
     b'{"ops": [{"op": "counters.set", "namespace": "bad", "name": "keeper", "args": ' + DEEP + b"}]}", JSON, 400),
    ("msgpack-batch-peek-without-args", "POST", "/v1/batch",
     msgspec.msgpack.encode({"ops": [{"op": "ratelimits.peek", "namespace": "bad", "name": "keeper"}]}), MSGPACK,
     422),
    ("json-deeply-nested-value", "PUT", COUNTER, b'{"value": ' + DEEP + b"}", JSON, 422),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "body", "headers", "status"), [c[1:] for c in HOSTILE],
                         ids=[c[0] for c in HOSTILE])  # fmt: skip
def test_hostile_body_is_a_4xx_problem_not_a_500(
    client: httpx.Client,
    keeper: dict[str, Any],
    method: str,
    path: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
) -> None:
    before = state(client)
    response = client.request(method, path, content=body, headers=headers)
    assert response.status_code < 500, (
        f"{method} {path} {headers} body={body[:120]!r} -> {response.status_code} "
        f"{response.headers.get('content-type')} {response.text[:200]!r}"
    )
    slug = "malformed" if status == 400 else "invalid-request"
    if path == "/v1/batch" and response.status_code == 200:
        results = (msgspec.msgpack.decode(response.content) if headers is MSGPACK else response.json())["results"]
        assert [item["status"] for item in results] == [status], results
        assert results[0]["problem"]["type"] == PROBLEMS + slug
    else:
        assert_problem(response, status, slug)
    assert_unchanged(before, state(client))
