"""Runtime policy changes: in force at once, kept in the store, seen by a restarted or another node."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from lockgate_server import limits
from lockgate_server.errors import Unavailable
from lockgate_server.gateway.loader import load_policy_files, policy_from_mapping
from lockgate_server.gateway.policy import DomainPolicy
from lockgate_server.gateway.registry import PolicyRegistry
from lockgate_server.storage.embedded import EmbeddedValkey

from .support import FIXTURES


def per_ip(requests: int, domain: str = "rl") -> DomainPolicy:
    descriptor = {"key": "ip", "rate_limit": {"unit": "second", "requests_per_unit": requests}}
    return policy_from_mapping({"domain": domain, "descriptors": [descriptor]}, source="test")


def requests_for_ip(registry: PolicyRegistry, domain: str = "rl") -> int | None:
    compiled = registry.get(domain)
    node = None if compiled is None else compiled.match([("ip", "1.2.3.4")])
    return None if node is None or node.limit is None else node.limit.requests


@pytest.fixture
async def registries(valkey: EmbeddedValkey) -> AsyncIterator[Callable[[], PolicyRegistry]]:
    started: list[PolicyRegistry] = []

    def make() -> PolicyRegistry:
        registry = PolicyRegistry(load_policy_files([FIXTURES / "example.yaml"]))
        started.append(registry)
        return registry

    yield make
    for registry in started:
        await registry.stop()


async def test_a_runtime_policy_is_in_force_at_once_and_survives_a_restart(
    registries: Callable[[], PolicyRegistry], valkey: EmbeddedValkey
) -> None:
    first = registries()
    await first.start(valkey.url)
    assert first.describe("rl") is not None and first.describe("rl")[1] == "file"  # type: ignore[index]
    assert requests_for_ip(first) is None
    await first.put(per_ip(7))
    assert requests_for_ip(first) == 7
    assert first.domains() == [("rl", "runtime")]
    await first.stop()

    restarted = registries()
    assert requests_for_ip(restarted) is None  # only the file until it has read the store
    await restarted.start(valkey.url)
    assert requests_for_ip(restarted) == 7

    assert await restarted.delete("rl") is True
    assert requests_for_ip(restarted) is None
    policy, source = restarted.describe("rl")  # type: ignore[misc]
    assert source == "file" and policy.descriptors[0].key == "source_cluster"
    assert await restarted.delete("rl") is False


async def test_another_node_picks_a_change_up_within_the_refresh_interval(
    registries: Callable[[], PolicyRegistry], valkey: EmbeddedValkey
) -> None:
    node_a, node_b = registries(), registries()
    await node_a.start(valkey.url)
    await node_b.start(valkey.url)
    watcher = asyncio.create_task(node_b.watch())
    try:
        await node_a.put(per_ip(3, domain="fresh"))
        deadline = asyncio.get_running_loop().time() + 3 * limits.GATEWAY_POLICY_REFRESH_MS / 1000
        while requests_for_ip(node_b, "fresh") is None:
            assert asyncio.get_running_loop().time() < deadline, "node b never saw the change"
            await asyncio.sleep(0.05)
        assert requests_for_ip(node_b, "fresh") == 3
        # Both change: each sees the other's change too (versions are checked, not assumed).
        await node_b.put(per_ip(4, domain="fresh"))
        await node_a.put(per_ip(5, domain="other"))
        assert requests_for_ip(node_a, "fresh") == 4
    finally:
        watcher.cancel()


async def test_a_change_the_store_does_not_take_is_not_in_force(
    registries: Callable[[], PolicyRegistry], valkey: EmbeddedValkey
) -> None:
    registry = registries()
    await registry.start(valkey.url)
    valkey.kill()
    with pytest.raises(Unavailable):
        await registry.put(per_ip(9))
    assert requests_for_ip(registry) is None
