"""Limit state and runtime policies survive kill -9 of the whole node (the server and its Valkey)."""

from __future__ import annotations

import httpx

from .conftest import StartServer

POLICY = """
domain: durable
descriptors:
  - key: remote_address
    rate_limit: {unit: hour, requests_per_unit: 3, algorithm: gcra}
  - key: window
    rate_limit: {unit: day, requests_per_unit: 2}
http:
  hits_addend_header: X-Cost
  descriptors:
    - entries: [{key: remote_address, source: client_ip}]
    - entries: [{key: window, source: header, header: X-Window}]
"""


def test_a_key_at_its_limit_stays_at_its_limit_after_kill_9(start_server: StartServer) -> None:
    first = start_server({"policy.yaml": POLICY})
    at_limit = {"X-Real-IP": "203.0.113.1"}
    windowed = [{"X-Real-IP": f"198.51.100.{n}", "X-Window": "w1"} for n in range(4)]
    with httpx.Client(base_url=first.url, timeout=10) as client:
        assert [client.get("/check/durable", headers=at_limit).status_code for _ in range(4)] == [200, 200, 200, 429]
        assert [client.get("/check/durable", headers=headers).status_code for headers in windowed[:3]] == [
            200,
            200,
            429,
        ]
        one_left = {"X-Real-IP": "203.0.113.2"}
        assert client.get("/check/durable", headers=one_left).status_code == 200
        assert client.get("/check/durable", headers=one_left).status_code == 200
        # A runtime policy, too: a new domain that only exists through the admin API.
        runtime = {"descriptors": [{"key": "remote_address", "rate_limit": {"unit": "day", "requests_per_unit": 1}}]}
        assert client.put("/v1/admin/policies/added", json=runtime).status_code == 200
        assert client.get("/check/added", headers=one_left).status_code == 200

    first.kill()  # SIGKILL to the process group: no shutdown code runs anywhere
    second = start_server({"policy.yaml": POLICY}, data_dir=first.data_dir)
    with httpx.Client(base_url=second.url, timeout=10) as client:
        peek = client.get("/check/durable", headers={**at_limit, "X-Cost": "0"})
        assert peek.status_code == 200, peek.text
        assert peek.headers["X-RateLimit-Remaining"] == "0"
        denied = client.get("/check/durable", headers=at_limit)
        assert denied.status_code == 429
        assert int(denied.headers["Retry-After"]) > 1000  # GCRA: the next one is ~20 minutes away
        assert (
            client.get("/check/durable", headers={"X-Real-IP": "203.0.113.2"}).headers["X-RateLimit-Remaining"] == "0"
        )
        assert client.get("/check/durable", headers={"X-Real-IP": "203.0.113.2"}).status_code == 429
        assert client.get("/check/durable", headers=windowed[3]).status_code == 429  # a fixed window, too
        assert client.get("/v1/admin/policies/added").json()["source"] == "runtime"
        assert client.get("/check/added", headers={"X-Real-IP": "203.0.113.2"}).status_code == 429
