"""Values a client controls never let a request skip its limits: odd descriptor values over
gRPC and /json, forged X-Forwarded-For hops, and wildcard patterns built to backtrack."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from lockgate_server import limits
from lockgate_server.gateway.matcher import storable_value
from lockgate_server.gateway.proto.envoy.extensions.common.ratelimit.v3.ratelimit_pb2 import RateLimitDescriptor
from lockgate_server.gateway.proto.envoy.service.ratelimit.v3.rls_pb2 import RateLimitRequest, RateLimitResponse
from lockgate_server.gateway.proto.envoy.service.ratelimit.v3.rls_pb2_grpc import RateLimitServiceStub

from .conftest import StartServer
from .support import GatewayServer

OK, OVER_LIMIT = RateLimitResponse.OK, RateLimitResponse.OVER_LIMIT

POLICY = """
domain: hostile
descriptors:
  - key: b
    rate_limit: {unit: day, requests_per_unit: 2}
  - key: user_agent
    rate_limit: {unit: day, requests_per_unit: 1}
  - key: path
    rate_limit: {unit: day, requests_per_unit: 100}
  - key: remote_address
    rate_limit: {unit: day, requests_per_unit: 1}
http:
  descriptors:
    - entries: [{key: remote_address, source: client_ip}]
"""

TAB_VALUE = "curl\t1"
LONG_PATH = "/" + "a" * 2100


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    folder = tmp_path_factory.mktemp("gateway-hostile")
    (folder / "policy.yaml").write_text(POLICY)
    instance = GatewayServer(folder / "data", {"LOCKGATE_POLICY_FILES": str(folder / "policy.yaml")}).start()
    yield instance
    instance.stop()


def descriptor(key: str, value: str) -> RateLimitDescriptor:
    return RateLimitDescriptor(entries=[RateLimitDescriptor.Entry(key=key, value=value)])


async def ask(stub: RateLimitServiceStub, *descriptors: RateLimitDescriptor) -> RateLimitResponse:
    request = RateLimitRequest(domain="hostile", descriptors=descriptors)
    answer: RateLimitResponse = await stub.ShouldRateLimit(request, timeout=5)
    return answer


# --- odd descriptor values ------------------------------------------------------------------


@pytest.mark.parametrize(("key", "value"), [("user_agent", TAB_VALUE), ("path", LONG_PATH), ("path", "/\x00\x7f")])
async def test_an_odd_value_over_grpc_never_lifts_the_other_limits(
    stub: RateLimitServiceStub, key: str, value: str
) -> None:
    exhausted = descriptor("b", f"grpc-{key}-{len(value)}")
    for _ in range(2):
        assert (await ask(stub, exhausted)).overall_code == OK
    answer = await ask(stub, exhausted, descriptor(key, value))
    assert answer.overall_code == OVER_LIMIT
    assert answer.statuses[0].code == OVER_LIMIT


def test_an_odd_value_over_json_never_lifts_the_other_limits(client: httpx.Client) -> None:
    def body(*entries: tuple[str, str]) -> dict[str, object]:
        return {"domain": "hostile", "descriptors": [{"entries": [{"key": k, "value": v}]} for k, v in entries]}

    for _ in range(2):
        assert client.post("/json", json=body(("b", "json"))).status_code == 200
    for odd in (("user_agent", TAB_VALUE), ("path", LONG_PATH)):
        answer = client.post("/json", json=body(("b", "json"), odd))
        assert answer.status_code == 429, answer.text
        assert answer.json()["overallCode"] == "OVER_LIMIT"


async def test_distinct_odd_values_keep_distinct_counters(stub: RateLimitServiceStub) -> None:
    shared_start = "x" * 3000  # past the longest value kept as it is
    for value in (shared_start + "1", shared_start + "2", "a\tb", "a\nb"):
        assert (await ask(stub, descriptor("user_agent", value))).overall_code == OK
    for value in (shared_start + "1", "a\tb"):
        assert (await ask(stub, descriptor("user_agent", value))).overall_code == OVER_LIMIT
    # A readable value that looks like a mapped one is a state of its own, too.
    assert (await ask(stub, descriptor("user_agent", "a?b"))).overall_code == OK


def test_storable_values_are_bounded_and_free_of_control_characters() -> None:
    assert storable_value("plain value") == "plain value"
    for value in ("a" * 5000, "a\tb", "\x00" * 3000, "\u00e9\x1f"):
        stored = storable_value(value)
        assert len(stored) <= limits.GATEWAY_ENTRY_VALUE_MAX_LENGTH
        assert not any(ord(char) < 0x20 or ord(char) == 0x7F for char in stored)
    assert storable_value("a" * 5000 + "1") != storable_value("a" * 5000 + "2")


# --- X-Forwarded-For ------------------------------------------------------------------------


def test_a_forged_first_forwarded_hop_does_not_make_a_new_client(client: httpx.Client) -> None:
    # The gateway appends the address it saw (203.0.113.50); what is left of it, the client wrote.
    for forged in ("198.51.100.1", "198.51.100.2, 10.9.9.9"):
        answer = client.get("/check/hostile", headers={"X-Forwarded-For": f"{forged}, 203.0.113.50"})
        assert answer.status_code == (200 if forged.endswith(".1") else 429), forged


def test_trusted_proxy_hops_pick_the_hop_left_of_them(start_server: StartServer) -> None:
    server = start_server({"policy.yaml": POLICY}, env={"LOCKGATE_FORWARDED_FOR_TRUSTED_HOPS": "1"})
    with httpx.Client(base_url=server.url, timeout=10) as http:

        def check(forwarded_for: str) -> int:
            return http.get("/check/hostile", headers={"X-Forwarded-For": forwarded_for}).status_code

        # client, load balancer (trusted): the client is one hop left of the right-most.
        assert check("forged, 203.0.113.60, 10.0.0.2") == 200
        assert check("other-forgery, 203.0.113.60, 10.0.0.2") == 429
        assert check("203.0.113.61, 10.0.0.2") == 200
        assert check("203.0.113.61") == 429  # fewer hops than trusted: the left-most one
