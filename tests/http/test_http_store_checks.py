"""At start the server waits (a bounded time) for its store, then reads how it keeps data: a
store that can lose acknowledged writes (AOF off, appendfsync not always, eviction on) gets a
loud warning, or a refusal to start with LOCKGATE_REQUIRE_FSYNC_ALWAYS=true. Real Valkey,
real server processes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from lockgate_server.harness import ServerProcess
from lockgate_server.storage.embedded import EmbeddedValkey, free_port

WARNING = "acknowledged writes can be lost"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EmbeddedValkey]:
    valkey = EmbeddedValkey(tmp_path / "valkey")
    valkey.start()
    yield valkey
    valkey.stop()


def configure(store: EmbeddedValkey, **settings: str) -> None:
    with redis.Redis.from_url(store.url) as admin:
        for name, value in settings.items():
            admin.config_set(name.replace("_", "-"), value)


def start(tmp_path: Path, store: EmbeddedValkey, **env: str) -> ServerProcess:
    return ServerProcess(tmp_path / "node", env={"LOCKGATE_REDIS_URL": store.url, **env})


RISKY = [
    pytest.param({"appendfsync": "everysec"}, "appendfsync=everysec", id="fsync-everysec"),
    pytest.param({"appendonly": "no"}, "appendonly=no", id="aof-off"),
    pytest.param(
        {"maxmemory": "104857600", "maxmemory_policy": "allkeys-lru"},
        "maxmemory-policy=allkeys-lru",
        id="eviction",
    ),
]


def test_a_safe_store_gets_no_warning(tmp_path: Path, store: EmbeddedValkey) -> None:
    configure(store, maxmemory="104857600", maxmemory_policy="noeviction")  # a limit that never evicts is fine
    server = start(tmp_path, store).start()
    try:
        assert server.get_status("/readyz") == 200
        assert WARNING not in server.log()
    finally:
        server.stop()


@pytest.mark.parametrize(("settings", "named"), RISKY)
def test_a_risky_store_gets_a_loud_warning(
    tmp_path: Path, store: EmbeddedValkey, settings: dict[str, str], named: str
) -> None:
    configure(store, **settings)
    server = start(tmp_path, store).start()
    try:
        assert server.get_status("/readyz") == 200
        warning = next(line for line in server.log().splitlines() if WARNING in line)
        assert "!!!" in warning and named in warning
    finally:
        server.stop()


@pytest.mark.parametrize(("settings", "named"), RISKY)
def test_a_risky_store_is_refused_when_asked(
    tmp_path: Path, store: EmbeddedValkey, settings: dict[str, str], named: str
) -> None:
    configure(store, **settings)
    server = start(tmp_path, store, LOCKGATE_REQUIRE_FSYNC_ALWAYS="true")
    with pytest.raises(RuntimeError, match="exited") as refused:
        server.start()
    assert named in str(refused.value) and WARNING in str(refused.value)


def test_a_store_that_starts_later_is_waited_for(tmp_path: Path) -> None:
    port = free_port()
    server = ServerProcess(tmp_path / "node", env={"LOCKGATE_REDIS_URL": f"redis://127.0.0.1:{port}/0"})
    starting = threading.Thread(target=server.start)
    starting.start()
    late = EmbeddedValkey(tmp_path / "late-valkey", port=port)
    try:
        time.sleep(1.5)  # the node is up and waiting; services start in any order
        late.start()
        starting.join(timeout=60)
        assert server.get_status("/readyz") == 200
        assert "waiting for the store" in server.log()
    finally:
        server.stop()
        late.stop()


def test_a_store_that_never_answers_ends_the_start_with_a_clear_error(tmp_path: Path) -> None:
    env = {"LOCKGATE_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "LOCKGATE_STORE_WAIT_MS": "500"}
    with pytest.raises(RuntimeError, match="exited") as refused:
        ServerProcess(tmp_path / "node", env=env).start()
    assert "did not answer within 500 ms" in str(refused.value)


@pytest.mark.parametrize("recorded", [True, False], ids=["recorded", "data-from-before-the-record"])
def test_another_shard_count_on_existing_data_ends_the_start(
    tmp_path: Path, store: EmbeddedValkey, recorded: bool
) -> None:
    """With another count every object moves to another shard: the node served held locks as
    free, counters as zero, and fencing tokens that went backwards."""
    first = start(tmp_path, store).start()
    first.stop()
    if not recorded:  # data written before the count was recorded is told by its shards' keys
        with redis.Redis.from_url(store.url) as admin:
            assert admin.delete("{lg}:shards") == 1
    for shards in (first.shards - 1, first.shards + 3):
        server = ServerProcess(tmp_path / f"node-{shards}", env={"LOCKGATE_REDIS_URL": store.url}, shards=shards)
        with pytest.raises(RuntimeError, match="exited") as refused:
            server.start()
        message = f"laid out in {first.shards} shards, but LOCKGATE_SHARDS is {shards}"
        assert message in str(refused.value)
    start(tmp_path, store).start().stop()  # the count the data was written with is welcome
