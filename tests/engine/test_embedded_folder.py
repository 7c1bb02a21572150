"""One Valkey per data folder: the folder's lock holds while our Valkey lives, and no other
process of ours (a forked snapshot writer) keeps it once that Valkey is gone."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from lockgate_server.core.shard_state import ShardState
from lockgate_server.engine.snapshots import SnapshotJob, _fork_writer
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


def test_a_snapshot_writer_does_not_keep_the_folder(tmp_path: Path) -> None:
    """A writer outliving its server (it may write for up to SNAPSHOT_WAIT_S) let a restart
    find the folder locked."""
    first = EmbeddedValkey(tmp_path / "data")
    first.start()
    with EmbeddedValkey(tmp_path / "other-store") as other:
        # A log that never reaches the job's LSN: the writer waits for it, alive, all along.
        writer = _fork_writer(other.url, [SnapshotJob(shard=0, epoch=1, lsn=10**9, state=ShardState(0))])
        try:
            first.stop()
            with EmbeddedValkey(tmp_path / "data"):
                pass
        finally:
            os.kill(writer, signal.SIGKILL)
            os.waitpid(writer, 0)
