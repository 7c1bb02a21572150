"""With API keys configured, gateways need the write right on the namespace "gateway"."""

from __future__ import annotations

import asyncio

import grpc
import httpx
import pytest

from lockgate_server.gateway.proto.envoy.extensions.common.ratelimit.v3.ratelimit_pb2 import RateLimitDescriptor
from lockgate_server.gateway.proto.envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from .conftest import StartServer
from .support import api_keys

POLICY = "domain: api\ndescriptors:\n  - key: remote_address\n    rate_limit: {unit: day, requests_per_unit: 100}\n"


async def should_rate_limit(target: str, key: str | None) -> grpc.StatusCode:
    metadata = (("authorization", f"Bearer {key}"),) if key else ()
    request = rls_pb2.RateLimitRequest(
        domain="api",
        descriptors=[RateLimitDescriptor(entries=[RateLimitDescriptor.Entry(key="remote_address", value="a")])],
    )
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            await rls_pb2_grpc.RateLimitServiceStub(channel).ShouldRateLimit(request, metadata=metadata, timeout=5)
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def test_the_check_endpoint_json_grpc_and_admin_follow_the_key_rules(start_server: StartServer) -> None:
    server = start_server({"policy.yaml": POLICY}, env={"LOCKGATE_API_KEYS": api_keys()})
    with httpx.Client(base_url=server.url, timeout=10) as client:
        # The client's own Authorization and X-API-Key belong to the client: the gateway's key travels apart.
        assert client.get("/check/api").status_code == 401
        assert client.get("/check/api", headers={"Authorization": "Bearer gateway-writer"}).status_code == 401
        assert client.get("/check/api", headers={"X-Lockgate-Key": "nonsense"}).status_code == 401
        assert client.get("/check/api", headers={"X-Lockgate-Key": "gateway-reader"}).status_code == 403
        assert client.get("/check/api", headers={"X-Lockgate-Key": "other-writer"}).status_code == 403
        assert client.get("/check/api", headers={"X-Lockgate-Key": "gateway-writer"}).status_code == 200

        body = {"domain": "api", "descriptors": [{"entries": [{"key": "remote_address", "value": "a"}]}]}
        assert client.post("/json", json=body).status_code == 401
        assert client.post("/json", json=body, headers={"X-API-Key": "gateway-reader"}).status_code == 403
        assert client.post("/json", json=body, headers={"Authorization": "Bearer gateway-writer"}).status_code == 200

        assert client.get("/v1/admin/policies", headers={"X-API-Key": "gateway-writer"}).status_code == 403
        listing = client.get("/v1/admin/policies", headers={"X-API-Key": "operator"})
        assert listing.status_code == 200 and listing.json()["domains"] == [{"domain": "api", "source": "file"}]

    assert asyncio.run(should_rate_limit(server.grpc_target, None)) == grpc.StatusCode.UNAUTHENTICATED
    assert asyncio.run(should_rate_limit(server.grpc_target, "gateway-reader")) == grpc.StatusCode.PERMISSION_DENIED
    assert asyncio.run(should_rate_limit(server.grpc_target, "gateway-writer")) == grpc.StatusCode.OK


@pytest.mark.parametrize("policy", ["domain: x\ndescriptors:\n  - key: a\n    rate_limit: {unit: eon}\n"])
def test_a_bad_policy_file_stops_the_server_naming_the_file(start_server: StartServer, policy: str) -> None:
    with pytest.raises(RuntimeError, match=r"policy\.yaml: invalid rate limit unit 'eon'"):
        start_server({"policy.yaml": policy})
