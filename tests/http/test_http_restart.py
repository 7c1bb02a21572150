"""A lease survives kill -9 of the whole node (the server and its embedded Valkey)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

LOCK = "/v1/namespaces/crash/locks/the-lock"


def test_lock_survives_kill_9_of_the_whole_node(start_server: Any, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = start_server(data_dir)
    with httpx.Client(base_url=first.url, timeout=10) as client:
        acquired = client.post(f"{LOCK}/acquire", json={"ttl_ms": 30_000, "holder": "survivor"})
        assert acquired.status_code == 200, acquired.text
        lease = acquired.json()
    assert lease["ttl_ms"] == 30_000

    first.kill()  # SIGKILL to the process group: no shutdown hook runs anywhere
    assert not first.alive_members()

    second = start_server(data_dir)
    assert second.port != first.port or second.pgid != first.pgid
    with httpx.Client(base_url=second.url, timeout=10) as client:
        status = client.get(LOCK)
        assert status.status_code == 200, status.text
        seen = status.json()
        assert seen["held"] is True
        assert seen["token"] == lease["token"]
        assert seen["holder"] == "survivor"
        assert 0 < seen["remaining_ms"] <= 30_000

        # Somebody else is still refused: the lease really is held.
        refused = client.post(f"{LOCK}/acquire", json={"ttl_ms": 1_000})
        assert refused.status_code == 409, refused.text
        assert refused.json()["type"] == "https://lockgate.dev/problems/held"

        released = client.post(f"{LOCK}/release", json={"lease_id": lease["lease_id"]})
        assert released.status_code == 200, released.text
        assert released.json()["released"] is True
        assert client.get(LOCK).json()["held"] is False

        again = client.post(f"{LOCK}/acquire", json={"ttl_ms": 30_000})
        assert again.status_code == 200, again.text
        assert again.json()["token"] > lease["token"]
