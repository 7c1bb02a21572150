"""SDK tests against a real server: `python -m lockgate_server` in its own process group.

The server runs in a new session, so the granian parent, its worker and the embedded Valkey
can be signalled together: SIGSTOP/SIGCONT freezes the whole node, SIGKILL crashes it, and
`restart()` starts it again on the same data dir and port.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
SHARDS = 8


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _group_alive(pgid: int) -> bool:
    """Is any non-zombie process left in the group?"""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # "pid (comm) state ppid pgrp ..."
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


class ServerProcess:
    """One lockgate server process group on 127.0.0.1 with a fixed port and data dir."""

    def __init__(self, data_dir: Path, *, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.extra_env = dict(env or {})
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}-server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pgid(self) -> int:
        assert self.process is not None
        return self.process.pid  # start_new_session: the leader's pid is the group id

    # --- life cycle ---------------------------------------------------------------------------
    def start(self) -> ServerProcess:
        env = {key: value for key, value in os.environ.items() if not key.startswith("LOCKGATE_")}
        env.update(
            {
                "LOCKGATE_HOST": "127.0.0.1",
                "LOCKGATE_PORT": str(self.port),
                "LOCKGATE_DATA_DIR": str(self.data_dir),
                "LOCKGATE_SHARDS": str(SHARDS),
                "LOCKGATE_GRPC_PORT": "0",  # no gateway gRPC listener: its fixed default port clashes
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
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=1.0) as answer:
                    if answer.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"lockgate-server not ready within {timeout_s} s:\n{self.log()}")

    def signal_group(self, signum: int) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, signum)

    def pause(self) -> None:
        """SIGSTOP the whole node: it keeps its sockets but answers nothing."""
        self.signal_group(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal_group(signal.SIGCONT)

    def _wait_gone(self, timeout_s: float) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.process.poll()
            if not _group_alive(self.pgid):
                return True
            time.sleep(0.02)
        return False

    def kill(self) -> None:
        """kill -9 of the whole node (granian parent, worker, embedded Valkey)."""
        if self.process is None:
            return
        self.signal_group(signal.SIGKILL)
        self.process.wait()
        assert self._wait_gone(STOP_TIMEOUT_S), f"process group {self.pgid} survived SIGKILL"

    def restart(self) -> None:
        """kill -9, then start again on the same data dir and port."""
        self.kill()
        self.start()

    def stop(self) -> None:
        """SIGCONT (a test may have left it stopped), SIGTERM the group, SIGKILL what is left."""
        if self.process is None:
            return
        self.signal_group(signal.SIGCONT)
        self.signal_group(signal.SIGTERM)
        if not self._wait_gone(STOP_TIMEOUT_S):
            self.signal_group(signal.SIGKILL)
            self._wait_gone(STOP_TIMEOUT_S)
        self.process.wait()

    # --- observation --------------------------------------------------------------------------
    def log(self) -> str:
        """The tail of the server's output and of its embedded Valkey's log, for failure messages."""
        parts = []
        for path in (self.log_path, self.data_dir / "valkey.log"):
            with contextlib.suppress(OSError):
                parts.append(f"--- {path}\n" + path.read_text(errors="replace")[-6000:])
        return "\n".join(parts)

    def metric(self, name: str, labels: str = "") -> float:
        """One sample of /metrics, e.g. metric("lockgate_http_requests_total", 'route="v1"'); 0 if absent."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5.0) as answer:
            text = answer.read().decode()
        wanted = f"{name}{{{labels}}}" if labels else name
        for line in text.splitlines():
            match = re.fullmatch(r"(\S+)\s+(\S+)", line)
            if match and match.group(1) == wanted:
                return float(match.group(2))
        return 0.0

    def admin_post(self, path: str) -> int:
        """POST with an empty body (admin routes such as .../force-release); returns the status."""
        request = urllib.request.Request(f"{self.url}{path}", data=b"", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=5.0) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as error:
            return int(error.code)


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
