"""The Envoy rate limit service over gRPC, through a stub generated from the same .proto files."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf.wrappers_pb2 import UInt64Value

from lockgate_server.gateway.proto.envoy.extensions.common.ratelimit.v3.ratelimit_pb2 import RateLimitDescriptor
from lockgate_server.gateway.proto.envoy.service.ratelimit.v3.rls_pb2 import RateLimitRequest, RateLimitResponse
from lockgate_server.gateway.proto.envoy.service.ratelimit.v3.rls_pb2_grpc import RateLimitServiceStub
from lockgate_server.gateway.proto.envoy.type.v3.ratelimit_unit_pb2 import RateLimitUnit
from lockgate_server.storage.embedded import EmbeddedValkey

from .conftest import StartServer
from .support import FIXTURES, GatewayServer

OK, OVER_LIMIT = RateLimitResponse.OK, RateLimitResponse.OVER_LIMIT
Unit = RateLimitResponse.RateLimit

POLICY = """
domain: g
descriptors:
  - key: user
    rate_limit: {unit: day, requests_per_unit: 2}
  - key: tenant
    rate_limit: {period_ms: 10000, requests_per_unit: 5, algorithm: gcra, name: tenant-burst}
"""


def descriptor(*entries: tuple[str, str], hits_addend: int | None = None, **fields: Any) -> RateLimitDescriptor:
    message = RateLimitDescriptor(
        entries=[RateLimitDescriptor.Entry(key=key, value=value) for key, value in entries], **fields
    )
    if hits_addend is not None:
        message.hits_addend.CopyFrom(UInt64Value(value=hits_addend))
    return message


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    folder = tmp_path_factory.mktemp("gateway-grpc")
    (folder / "policy.yaml").write_text(POLICY)
    files = f"{folder / 'policy.yaml'},{FIXTURES / 'example.yaml'}"
    instance = GatewayServer(folder / "data", {"LOCKGATE_POLICY_FILES": files}).start()
    yield instance
    instance.stop()


async def ask(stub: RateLimitServiceStub, domain: str, *descriptors: RateLimitDescriptor, **fields: Any) -> Any:
    return await stub.ShouldRateLimit(RateLimitRequest(domain=domain, descriptors=descriptors, **fields), timeout=5)


async def test_over_limit_with_statuses_and_headers(stub: RateLimitServiceStub) -> None:
    for remaining in (1, 0):
        answer = await ask(stub, "g", descriptor(("user", "ann")))
        assert answer.overall_code == OK
        (status,) = answer.statuses
        assert status.code == OK and status.limit_remaining == remaining
        assert (status.current_limit.requests_per_unit, status.current_limit.unit) == (2, Unit.DAY)
        assert status.current_limit.name == "user"
        assert 0 < status.duration_until_reset.seconds <= 86_400
    over = await ask(stub, "g", descriptor(("user", "ann")))
    assert over.overall_code == OVER_LIMIT and over.statuses[0].code == OVER_LIMIT
    headers = {header.key: header.value for header in over.response_headers_to_add}
    assert headers["RateLimit-Policy"] == '"user";q=2;w=86400'
    assert headers["X-RateLimit-Remaining"] == "0" and int(headers["Retry-After"]) >= 1


async def test_all_or_nothing_across_descriptors(stub: RateLimitServiceStub) -> None:
    for _ in range(2):
        assert (await ask(stub, "g", descriptor(("user", "bob")))).overall_code == OK
    both = await ask(stub, "g", descriptor(("tenant", "acme")), descriptor(("user", "bob")))
    assert both.overall_code == OVER_LIMIT
    assert [status.code for status in both.statuses] == [OK, OVER_LIMIT]
    # The tenant limit was not charged by the denied request.
    tenant = await ask(stub, "g", descriptor(("tenant", "acme")))
    assert tenant.statuses[0].limit_remaining == 4
    assert tenant.statuses[0].current_limit.unit == Unit.UNKNOWN  # 10 s is no unit of the Envoy API
    assert tenant.statuses[0].current_limit.name == "tenant-burst"


async def test_a_descriptor_with_hits_addend_0_peeks(stub: RateLimitServiceStub) -> None:
    for _ in range(3):
        peek = await ask(stub, "g", descriptor(("user", "cy"), hits_addend=0), descriptor(("tenant", "cy")))
        assert peek.overall_code == OK
        assert peek.statuses[0].limit_remaining == 2  # the peeked user limit is untouched
    assert (await ask(stub, "g", descriptor(("user", "cy")))).statuses[0].limit_remaining == 1
    # Request-wide hits_addend, and a descriptor's own beating it.
    assert (await ask(stub, "g", descriptor(("user", "dee")), hits_addend=2)).statuses[0].limit_remaining == 0
    mixed = await ask(stub, "g", descriptor(("user", "eve"), hits_addend=1), hits_addend=2)
    assert mixed.statuses[0].limit_remaining == 1


async def test_envoyproxy_ratelimit_semantics_of_its_example_config(stub: RateLimitServiceStub) -> None:
    nested = descriptor(("source_cluster", "proxy"), ("destination_cluster", "mock"))
    assert (await ask(stub, "rl", nested)).statuses[0].current_limit.requests_per_unit == 1
    assert (await ask(stub, "rl", nested)).overall_code == OVER_LIMIT
    unlimited = await ask(stub, "rl", descriptor(("qux", "x")), descriptor(("foo", "f"), ("bay", "y")))
    assert unlimited.overall_code == OK and [s.limit_remaining for s in unlimited.statuses] == [2**32 - 1] * 2
    banned = await ask(stub, "rl", descriptor(("foo", "f"), ("bar", "banned")))
    assert banned.overall_code == OVER_LIMIT
    for _ in range(3):  # shadow mode: reported, never denied
        shady = await ask(stub, "rl", descriptor(("foo", "f"), ("baz", "shady")))
        assert shady.overall_code == OK and shady.statuses[0].code == OK
    unknown = await ask(stub, "no-such-domain", descriptor(("a", "b")))
    assert unknown.overall_code == OK and len(unknown.statuses) == 1


async def test_a_callers_limit_override(stub: RateLimitServiceStub) -> None:
    override = RateLimitDescriptor.RateLimitOverride(requests_per_unit=1, unit=RateLimitUnit.HOUR)
    first = await ask(stub, "g", descriptor(("user", "fay"), limit=override))
    assert first.overall_code == OK and first.statuses[0].current_limit.unit == Unit.HOUR
    assert (await ask(stub, "g", descriptor(("user", "fay"), limit=override))).overall_code == OVER_LIMIT
    assert (await ask(stub, "g", descriptor(("user", "fay")))).statuses[0].limit_remaining == 1


@pytest.mark.parametrize(
    "request_fields",
    [
        {"domain": "", "descriptors": [descriptor(("a", "b"))]},
        {"domain": "g", "descriptors": []},
        {"domain": "g", "descriptors": [descriptor()]},
        {"domain": "g", "descriptors": [descriptor(("a\x00", "b"))]},  # keys come from configuration
        {"domain": "g", "descriptors": [descriptor(("a", "b"), limit=RateLimitDescriptor.RateLimitOverride())]},
    ],
)
async def test_bad_requests_are_invalid_argument(stub: RateLimitServiceStub, request_fields: dict[str, Any]) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ShouldRateLimit(RateLimitRequest(**request_fields), timeout=5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


STORE_DOWN_POLICY = """
domain: closed
failure_timeout_ms: 100
descriptors:
  - {key: user, rate_limit: {unit: day, requests_per_unit: 100}}
  - {key: remote_address, rate_limit: {unit: day, requests_per_unit: 100}}
---
domain: open
failure_mode: allow
failure_timeout_ms: 100
descriptors:
  - {key: user, rate_limit: {unit: day, requests_per_unit: 100}}
  - {key: remote_address, rate_limit: {unit: day, requests_per_unit: 100}}
"""


async def test_store_down_is_unavailable_unless_the_domain_fails_open(
    valkey: EmbeddedValkey, start_server: StartServer
) -> None:
    env = {"LOCKGATE_REDIS_URL": valkey.url, "LOCKGATE_COMMIT_TIMEOUT_MS": "1000"}
    server = start_server({"policy.yaml": STORE_DOWN_POLICY}, env=env)
    async with grpc.aio.insecure_channel(server.grpc_target) as channel, httpx.AsyncClient(base_url=server.url) as http:
        stub = RateLimitServiceStub(channel)
        assert (await ask(stub, "closed", descriptor(("user", "u")))).overall_code == OK
        valkey.pause()
        try:
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as unavailable:
                await ask(stub, "closed", descriptor(("user", "u")))
            assert unavailable.value.code() == grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() - started < 1.0
            allowed = await ask(stub, "open", descriptor(("user", "u")))
            assert allowed.overall_code == OK
            assert {h.key: h.value for h in allowed.response_headers_to_add} == {"X-Lockgate-Failure": "timeout"}
            # The HTTP check follows the same failure modes.
            closed = await http.get("/check/closed")
            assert closed.status_code == 429 and closed.headers["X-Lockgate-Failure"] == "timeout"
            assert (await http.get("/check/open")).status_code == 200
        finally:
            valkey.resume()
        deadline = time.monotonic() + 20
        while True:  # the node reloads its shards from the store and serves again
            try:
                if (await ask(stub, "closed", descriptor(("user", "u")))).overall_code == OK:
                    break
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() < deadline, "the node did not recover after the store came back"
            time.sleep(0.1)
