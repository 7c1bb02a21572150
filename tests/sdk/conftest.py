"""SDK tests against a real server: `python -m lockgate_server` in its own process group.

The server runs in a new session, so the granian parent, its worker and the embedded Valkey
can be signalled together: SIGSTOP/SIGCONT freezes the whole node, SIGKILL crashes it, and
`restart()` starts it again on the same data dir and port.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lockgate_server.harness import ServerProcess
from lockgate_server.storage.embedded import free_port

__all__ = ["ServerProcess", "free_port"]

ServerFactory = Callable[..., ServerProcess]


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One shared server for tests that neither signal it nor read global metrics."""
    instance = ServerProcess(tmp_path_factory.mktemp("lockgate-sdk") / "data").start()
    yield instance
    instance.stop()


@pytest.fixture
def base_url(server: ServerProcess) -> str:
    return server.url


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """Start a private server for one test (which may pause, kill or restart it); stopped afterwards."""
    started: list[ServerProcess] = []

    def start(env: dict[str, str] | None = None) -> ServerProcess:
        instance = ServerProcess(tmp_path / f"data{len(started)}", env=env)
        started.append(instance)
        return instance.start()

    yield start
    for instance in started:
        instance.stop()


@pytest.fixture
def namespace() -> str:
    """A namespace of the test's own, so tests sharing a server never see each other's objects."""
    return "t" + uuid.uuid4().hex[:16]
