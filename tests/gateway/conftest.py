"""Gateway fixtures: real servers started as a user starts them, with policy files of the test's own."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

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
