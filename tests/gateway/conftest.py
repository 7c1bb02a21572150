"""Gateway fixtures: real servers started as a user starts them, with policy files of the test's own."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from lockgate_server.gateway.proto.envoy.service.ratelimit.v3.rls_pb2_grpc import RateLimitServiceStub

from .support import GatewayServer

StartServer = Callable[..., GatewayServer]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """start_server(policy_text=..., env=..., data_dir=...): every server is stopped after the test."""
    started: list[GatewayServer] = []

    def start(
        policies: dict[str, str] | None = None, env: dict[str, str] | None = None, data_dir: Path | None = None
    ) -> GatewayServer:
        server_env = dict(env or {})
        if policies:
            paths = []
            for name, text in policies.items():
                path = tmp_path / name
                path.write_text(text)
                paths.append(str(path))
            server_env.setdefault("LOCKGATE_POLICY_FILES", ",".join(paths))
        server = GatewayServer(data_dir or tmp_path / "data", server_env)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


# For modules that define a `server` fixture of their own.
@pytest.fixture
async def stub(server: GatewayServer) -> AsyncIterator[RateLimitServiceStub]:
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        yield RateLimitServiceStub(channel)


@pytest.fixture
def client(server: GatewayServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        yield http
