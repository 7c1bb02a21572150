"""Black-box fixtures: the server started exactly as a user starts it, over a real socket.

`python -m lockgate_server` runs in its own session (process group), so the granian
parent, its worker and the embedded Valkey child can be signalled together:
`os.killpg(pgid, SIGKILL)` is a whole-node crash, `SIGTERM` a polite stop.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
SHARDS = 8


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, read from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ..." -- comm may hold spaces and parentheses.
        fields = stat[stat.rindex(")") + 2 :].split()
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state not in ("Z", "X"):
            members.append(int(entry.name))
    return members


class LockgateServer:
    """One `python -m lockgate_server` process group on 127.0.0.1."""

    def __init__(self, data_dir: Path, *, env: dict[str, str] | None = None, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.extra_env = dict(env or {})
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}-server-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pgid(self) -> int:
        assert self.process is not None
        return self.process.pid  # start_new_session: the leader's pid is the group id

    def start(self) -> LockgateServer:
        env = {key: value for key, value in os.environ.items() if not key.startswith("LOCKGATE_")}
        env.update(
            {
                "LOCKGATE_HOST": "127.0.0.1",
                "LOCKGATE_PORT": str(self.port),
                "LOCKGATE_DATA_DIR": str(self.data_dir),
                "LOCKGATE_SHARDS": str(SHARDS),
                # The Envoy rate-limit gRPC service listens too (default 8081): give each server its own port.
                "LOCKGATE_GRPC_PORT": str(free_port()),
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "lockgate_server"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_ready()
        return self

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"lockgate-server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"lockgate-server not ready within {timeout_s} s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-8000:]
        except OSError:
            return ""

    def alive_members(self) -> list[int]:
        return group_members(self.pgid) if self.process is not None else []

    def member_pid(self, command_contains: str) -> int:
        """The pid of the group member whose command line contains `command_contains`."""
        for pid in self.alive_members():
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if command_contains in command:
                return pid
        raise LookupError(f"no process of group {self.pgid} runs {command_contains!r}")

    def signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, signum)

    def wait_group_gone(self, timeout_s: float) -> bool:
        """Reap the leader and wait until no process of the group is left."""
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive_members():
                self.process.wait(timeout=STOP_TIMEOUT_S)  # the leader may be a zombie not yet reaped
                return True
            time.sleep(0.02)
        return False

    def kill(self) -> None:
        """kill -9 of the whole node: granian parent, worker and embedded Valkey."""
        if self.process is None:
            return
        self.signal_group(signal.SIGKILL)
        self.process.wait()
        assert self.wait_group_gone(STOP_TIMEOUT_S), f"group {self.pgid} survived SIGKILL: {self.alive_members()}"

    def stop(self) -> None:
        """Teardown: SIGTERM the group, SIGKILL whatever is still alive after a while."""
        if self.process is None:
            return
        if self.alive_members():
            self.signal_group(signal.SIGTERM)
            if not self.wait_group_gone(STOP_TIMEOUT_S):
                self.signal_group(signal.SIGKILL)
                self.wait_group_gone(STOP_TIMEOUT_S)
        self.process.wait()


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
