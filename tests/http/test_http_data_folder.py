"""The embedded Valkey's data folder serves one node at a time.

Two Valkeys appending to one AOF lose acknowledged writes, so a second server on a folder in
use is refused with one line, and a server killed alone (as the OOM killer would) does not
leave its Valkey running as an orphan that holds the folder.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from lockgate_server.harness import ServerProcess

COUNTER = "/v1/namespaces/folder/counters/c"


def add(server: ServerProcess) -> int:
    answer = httpx.post(server.url + COUNTER + "/add", json={"delta": 1}, timeout=10)
    assert answer.status_code == 200, answer.text
    return int(answer.json()["value"])


def value(server: ServerProcess) -> int:
    return int(httpx.get(server.url + COUNTER, timeout=10).json()["value"])


def test_a_second_server_on_a_folder_in_use_is_refused(start_server: Any, tmp_path: Path) -> None:
    first = start_server(tmp_path / "data")
    assert add(first) == 1
    second = ServerProcess(tmp_path / "data")
    with pytest.raises(RuntimeError, match="exited") as refused:
        second.start()
    assert "is in use by another Valkey" in str(refused.value)
    assert [add(first) for _ in range(3)] == [2, 3, 4]  # the first serves on, undisturbed
    first.stop()
    assert value(start_server(tmp_path / "data")) == 4  # every acknowledged add is kept


def test_the_embedded_valkey_does_not_outlive_its_server(start_server: Any, tmp_path: Path) -> None:
    server = start_server(tmp_path / "data")
    assert add(server) == 1
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGKILL)  # the server alone, not its process group
    assert server.wait_group_gone(10), f"left running: {server.alive_members()}"
    assert value(start_server(tmp_path / "data")) == 1
