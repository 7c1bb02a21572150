"""Helpers for the gateway tests: the server as a user starts it (with its gRPC port), fixture files."""

from __future__ import annotations

from pathlib import Path

from lockgate_server.harness import ServerProcess
from lockgate_server.storage.embedded import free_port

FIXTURES = Path(__file__).parent / "fixtures" / "envoy-ratelimit"
"""Unchanged copies of envoyproxy/ratelimit's files (see the README there); test_loading checks them."""
SHARED_FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "envoy-ratelimit"

__all__ = ["FIXTURES", "SHARED_FIXTURES", "GatewayServer", "free_port"]


class GatewayServer(ServerProcess):
    """`python -m lockgate_server` in its own process group, its gRPC port known to the test."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None) -> None:
        self.grpc_port = free_port()
        super().__init__(data_dir, env={"LOCKGATE_GRPC_PORT": str(self.grpc_port), **(env or {})})

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self) -> GatewayServer:
        super().start()
        return self
