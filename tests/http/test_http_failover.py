"""Two nodes on one store: one serves, the other stands by and takes over when the first dies.

Real server processes on a real Valkey; the active node is killed with kill -9 (its leases
are left behind and must run out) and later stopped with SIGTERM (it lets go at once).
"""

from __future__ import annotations

from pathlib import Path

import httpx

from lockgate_server.harness import ServerProcess
from lockgate_server.storage.embedded import EmbeddedValkey

LOCK = "/v1/namespaces/failover/locks/the-lock"
FAILOVER_TIMEOUT_S = 20.0  # the dead node's lease (3 s), a standby poll, loading; generous for slow CI


def assert_standing_by(client: httpx.Client, node: ServerProcess, active: ServerProcess) -> None:
    """A standby answers by relaying to the active node; it does not serve the shards itself."""
    ready = client.get(f"{node.url}/readyz")
    assert ready.status_code == 200 and ready.json()["standby"] is True, ready.text
    assert ready.json()["relays_to"] == active.url
    assert client.get(f"{node.url}/readyz?active=1").status_code == 503
    relayed = client.get(f"{node.url}{LOCK}")
    direct = client.get(f"{active.url}{LOCK}")
    assert relayed.status_code == 200 and "lockgate-forwarded-by" in relayed.headers, relayed.text
    fields = ("held", "holder", "token", "waiters")
    assert [relayed.json()[field] for field in fields] == [direct.json()[field] for field in fields]


def test_a_standby_node_takes_over_with_every_lease_and_token(tmp_path: Path) -> None:
    valkey = EmbeddedValkey(tmp_path / "valkey")
    valkey.start()
    env = {"LOCKGATE_REDIS_URL": valkey.url, "LOCKGATE_STANDBY_POLL_MS": "100"}
    nodes: list[ServerProcess] = []

    def node(name: str, until: str) -> ServerProcess:
        nodes.append(ServerProcess(tmp_path / name, env=env))
        return nodes[-1].start(until=until)

    try:
        first = node("first", "/readyz")
        second = node("second", "/healthz")  # up, but the shards belong to the first
        with httpx.Client(timeout=10) as client:
            acquired = client.post(f"{first.url}{LOCK}/acquire", json={"ttl_ms": 60_000, "holder": "survivor"})
            assert acquired.status_code == 200, acquired.text
            lease = acquired.json()
            assert_standing_by(client, second, first)

            first.kill()  # kill -9: its ownership leases stay behind until they run out
            second.wait_ready(timeout_s=FAILOVER_TIMEOUT_S)
            seen = client.get(f"{second.url}{LOCK}").json()
            assert seen["held"] is True and seen["token"] == lease["token"] and seen["holder"] == "survivor"

            # The first node, back, finds a live owner and stands by in its turn.
            third = node("first", "/healthz")
            assert_standing_by(client, third, second)

            released = client.post(f"{second.url}{LOCK}/release", json={"lease_id": lease["lease_id"]})
            assert released.status_code == 200 and released.json()["released"] is True, released.text
            again = client.post(f"{second.url}{LOCK}/acquire", json={"ttl_ms": 60_000})
            assert again.status_code == 200 and again.json()["token"] > lease["token"], again.text

            # A clean stop lets go of the shards: the standby takes them without a lease to wait out.
            second.stop()
            third.wait_ready(timeout_s=FAILOVER_TIMEOUT_S)
            seen = client.get(f"{third.url}{LOCK}").json()
            assert seen["held"] is True and seen["token"] == again.json()["token"]
    finally:
        for started in nodes:
            started.stop()
        valkey.stop()
