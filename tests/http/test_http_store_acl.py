"""A store user that may not run CONFIG (managed Redis services, least-privilege ACLs) still
runs the server: how the store keeps data cannot be read, so start-up warns and goes on, and
refuses only when LOCKGATE_REQUIRE_FSYNC_ALWAYS asks for proof. Real Valkey, real server processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from lockgate_server.harness import ServerProcess
from lockgate_server.storage.embedded import EmbeddedValkey

UNVERIFIED = "cannot verify the store's durability"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EmbeddedValkey]:
    valkey = EmbeddedValkey(tmp_path / "valkey")
    valkey.start()
    with redis.Redis.from_url(valkey.url) as admin:
        # Everything but CONFIG, as a least-privilege user (or a managed service) has it.
        admin.acl_setuser(
            "app", enabled=True, passwords=["+secret"], keys=["*"], channels=["*"], commands=["+@all", "-config"]
        )
    yield valkey
    valkey.stop()


def app_url(store: EmbeddedValkey) -> str:
    return f"redis://app:secret@127.0.0.1:{store.port}/0"


def test_a_store_user_without_config_starts_with_a_warning(tmp_path: Path, store: EmbeddedValkey) -> None:
    server = ServerProcess(tmp_path / "node", env={"LOCKGATE_REDIS_URL": app_url(store)}).start()
    try:
        assert server.get_status("/readyz") == 200
        warning = next(line for line in server.log().splitlines() if UNVERIFIED in line)
        assert "WARNING" in warning and "appendfsync always" in warning
        assert "secret" not in server.log()
    finally:
        server.stop()


def test_a_store_user_without_config_is_refused_when_fsync_always_is_required(
    tmp_path: Path, store: EmbeddedValkey
) -> None:
    env = {"LOCKGATE_REDIS_URL": app_url(store), "LOCKGATE_REQUIRE_FSYNC_ALWAYS": "true"}
    server = ServerProcess(tmp_path / "node", env=env)
    with pytest.raises(RuntimeError, match="exited"):
        server.start()
    output = server.log_path.read_text()
    error = next(line for line in output.splitlines() if UNVERIFIED in line)
    assert "ERROR" in error and "LOCKGATE_REQUIRE_FSYNC_ALWAYS" in error and "config|get" in error
    assert "Traceback" not in output  # the one line says it all
