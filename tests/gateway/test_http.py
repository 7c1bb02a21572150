"""The HTTP check endpoint, the /json twin and the admin API of a real server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .support import FIXTURES, GatewayServer

POLICY = """
domain: api
descriptors:
  - key: remote_address
    rate_limit: {unit: day, requests_per_unit: 3}
  - key: path
    value: /login
    rate_limit: {unit: day, requests_per_unit: 2}
  - key: api_key
    rate_limit: {unit: day, requests_per_unit: 4, algorithm: gcra}
http:
  api_key_header: X-Client-Key
  hits_addend_header: X-Lockgate-Hits-Addend
  descriptors:
    - entries: [{key: remote_address, source: client_ip}]
    - entries: [{key: path, source: path}]
    - entries: [{key: api_key, source: api_key}]
---
domain: strict
deny_status: 403
descriptors:
  - key: remote_address
    rate_limit: {unit: day, requests_per_unit: 1}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    folder = tmp_path_factory.mktemp("gateway-http")
    (folder / "policy.yaml").write_text(POLICY)
    files = f"{folder / 'policy.yaml'},{FIXTURES / 'example.yaml'}"
    instance = GatewayServer(folder / "data", {"LOCKGATE_POLICY_FILES": files, "LOCKGATE_GRPC_PORT": "0"}).start()
    yield instance
    instance.stop()


def check(client: httpx.Client, path: str = "/check/api", **headers: str) -> httpx.Response:
    return client.get(path, headers=headers)


def test_allowed_then_denied_with_the_rate_limit_headers(client: httpx.Client) -> None:
    forwarded = {"X-Forwarded-For": "10.0.0.1, 203.0.113.7"}
    for remaining in (2, 1, 0):
        allowed = check(client, **forwarded)
        assert allowed.status_code == 200, allowed.text
        assert allowed.headers["RateLimit-Policy"] == '"remote_address";q=3;w=86400'
        assert allowed.headers["RateLimit"].startswith(f'"remote_address";r={remaining};t=')
        assert allowed.headers["X-RateLimit-Limit"] == "3"
        assert allowed.headers["X-RateLimit-Remaining"] == str(remaining)
        assert 0 < int(allowed.headers["X-RateLimit-Reset"]) <= 86400
        assert "Retry-After" not in allowed.headers
    denied = check(client, **forwarded)
    assert denied.status_code == 429
    assert denied.headers["X-RateLimit-Remaining"] == "0"
    assert 0 < int(denied.headers["Retry-After"]) <= 86400
    # The client IP is the right-most hop; X-Real-IP counts when there is no X-Forwarded-For.
    assert check(client, **{"X-Forwarded-For": "203.0.113.8"}).status_code == 200
    assert check(client, **{"X-Real-IP": "203.0.113.7"}).status_code == 429


def test_the_path_comes_from_x_original_uri_or_the_path_after_the_domain(client: httpx.Client) -> None:
    # Envoy ext_authz appends the original path to the check path; nginx sends X-Original-URI.
    assert check(client, "/check/api/login", **{"X-Real-IP": "198.51.100.1"}).status_code == 200
    login = check(client, **{"X-Real-IP": "198.51.100.2", "X-Original-URI": "/login?next=/home"})
    assert login.status_code == 200
    assert login.headers["RateLimit-Policy"] == '"remote_address";q=3;w=86400, "path_/login";q=2;w=86400'
    assert login.headers["X-RateLimit-Remaining"] == "0"  # the tightest of the two
    assert check(client, "/check/api/login", **{"X-Real-IP": "198.51.100.3"}).status_code == 429
    assert check(client, "/check/api/other", **{"X-Real-IP": "198.51.100.3"}).status_code == 200


def test_the_api_key_descriptor_and_the_domain_header(client: httpx.Client) -> None:
    def with_key(key: str, n: int) -> int:
        headers = {"X-Lockgate-Domain": "api", "X-Client-Key": key, "X-Real-IP": f"192.0.2.{n}"}
        return check(client, "/check", **headers).status_code

    assert [with_key("k1", n) for n in range(5)] == [200, 200, 200, 200, 429]
    assert with_key("k2", 5) == 200


def test_a_peek_charges_nothing(client: httpx.Client) -> None:
    ip = {"X-Real-IP": "192.0.2.50"}
    peek = {**ip, "X-Lockgate-Hits-Addend": "0"}
    for _ in range(5):
        looked = client.get("/check/api", headers=peek)
        assert looked.status_code == 200 and looked.headers["X-RateLimit-Remaining"] == "3"
    assert check(client, **ip).headers["X-RateLimit-Remaining"] == "2"
    heavy = client.get("/check/api", headers={**ip, "X-Lockgate-Hits-Addend": "2"})
    assert heavy.status_code == 200 and heavy.headers["X-RateLimit-Remaining"] == "0"
    assert client.get("/check/api", headers={**ip, "X-Lockgate-Hits-Addend": "-1"}).status_code == 422


def test_a_client_cannot_make_its_own_request_free(client: httpx.Client) -> None:
    # The query (Envoy ext_authz forwards the client's) never sets the cost, and a domain
    # without http.hits_addend_header ignores the header (gateways forward client headers).
    ip = {"X-Real-IP": "192.0.2.60"}
    assert client.get("/check/api?hits_addend=0", headers=ip).headers["X-RateLimit-Remaining"] == "2"
    free = {"X-Real-IP": "192.0.2.61", "X-Lockgate-Hits-Addend": "0"}
    assert client.get("/check/strict", headers=free).status_code == 200
    assert client.get("/check/strict", headers=free).status_code == 403


def test_deny_status_is_per_domain_and_an_unknown_domain_is_404(client: httpx.Client) -> None:
    assert check(client, "/check/strict", **{"X-Real-IP": "192.0.2.9"}).status_code == 200
    denied = check(client, "/check/strict", **{"X-Real-IP": "192.0.2.9"})
    assert denied.status_code == 403 and 0 < int(denied.headers["Retry-After"]) <= 86400
    missing = check(client, "/check/nope")
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
    assert check(client, "/check").status_code == 404


def test_the_json_twin_answers_like_envoyproxy_ratelimit(client: httpx.Client) -> None:
    body = {
        "domain": "rl",
        "descriptors": [{"entries": [{"key": "foo", "value": "json"}]}, {"entries": [{"key": "qux", "value": "q"}]}],
    }
    first = client.post("/json", json=body)
    assert first.status_code == 200, first.text
    answer = first.json()
    assert answer["overallCode"] == "OK"
    assert answer["statuses"][0]["currentLimit"] == {"requestsPerUnit": 2, "unit": "MINUTE", "name": "foo"}
    assert answer["statuses"][0]["limitRemaining"] == 1
    assert answer["statuses"][1] == {"code": "OK", "limitRemaining": 4294967295}  # qux is unlimited
    assert client.post("/json", json=body).status_code == 200
    over = client.post("/json", json={**body, "hits_addend": 1})
    assert over.status_code == 429 and over.json()["overallCode"] == "OVER_LIMIT"
    assert over.json()["statuses"][0]["code"] == "OVER_LIMIT"
    # Unknown domains are not limited (envoyproxy/ratelimit answers the same).
    unknown = client.post("/json", json={"domain": "nope", "descriptors": [{"entries": [{"key": "a", "value": "b"}]}]})
    assert unknown.status_code == 200 and unknown.json()["statuses"] == [{"code": "OK"}]
    assert client.post("/json", json={"domain": "rl"}).status_code == 422
    assert client.post("/json", content=b"{not json").status_code == 422
    assert client.post("/json", content=b"\xff{}").status_code == 422  # not UTF-8: was a 500
    assert client.get("/json").status_code == 405


def test_runtime_policy_change_without_restart_and_reset(client: httpx.Client, tmp_path: Path) -> None:
    ip = {"X-Real-IP": "192.0.2.77"}
    assert check(client, "/check/strict", **ip).status_code == 200
    assert check(client, "/check/strict", **ip).status_code == 403
    listing = client.get("/v1/admin/policies").json()["domains"]
    assert {"domain": "strict", "source": "file"} in listing and {"domain": "rl", "source": "file"} in listing

    yaml_body = """
domain: strict
deny_status: 429
descriptors:
  - key: remote_address
    rate_limit: {unit: day, requests_per_unit: 5}
"""
    put = client.put("/v1/admin/policies/strict", content=yaml_body, headers={"content-type": "application/yaml"})
    assert put.status_code == 200, put.text
    assert put.json()["source"] == "runtime"
    assert put.json()["policy"]["descriptors"][0]["rate_limit"]["requests_per_unit"] == 5
    # In force at once: the same IP has 4 more of 5 (the count carried over), then 429.
    for _ in range(4):
        assert check(client, "/check/strict", **ip).status_code == 200
    assert check(client, "/check/strict", **ip).status_code == 429

    reset = client.post(
        "/v1/admin/policies/strict/reset",
        json={"descriptors": [{"entries": [{"key": "remote_address", "value": "192.0.2.77"}]}]},
    )
    assert reset.status_code == 200 and reset.json()["reset"] == 1
    assert check(client, "/check/strict", **ip).headers["X-RateLimit-Remaining"] == "4"

    deleted = client.delete("/v1/admin/policies/strict")
    assert deleted.json() == {"domain": "strict", "removed": True, "in_force": "file"}
    assert check(client, "/check/strict", **ip).status_code == 403  # back to 1 per day, already used

    json_put = client.put("/v1/admin/policies/brand-new", json={"descriptors": [{"key": "remote_address"}]})
    assert json_put.status_code == 200 and json_put.json()["domain"] == "brand-new"
    assert check(client, "/check/brand-new").status_code == 200  # matched, but without a limit
    assert client.delete("/v1/admin/policies/brand-new").json()["in_force"] is None
    assert check(client, "/check/brand-new").status_code == 404


def test_bad_admin_requests_change_nothing(client: httpx.Client) -> None:
    before = client.get("/v1/admin/policies/strict").json()
    bad_unit = {"descriptors": [{"key": "a", "rate_limit": {"unit": "fortnight", "requests_per_unit": 1}}]}
    refused = client.put("/v1/admin/policies/strict", json=bad_unit)
    assert refused.status_code == 422 and "fortnight" in refused.json()["detail"]
    other = client.put("/v1/admin/policies/strict", json={"domain": "other"})
    assert other.status_code == 422
    assert client.get("/v1/admin/policies/strict").json() == before
    assert client.get("/v1/admin/policies/nope").status_code == 404
    assert client.post("/v1/admin/policies/strict").status_code == 405
    assert client.post("/v1/admin/policies/strict/reset", json={"descriptors": "x"}).status_code == 422
