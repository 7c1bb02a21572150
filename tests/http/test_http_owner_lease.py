"""The ownership lease is a setting: a node takes its shards for LOCKGATE_OWNER_LEASE_MS, as a
store that stalls for seconds (a managed Redis failing over) needs. Real Valkey, real server."""

from __future__ import annotations

from pathlib import Path

import redis

from lockgate_server.harness import ServerProcess
from lockgate_server.limits import OWNER_LEASE_MS
from lockgate_server.storage.embedded import EmbeddedValkey

LEASE_MS = 20_000


def test_the_owner_lease_is_taken_for_as_long_as_the_setting_says(tmp_path: Path, valkey: EmbeddedValkey) -> None:
    assert LEASE_MS > 2 * OWNER_LEASE_MS  # so the default cannot pass for it
    env = {"LOCKGATE_REDIS_URL": valkey.url, "LOCKGATE_SHARDS": "4", "LOCKGATE_OWNER_LEASE_MS": str(LEASE_MS)}
    server = ServerProcess(tmp_path / "node", env=env).start()
    try:
        with redis.Redis.from_url(valkey.url) as store:
            lease_left_ms = [store.pttl(f"{{lg:{shard}}}:owner") for shard in range(4)]
    finally:
        server.stop()
    assert all(2 * OWNER_LEASE_MS < left <= LEASE_MS for left in lease_left_ms), lease_left_ms
