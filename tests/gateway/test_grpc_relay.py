"""A standby relays Envoy's ShouldRateLimit to the active node, so either pod answers Envoy.

Two real server processes on one Valkey, with API keys: the caller's credentials travel with
the relayed call and the active node checks them.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest

from lockgate_server.gateway.proto.envoy.extensions.common.ratelimit.v3.ratelimit_pb2 import RateLimitDescriptor
from lockgate_server.gateway.proto.envoy.service.ratelimit.v3.rls_pb2 import RateLimitRequest, RateLimitResponse
from lockgate_server.gateway.proto.envoy.service.ratelimit.v3.rls_pb2_grpc import RateLimitServiceStub
from lockgate_server.storage.embedded import EmbeddedValkey

from .support import GatewayServer, api_keys

OK, OVER_LIMIT = RateLimitResponse.OK, RateLimitResponse.OVER_LIMIT
WRITER = (("authorization", "Bearer gateway-writer"),)
POLICY = """
domain: relayed
failure_timeout_ms: 3000  # the relayed answer, not failure_mode, even on a loaded machine
descriptors:
  - key: user
    rate_limit: {unit: day, requests_per_unit: 2}
---
domain: open
failure_mode: allow
failure_timeout_ms: 100
descriptors:
  - {key: user, rate_limit: {unit: day, requests_per_unit: 100}}
http:
  descriptors:
    - entries: [{key: user, source: header, header: X-User}]
---
domain: closed
failure_timeout_ms: 100
descriptors:
  - {key: user, rate_limit: {unit: day, requests_per_unit: 100}}
http:
  descriptors:
    - entries: [{key: user, source: header, header: X-User}]
"""


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[tuple[GatewayServer, GatewayServer]]:
    valkey = EmbeddedValkey(tmp_path / "valkey")
    valkey.start()
    (tmp_path / "policy.yaml").write_text(POLICY)
    env = {
        "LOCKGATE_REDIS_URL": valkey.url,
        "LOCKGATE_POLICY_FILES": str(tmp_path / "policy.yaml"),
        "LOCKGATE_API_KEYS": api_keys(),
    }
    active = GatewayServer(tmp_path / "active", env)
    standby = GatewayServer(tmp_path / "standby", env)
    try:
        active.start()
        standby.start(until="/readyz")
        yield active, standby
    finally:
        standby.stop()
        active.stop()
        valkey.stop()


def request(user: str, domain: str = "relayed") -> RateLimitRequest:
    entry = RateLimitDescriptor.Entry(key="user", value=user)
    return RateLimitRequest(domain=domain, descriptors=[RateLimitDescriptor(entries=[entry])])


async def test_a_standby_relays_should_rate_limit_with_the_callers_credentials(
    nodes: tuple[GatewayServer, GatewayServer],
) -> None:
    active, standby = nodes
    async with (
        grpc.aio.insecure_channel(standby.grpc_target) as to_standby,
        grpc.aio.insecure_channel(active.grpc_target) as to_active,
    ):
        via_standby, direct = RateLimitServiceStub(to_standby), RateLimitServiceStub(to_active)
        first = await via_standby.ShouldRateLimit(request("u1"), metadata=WRITER, timeout=5)
        assert first.overall_code == OK and first.statuses[0].limit_remaining == 1
        assert first.statuses[0].current_limit.requests_per_unit == 2
        assert {header.key for header in first.response_headers_to_add} >= {"RateLimit-Policy", "RateLimit"}
        assert (await direct.ShouldRateLimit(request("u1"), metadata=WRITER, timeout=5)).overall_code == OK
        over = await via_standby.ShouldRateLimit(request("u1"), metadata=WRITER, timeout=5)
        assert over.overall_code == OVER_LIMIT and over.statuses[0].limit_remaining == 0
        # The active node's refusals come back as the same gRPC codes.
        for metadata, bad, code in [
            ((), request("u2"), grpc.StatusCode.UNAUTHENTICATED),
            ((("authorization", "Bearer other-writer"),), request("u2"), grpc.StatusCode.PERMISSION_DENIED),
            (WRITER, RateLimitRequest(domain="relayed"), grpc.StatusCode.INVALID_ARGUMENT),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await via_standby.ShouldRateLimit(bad, metadata=metadata, timeout=5)
            assert refused.value.code() == code, refused.value.details()
    assert standby.metric("lockgate_relayed_requests_total", 'outcome="answered"') == 5


async def test_a_standby_with_no_active_node_answers_unavailable(nodes: tuple[GatewayServer, GatewayServer]) -> None:
    active, standby = nodes
    active.kill()
    async with grpc.aio.insecure_channel(standby.grpc_target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as unavailable:
            await RateLimitServiceStub(channel).ShouldRateLimit(request("u3"), metadata=WRITER, timeout=5)
    assert unavailable.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_with_the_active_node_frozen_a_standby_answers_by_the_domains_failure_mode(
    nodes: tuple[GatewayServer, GatewayServer],
) -> None:
    active, standby = nodes
    async with grpc.aio.insecure_channel(standby.grpc_target) as channel:
        stub = RateLimitServiceStub(channel)
        assert (await stub.ShouldRateLimit(request("u4", "open"), metadata=WRITER, timeout=5)).overall_code == OK
        active.pause()  # SIGSTOP: connections to it open, nothing answers
        try:
            started = time.monotonic()
            allowed = await stub.ShouldRateLimit(request("u4", "open"), metadata=WRITER, timeout=5)
            assert allowed.overall_code == OK
            failure = {h.key: h.value for h in allowed.response_headers_to_add}["X-Lockgate-Failure"]
            assert failure == "store-unavailable"
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await stub.ShouldRateLimit(request("u4", "closed"), metadata=WRITER, timeout=5)
            assert denied.value.code() == grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() - started < 2.0  # two failure timeouts (100 ms) and the hop, not the client's 5 s
            # The HTTP check does the same through a standby: the domain's failure_mode, in time.
            async with httpx.AsyncClient(base_url=standby.url, timeout=5) as http:
                caller = {"X-Lockgate-Key": "gateway-writer", "X-User": "u4"}
                opened = await http.get("/check/open", headers=caller)
                assert opened.status_code == 200 and opened.headers["X-Lockgate-Failure"] == "store-unavailable"
                assert (await http.get("/check/closed", headers=caller)).status_code == 429
        finally:
            active.resume()
