"""The Envoy rate limit service through a second, independent gRPC client: grpclib.

test_grpc.py speaks to the node with grpc-core's client (grpcio); grpclib is pure Python on
the h2 library, with its own HTTP/2 framing, HPACK use and flow control. Envoy's own client
is a third implementation: agreeing with two is how our HTTP/2 server shows it is not
merely fitted to one.
"""

from __future__ import annotations

import asyncio

import pytest
from grpclib import GRPCError, Status
from grpclib.client import Channel, UnaryUnaryMethod

from lockgate_server.gateway.proto.envoy.extensions.common.ratelimit.v3.ratelimit_pb2 import RateLimitDescriptor
from lockgate_server.gateway.proto.envoy.service.ratelimit.v3.rls_pb2 import RateLimitRequest, RateLimitResponse

from .conftest import StartServer
from .support import GatewayServer, api_keys

PATH = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
POLICY = "domain: interop\ndescriptors:\n  - key: user\n    rate_limit: {unit: day, requests_per_unit: 50}\n"
WRITER = {"authorization": "Bearer gateway-writer"}


def request(user: str, domain: str = "interop") -> RateLimitRequest:
    return RateLimitRequest(
        domain=domain, descriptors=[RateLimitDescriptor(entries=[RateLimitDescriptor.Entry(key="user", value=user)])]
    )


@pytest.fixture
def server(start_server: StartServer) -> GatewayServer:
    return start_server({"policy.yaml": POLICY}, env={"LOCKGATE_API_KEYS": api_keys()})


async def test_grpclib_calls_are_decided_exactly_under_concurrency(server: GatewayServer) -> None:
    channel = Channel("127.0.0.1", server.grpc_port)
    try:
        call = UnaryUnaryMethod(channel, PATH, RateLimitRequest, RateLimitResponse)
        answers = await asyncio.gather(*(call(request("u1"), metadata=WRITER, timeout=10) for _ in range(80)))
        codes = [answer.overall_code for answer in answers]
        assert codes.count(RateLimitResponse.OK) == 50 and codes.count(RateLimitResponse.OVER_LIMIT) == 30
        status = answers[0].statuses[0]
        assert status.current_limit.requests_per_unit == 50
        assert status.current_limit.unit == RateLimitResponse.RateLimit.DAY
        assert {header.key for header in answers[0].response_headers_to_add} >= {"RateLimit", "RateLimit-Policy"}
    finally:
        channel.close()


@pytest.mark.parametrize(
    ("metadata", "sent", "status"),
    [
        ({}, request("u2"), Status.UNAUTHENTICATED),
        ({"x-api-key": "gateway-reader"}, request("u2"), Status.PERMISSION_DENIED),
        (WRITER, RateLimitRequest(domain="interop"), Status.INVALID_ARGUMENT),
    ],
    ids=["no-key", "read-only-key", "no-descriptors"],
)
async def test_grpclib_sees_refusals_as_their_status(
    server: GatewayServer, metadata: dict[str, str], sent: RateLimitRequest, status: Status
) -> None:
    channel = Channel("127.0.0.1", server.grpc_port)
    try:
        call = UnaryUnaryMethod(channel, PATH, RateLimitRequest, RateLimitResponse)
        with pytest.raises(GRPCError) as refused:
            await call(sent, metadata=metadata, timeout=10)
        assert refused.value.status == status
        answer = await call(request("u3"), metadata=WRITER, timeout=10)  # the connection serves on
        assert answer.overall_code == RateLimitResponse.OK
    finally:
        channel.close()
