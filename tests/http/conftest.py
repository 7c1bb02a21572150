"""Black-box fixtures: the server started exactly as a user starts it, over a real socket.

`python -m lockgate_server` runs in its own session (process group), so the server
and the embedded Valkey child can be signalled together:
`os.killpg(pgid, SIGKILL)` is a whole-node crash, `SIGTERM` a polite stop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lockgate_server.harness import ServerProcess, group_members
from lockgate_server.storage.embedded import free_port

__all__ = ["LockgateServer", "free_port", "group_members"]

# One server class for every black-box test and benchmark.
LockgateServer = ServerProcess


ServerFactory = Callable[..., LockgateServer]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """Start servers for one test (which may kill them); every one is stopped at the end."""
    started: list[LockgateServer] = []

    def start(data_dir: Path | None = None, env: dict[str, str] | None = None) -> LockgateServer:
        server = LockgateServer(data_dir or tmp_path / "data", env=env)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LockgateServer]:
    """One server for a whole test module; a module sets SERVER_ENV to configure it."""
    env: dict[str, str] = getattr(request.module, "SERVER_ENV", {})
    data_dir = tmp_path_factory.mktemp("lockgate") / "data"
    instance = LockgateServer(data_dir, env=env).start()
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def base_url(server: LockgateServer) -> str:
    return server.url
