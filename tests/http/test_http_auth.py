"""API keys: every /v1 route refuses a missing or unknown key (401), another namespace (403),
and a right the key does not have (403); batch answers 403 per op. Errors are problem+json."""

from __future__ import annotations

import json
from typing import Any

import httpx
import msgspec
import pytest

from lockgate_server.api import schemas
from lockgate_server.api.auth import hash_key
from lockgate_server.api.operations import ROUTES, Route

PROBLEMS = "https://lockgate.dev/problems/"
WRITER_ALPHA = "alpha-writer-key-0123456789"
ADMIN_BETA = "beta-admin-key-0123456789"
READER_ALPHA = "alpha-reader-key-0123456789"
UNKNOWN = "not-a-key-we-know-0123456789"

SERVER_ENV = {
    "LOCKGATE_API_KEYS": json.dumps(
        [
            {"sha256": hash_key(WRITER_ALPHA), "namespaces": ["alpha"], "rights": ["write"], "name": "a"},
            {"sha256": hash_key(ADMIN_BETA), "namespaces": ["beta"], "rights": ["admin"], "name": "b"},
            {"sha256": hash_key(READER_ALPHA), "namespaces": ["alpha"], "rights": ["read"], "name": "r"},
        ]
    )
}

# A valid argument for every body and query struct of the route table.
BODIES: dict[type[msgspec.Struct], dict[str, Any]] = {
    schemas.LockAcquire: {"ttl_ms": 1_000},
    schemas.SemaphoreAcquire: {"limit": 2, "ttl_ms": 1_000},
    schemas.LeaseRelease: {"lease_id": "no-such-lease"},
    schemas.LeaseRenew: {"lease_id": "no-such-lease", "ttl_ms": 1_000},
    schemas.CounterAdd: {"delta": 1},
    schemas.CounterSet: {"value": 7},
    schemas.CounterCompareAndSet: {"expected": 0, "value": 1},
    schemas.RateCheck: {"limit": 10, "period_ms": 1_000},
    schemas.RateReset: {},
    schemas.FenceCheck: {"kind": "lock", "name": "obj", "token": 1},
}
QUERIES: dict[type[msgspec.Struct], dict[str, Any]] = {schemas.RatePeek: {"limit": 10, "period_ms": 1_000}}

ALL = [*ROUTES, None]  # None: /v1/batch
ADMIN_ROUTES = [route for route in ROUTES if route.right == "admin"]
WRITE_ROUTES = [route for route in ROUTES if route.right == "write"]
READ_ROUTES = [route for route in ROUTES if route.right == "read"]


def _id(route: Route | None) -> str:
    return route.operation if route is not None else "batch"


def _args(route: Route) -> dict[str, Any] | None:
    if route.body is not None:
        return BODIES[route.body]
    if route.query is not None:
        return QUERIES[route.query]
    return None


def request(
    client: httpx.Client, route: Route | None, namespace: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    if route is None:
        op = {"op": "counters.add", "namespace": namespace, "name": "obj", "args": {"delta": 1}}
        return client.post("/v1/batch", json={"ops": [op]}, headers=headers)
    path = route.path.format(namespace=namespace, name="obj")
    if route.query is not None:
        return client.request(route.method, path, params=_args(route), headers=headers)
    body = _args(route)
    return client.request(route.method, path, json=body, headers=headers)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_problem(response: httpx.Response, status: int, slug: str) -> None:
    assert response.status_code == status, (response.request.method, response.request.url, response.text)
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"] == PROBLEMS + slug
    assert problem["status"] == status
    assert problem["title"]


@pytest.fixture(scope="module")
def client(base_url: str) -> Any:
    with httpx.Client(base_url=base_url, timeout=10) as http:
        yield http


def test_every_route_is_covered() -> None:
    for route in ROUTES:
        assert route.body is None or route.body in BODIES, route.operation
        assert route.query is None or route.query in QUERIES, route.operation
    assert ADMIN_ROUTES and WRITE_ROUTES and READ_ROUTES


@pytest.mark.parametrize("route", ALL, ids=_id)
def test_missing_key_is_401(client: httpx.Client, route: Route | None) -> None:
    for namespace in ("alpha", "beta"):
        assert_problem(request(client, route, namespace), 401, "unauthorized")
        assert_problem(request(client, route, namespace, {"Authorization": "Bearer"}), 401, "unauthorized")
        assert_problem(request(client, route, namespace, {"X-API-Key": ""}), 401, "unauthorized")


@pytest.mark.parametrize("route", ALL, ids=_id)
def test_unknown_key_is_401(client: httpx.Client, route: Route | None) -> None:
    for namespace in ("alpha", "beta"):
        assert_problem(request(client, route, namespace, bearer(UNKNOWN)), 401, "unauthorized")
        assert_problem(request(client, route, namespace, {"X-API-Key": UNKNOWN}), 401, "unauthorized")
        # The stored hash is not a key.
        assert_problem(request(client, route, namespace, bearer(hash_key(ADMIN_BETA))), 401, "unauthorized")
        # A known key with a wrong scheme is no key at all.
        assert_problem(request(client, route, namespace, {"Authorization": f"Basic {ADMIN_BETA}"}), 401, "unauthorized")


@pytest.mark.parametrize("route", ROUTES, ids=_id)
def test_another_namespace_is_403(client: httpx.Client, route: Route) -> None:
    assert_problem(request(client, route, "beta", bearer(WRITER_ALPHA)), 403, "forbidden")
    assert_problem(request(client, route, "beta", {"X-API-Key": READER_ALPHA}), 403, "forbidden")
    assert_problem(request(client, route, "alpha", {"X-API-Key": ADMIN_BETA}), 403, "forbidden")
    assert_problem(request(client, route, "gamma", bearer(ADMIN_BETA)), 403, "forbidden")
    # ... while the right key in its own namespace gets past auth.
    allowed = request(client, route, "beta", bearer(ADMIN_BETA))
    assert allowed.status_code not in (401, 403), allowed.text


@pytest.mark.parametrize("route", ADMIN_ROUTES, ids=_id)
def test_admin_routes_refuse_read_and_write_keys(client: httpx.Client, route: Route) -> None:
    assert_problem(request(client, route, "alpha", bearer(WRITER_ALPHA)), 403, "forbidden")
    assert_problem(request(client, route, "alpha", bearer(READER_ALPHA)), 403, "forbidden")
    assert request(client, route, "beta", bearer(ADMIN_BETA)).status_code == 200


@pytest.mark.parametrize("route", WRITE_ROUTES, ids=_id)
def test_write_routes_refuse_read_keys(client: httpx.Client, route: Route) -> None:
    assert_problem(request(client, route, "alpha", bearer(READER_ALPHA)), 403, "forbidden")
    allowed = request(client, route, "alpha", bearer(WRITER_ALPHA))
    assert allowed.status_code not in (401, 403), allowed.text


@pytest.mark.parametrize("route", READ_ROUTES, ids=_id)
def test_read_routes_serve_read_keys(client: httpx.Client, route: Route) -> None:
    response = request(client, route, "alpha", bearer(READER_ALPHA))
    assert response.status_code == 200, response.text


def test_batch_answers_403_per_op(client: httpx.Client) -> None:
    ops = [
        {"op": "counters.add", "namespace": "alpha", "name": "batch-c", "args": {"delta": 2}},
        {"op": "counters.add", "namespace": "beta", "name": "batch-c", "args": {"delta": 2}},
        {"op": "locks.get", "namespace": "beta", "name": "batch-l"},
        {"op": "locks.force_release", "namespace": "alpha", "name": "batch-l"},
        {"op": "held.list", "namespace": "alpha"},
        {"op": "counters.get", "namespace": "alpha", "name": "batch-c"},
    ]
    response = client.post("/v1/batch", json={"ops": ops}, headers=bearer(WRITER_ALPHA))
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [item["status"] for item in results] == [200, 403, 403, 403, 403, 200], results
    for item in results:
        if item["status"] == 403:
            assert item["problem"]["type"] == PROBLEMS + "forbidden"
            assert item["problem"]["status"] == 403
            assert "body" not in item
    assert results[0]["body"]["value"] == 2 and results[5]["body"]["value"] == 2

    read_only = client.post("/v1/batch", json={"ops": ops[:1]}, headers={"X-API-Key": READER_ALPHA})
    assert read_only.status_code == 200
    assert read_only.json()["results"][0]["status"] == 403
    assert read_only.json()["results"][0]["problem"]["type"] == PROBLEMS + "forbidden"

    # beta's counter was never touched; alpha's holds exactly the one allowed add.
    beta = client.get("/v1/namespaces/beta/counters/batch-c", headers=bearer(ADMIN_BETA))
    assert beta.json()["value"] == 0
    alpha = client.get("/v1/namespaces/alpha/counters/batch-c", headers=bearer(READER_ALPHA))
    assert alpha.json()["value"] == 2


def test_refused_requests_change_nothing_in_the_other_namespace(client: httpx.Client) -> None:
    admin = bearer(ADMIN_BETA)
    held = client.post(
        "/v1/namespaces/beta/locks/guarded/acquire", json={"ttl_ms": 30_000, "holder": "b"}, headers=admin
    )
    assert held.status_code == 200
    lease = held.json()
    assert client.put("/v1/namespaces/beta/counters/guarded", json={"value": 5}, headers=admin).status_code == 200

    intruder = bearer(WRITER_ALPHA)
    attempts = [
        ("POST", "/v1/namespaces/beta/locks/guarded/release", {"lease_id": lease["lease_id"]}),
        ("POST", "/v1/namespaces/beta/locks/guarded/renew", {"lease_id": lease["lease_id"], "ttl_ms": 100}),
        ("POST", "/v1/namespaces/beta/locks/guarded/force-release", None),
        ("PUT", "/v1/namespaces/beta/counters/guarded", {"value": 99}),
        ("POST", "/v1/namespaces/beta/counters/guarded/add", {"delta": 1}),
        ("POST", "/v1/namespaces/beta/counters/guarded/compare-and-set", {"expected": 5, "value": 6}),
    ]
    for method, path, body in attempts:
        assert_problem(client.request(method, path, json=body, headers=intruder), 403, "forbidden")
    batch = [
        {"op": "locks.release", "namespace": "beta", "name": "guarded", "args": {"lease_id": lease["lease_id"]}},
        {"op": "counters.set", "namespace": "beta", "name": "guarded", "args": {"value": 99}},
    ]
    answered = client.post("/v1/batch", json={"ops": batch}, headers=intruder)
    assert [item["status"] for item in answered.json()["results"]] == [403, 403]

    status = client.get("/v1/namespaces/beta/locks/guarded", headers=admin).json()
    assert status["held"] is True and status["token"] == lease["token"] and status["holder"] == "b"
    assert status["remaining_ms"] > 20_000
    assert client.get("/v1/namespaces/beta/counters/guarded", headers=admin).json()["value"] == 5
