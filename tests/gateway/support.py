"""Helpers for the gateway tests: the server as a user starts it (with its gRPC port), fixture files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from lockgate_server.harness import SERVING, ServerProcess
from lockgate_server.storage.embedded import free_port

FIXTURES = Path(__file__).parent / "fixtures" / "envoy-ratelimit"
"""Unchanged copies of envoyproxy/ratelimit's files (see the README there); test_loading checks them."""
SHARED_FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "envoy-ratelimit"

__all__ = ["FIXTURES", "KEYS", "SHARED_FIXTURES", "GatewayServer", "api_keys", "free_port"]

KEYS = {
    "gateway-writer": ("gateway", "write"),
    "gateway-reader": ("gateway", "read"),
    "other-writer": ("billing", "write"),
    "operator": ("*", "admin"),
}
"""API keys by their secret: (namespace, right); api_keys() configures them all."""


def api_keys() -> str:
    """LOCKGATE_API_KEYS for KEYS."""
    return json.dumps(
        [
            {
                "sha256": hashlib.sha256(key.encode()).hexdigest(),
                "namespaces": [namespace],
                "rights": [right],
                "name": key,
            }
            for key, (namespace, right) in KEYS.items()
        ]
    )


class GatewayServer(ServerProcess):
    """`python -m lockgate_server` in its own process group, its gRPC port known to the test."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None) -> None:
        super().__init__(data_dir, env=env)

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, *, until: str = SERVING) -> GatewayServer:
        super().start(until=until)
        return self
