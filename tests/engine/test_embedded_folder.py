"""One Valkey per data folder: the folder's lock holds while our Valkey lives, and no other
process of ours (a forked snapshot writer) keeps it once that Valkey is gone."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from lockgate_server.storage import embedded
from lockgate_server.storage.embedded import EmbeddedValkey, FolderInUse


@pytest.fixture(autouse=True)
def short_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "FOLDER_LOCK_WAIT_S", 0.3)


def test_a_second_valkey_on_a_folder_in_use_is_refused(tmp_path: Path) -> None:
    with EmbeddedValkey(tmp_path / "data"), pytest.raises(FolderInUse, match="is in use"):
        EmbeddedValkey(tmp_path / "data").start()
    with EmbeddedValkey(tmp_path / "data"):  # free again once the first has stopped
        pass


def test_a_forked_child_does_not_keep_the_folder(tmp_path: Path) -> None:
    first = EmbeddedValkey(tmp_path / "data")
    first.start()
    child = os.fork()
    if child == 0:  # as the engine's snapshot writers are forked: alive after we let go
        time.sleep(30)
        os._exit(0)
    try:
        first.stop()
        with EmbeddedValkey(tmp_path / "data"):
            pass
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
