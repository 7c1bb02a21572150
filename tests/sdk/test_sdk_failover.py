"""A client given every node of a deployment follows the active one: from a standby (which
relays its first call) to the active node, and on to the standby when the active node is killed.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from lockgate import AsyncClient, Client
from lockgate._core import node_urls

from lockgate_server.harness import ServerProcess
from lockgate_server.storage.embedded import EmbeddedValkey


@dataclass
class Deployment:
    active: ServerProcess
    standby: ServerProcess

    @property
    def urls(self) -> list[str]:
        return [self.standby.url, self.active.url]  # the standby first: the client must move on


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    valkey = EmbeddedValkey(tmp_path / "valkey")
    valkey.start()
    env = {"LOCKGATE_REDIS_URL": valkey.url, "LOCKGATE_STANDBY_POLL_MS": "100"}
    active = ServerProcess(tmp_path / "active", env=env)
    standby = ServerProcess(tmp_path / "standby", env=env)
    try:
        active.start()
        standby.start(until="/healthz")
        yield Deployment(active, standby)
    finally:
        active.stop()
        standby.stop()
        valkey.stop()


def test_the_sync_client_follows_the_active_node(deployment: Deployment) -> None:
    with Client(deployment.urls, namespace="failover") as lg:  # the default retries ride out a failover
        lease = lg.lock("job", ttl=60, auto_renew=False).acquire()
        assert lg.counter("runs").add(1) == 1
        deployment.active.kill()
        assert lg.counter("runs").add(1) == 2  # served by the standby, once it took over
        status = lg.lock_status("job")
        assert status.held and status.token == lease.token


async def test_the_async_client_follows_the_active_node(deployment: Deployment) -> None:
    async with AsyncClient(",".join(deployment.urls), namespace="failover") as lg:
        context = lg.lock("job", ttl=60, auto_renew=False)
        lease = await context.acquire()
        counter = lg.counter("runs")
        assert sorted([await counter.add(1) for _ in range(3)]) == [1, 2, 3]
        deployment.active.kill()
        # Batched calls too: each op that a standby refuses moves the client on.
        results = await asyncio.gather(*(counter.add(1) for _ in range(20)))
        assert sorted(results) == list(range(4, 24))
        status = await lg.lock_status("job")
        assert status.held and status.token == lease.token
        await context.release()
        assert not (await lg.lock_status("job")).held


def test_a_client_moves_from_a_standby_to_the_active_node_after_one_relayed_answer(
    deployment: Deployment,
) -> None:
    with Client(deployment.urls, namespace="failover") as lg:
        assert [lg.counter("hops").add(1) for _ in range(5)] == [1, 2, 3, 4, 5]
    assert deployment.standby.metric("lockgate_relayed_requests_total", 'outcome="answered"') == 1


def test_a_client_takes_one_url_a_list_or_a_comma_separated_string() -> None:
    assert node_urls("http://a:1") == ["http://a:1"]
    assert node_urls("http://a:1, http://b:2") == ["http://a:1", "http://b:2"]
    assert node_urls(["http://a:1", "http://b:2"]) == ["http://a:1", "http://b:2"]
    with pytest.raises(ValueError, match="at least one"):
        Client(" , ")


def test_a_default_client_rides_out_a_restart_of_its_node(tmp_path: Path) -> None:
    node = ServerProcess(tmp_path / "node")
    try:
        node.start()
        with Client(node.url, namespace="restart") as lg:
            assert lg.counter("runs").add(1) == 1
            node.kill()
            # Back after its old leases run out (3 s), meanwhile the call below keeps retrying.
            restarting = threading.Thread(target=node.start)
            restarting.start()
            try:
                assert lg.counter("runs").add(1) == 2
            finally:
                restarting.join()
    finally:
        node.stop()
