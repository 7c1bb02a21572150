"""A Lockgate server as a user starts it, as a child process group: for tests and benchmarks.

`python -m lockgate_server` runs in its own session (process group), so the server, its
snapshot writers and the embedded Valkey child can be signalled together: `kill()` is a whole-
node crash (SIGKILL), `pause()` freezes it (SIGSTOP), `stop()` is a polite SIGTERM.
Standard library only, so the SDK's tests and the load tests can use it as they are.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .storage.embedded import free_ports

READY_TIMEOUT_S = 20.0
SERVING = "/readyz?active=1"
"""200 once the node serves the shards itself (a standby that relays answers /readyz too)."""
STOP_TIMEOUT_S = 10.0


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
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


class ServerProcess:
    """One `python -m lockgate_server` process group on 127.0.0.1, with a fixed port and data dir."""

    def __init__(
        self, data_dir: Path, *, env: dict[str, str] | None = None, port: int | None = None, shards: int = 8
    ) -> None:
        self.data_dir = data_dir
        self.extra_env = dict(env or {})
        # Chosen together, so they differ: the HTTP and gRPC ports probed one after the other
        # could be the same free port twice.
        self.port, grpc_port = free_ports(2)
        self.port = port or self.port
        # A caller's own LOCKGATE_GRPC_PORT wins; grpc_port always says where the server listens.
        self.grpc_port = int(self.extra_env.get("LOCKGATE_GRPC_PORT", grpc_port))
        self.shards = shards
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}-server-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pgid(self) -> int:
        assert self.process is not None
        return self.process.pid  # start_new_session: the leader's pid is the group id

    # --- life cycle -------------------------------------------------------------------------------
    def start(self, *, until: str = SERVING) -> ServerProcess:
        """Start, and wait until `until` answers 200 (`/healthz` for a node that will stand by)."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("LOCKGATE_")}
        env.update(
            {
                "LOCKGATE_HOST": "127.0.0.1",
                "LOCKGATE_PORT": str(self.port),
                "LOCKGATE_DATA_DIR": str(self.data_dir),
                "LOCKGATE_SHARDS": str(self.shards),
                # The Envoy rate-limit gRPC service listens too: each server gets its own port.
                "LOCKGATE_GRPC_PORT": str(self.grpc_port),
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
        self.wait_ready(until)
        return self

    def wait_ready(self, path: str = SERVING, timeout_s: float = READY_TIMEOUT_S) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"lockgate-server exited with {self.process.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError):
                if self.get_status(path) == 200:
                    return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"lockgate-server: {path} not 200 within {timeout_s} s:\n{self.log()}")

    def signal_group(self, signum: int) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, signum)

    def pause(self) -> None:
        """SIGSTOP the whole node: it keeps its sockets but answers nothing."""
        self.signal_group(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal_group(signal.SIGCONT)

    def alive_members(self) -> list[int]:
        return group_members(self.pgid) if self.process is not None else []

    def wait_group_gone(self, timeout_s: float) -> bool:
        """Reap the leader and wait until no process of the group is left."""
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.process.poll()
            if not self.alive_members():
                self.process.wait(timeout=STOP_TIMEOUT_S)
                return True
            time.sleep(0.02)
        return False

    def kill(self) -> None:
        """kill -9 of the whole node: the server, its snapshot writers and embedded Valkey."""
        if self.process is None:
            return
        self.signal_group(signal.SIGKILL)
        self.process.wait()
        assert self.wait_group_gone(STOP_TIMEOUT_S), f"group {self.pgid} survived SIGKILL: {self.alive_members()}"

    def restart(self, *, until: str = SERVING) -> None:
        """kill -9, then start again on the same data dir and port."""
        self.kill()
        self.start(until=until)

    def stop(self) -> None:
        """SIGCONT (it may have been left stopped), SIGTERM the group, SIGKILL what is left."""
        if self.process is None:
            return
        if self.alive_members():
            self.signal_group(signal.SIGCONT)
            self.signal_group(signal.SIGTERM)
            if not self.wait_group_gone(STOP_TIMEOUT_S):
                self.signal_group(signal.SIGKILL)
                self.wait_group_gone(STOP_TIMEOUT_S)
        self.process.wait()

    # --- observation -----------------------------------------------------------------------------
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

    def log(self) -> str:
        """The tail of the server's output and of its embedded Valkey's log, for failure messages."""
        parts = []
        for path in (self.log_path, self.data_dir / "valkey.log"):
            with contextlib.suppress(OSError):
                parts.append(f"--- {path}\n" + path.read_text(errors="replace")[-6000:])
        return "\n".join(parts)

    def get_status(self, path: str) -> int:
        try:
            with urllib.request.urlopen(f"{self.url}{path}", timeout=1.0) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as error:
            return int(error.code)

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
