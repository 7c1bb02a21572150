"""LOCKGATE_LOG_LEVEL decides what the server logs (Litestar's own logging config used to
replace ours: every level logged the same INFO lines)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lockgate_server.harness import ServerProcess


@pytest.mark.parametrize(("level", "ready_logged"), [("info", True), ("warning", False)])
def test_the_log_level_decides_what_is_logged(tmp_path: Path, level: str, ready_logged: bool) -> None:
    server = ServerProcess(tmp_path / "data", env={"LOCKGATE_LOG_LEVEL": level}).start()
    server.stop()
    logged = server.log_path.read_text()
    assert ("INFO lockgate" in logged) is ready_logged, logged[-2000:]
    assert ("ready: 8 shards loaded" in logged) is ready_logged, logged[-2000:]
