"""Decisions against a real engine on a real Valkey: all-or-nothing, no charge for a denial,
shadow mode, peeks, resets, failure modes. Time is a ManualClock, so windows never turn by accident.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from prometheus_client import generate_latest

from lockgate_server.api.metrics import Metrics
from lockgate_server.clock import ManualClock
from lockgate_server.engine.node import Engine
from lockgate_server.gateway.decision import Decider, RequestDescriptor, Verdict
from lockgate_server.gateway.loader import load_policy_files, policy_from_mapping
from lockgate_server.gateway.matcher import CompiledDomain
from lockgate_server.gateway.telemetry import GatewayMetrics
from lockgate_server.storage.embedded import EmbeddedValkey

from .support import FIXTURES

WINDOW_START_MS = 1_700_000_040_000  # a whole minute: fixed windows start here


class Harness:
    def __init__(self, engine: Engine, clock: ManualClock) -> None:
        self.engine = engine
        self.clock = clock
        self.metrics = Metrics()
        self.decider = Decider(lambda: engine, GatewayMetrics(self.metrics))

    async def check(self, domain: CompiledDomain, *descriptors: Any, hits_addend: int = 1) -> Verdict:
        return await self.decider.decide(domain, [_descriptor(d) for d in descriptors], hits_addend=hits_addend)

    def gateway_state_keys(self) -> set[str]:
        keys: set[str] = set()
        for slot in self.engine._slots.values():
            keys |= {key for key in slot.state.rates if key.startswith("gateway/")}
        return keys

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return value or 0.0


def _descriptor(spec: Any) -> RequestDescriptor:
    if isinstance(spec, RequestDescriptor):
        return spec
    if isinstance(spec, dict):
        return RequestDescriptor(tuple(spec.items()))
    return RequestDescriptor(tuple(spec))


def domain(descriptors: list[dict[str, Any]], **settings: Any) -> CompiledDomain:
    return CompiledDomain(policy_from_mapping({"domain": "d", "descriptors": descriptors, **settings}, source="test"))


@pytest.fixture
async def harness(engines: Any) -> Harness:
    clock = ManualClock(WINDOW_START_MS)
    engine = await engines.start(engines.config(commit_timeout_ms=1000), clock=clock)
    return Harness(engine, clock)


RATE = {"unit": "minute"}


async def test_a_request_denied_by_one_limit_charges_none_of_the_others(harness: Harness) -> None:
    policy = domain(
        [
            {"key": "ip", "rate_limit": {**RATE, "requests_per_unit": 10}},
            {"key": "path", "rate_limit": {**RATE, "requests_per_unit": 2}},
        ]
    )
    for remaining_ip in (9, 8):
        verdict = await harness.check(policy, {"ip": "a"}, {"path": "/x"})
        assert verdict.allowed and verdict.statuses[0].remaining == remaining_ip
    denied = await harness.check(policy, {"ip": "a"}, {"path": "/x"})
    assert not denied.allowed
    assert [status.over_limit for status in denied.statuses] == [False, True]
    # The ip limit would have allowed it, and says so, but it was not charged:
    assert denied.statuses[0].remaining == 8
    alone = await harness.check(policy, {"ip": "a"})
    assert alone.allowed and alone.statuses[0].remaining == 7


async def test_rejected_requests_are_never_charged(harness: Harness) -> None:
    # GCRA: 3 per minute is one every 20 s. Were denials charged, the hammering below would
    # push the next allowed request far beyond 20 s.
    policy = domain([{"key": "ip", "rate_limit": {**RATE, "requests_per_unit": 3, "algorithm": "gcra"}}])
    assert [(await harness.check(policy, {"ip": "a"})).allowed for _ in range(3)] == [True] * 3
    for _ in range(50):
        assert not (await harness.check(policy, {"ip": "a"})).allowed
    harness.clock.advance(20_000)
    assert (await harness.check(policy, {"ip": "a"})).allowed
    assert not (await harness.check(policy, {"ip": "a"})).allowed


async def test_each_actual_value_of_a_key_only_or_wildcard_descriptor_has_its_own_state(harness: Harness) -> None:
    policy = domain(
        [
            {"key": "ip", "rate_limit": {**RATE, "requests_per_unit": 1}},
            {"key": "user", "value": "bot-*", "rate_limit": {**RATE, "requests_per_unit": 1}},
        ]
    )
    assert (await harness.check(policy, {"ip": "a"})).allowed
    assert not (await harness.check(policy, {"ip": "a"})).allowed
    assert (await harness.check(policy, {"ip": "b"})).allowed
    assert (await harness.check(policy, {"user": "bot-1"})).allowed
    assert not (await harness.check(policy, {"user": "bot-1"})).allowed
    assert (await harness.check(policy, {"user": "bot-2"})).allowed
    assert (await harness.check(policy, {"user": "human"})).statuses[0].limit is None
    assert len(harness.gateway_state_keys()) == 4


async def test_shadow_mode_decides_and_reports_but_never_denies(harness: Harness) -> None:
    (policy,) = load_policy_files([FIXTURES / "example.yaml"]).values()
    rl = CompiledDomain(policy)
    shady = {"foo": "x", "baz": "shady"}
    first = await harness.check(rl, RequestDescriptor((("foo", "x"), ("baz", "shady"))))
    assert first.allowed and not first.statuses[0].over_limit
    for _ in range(3):
        again = await harness.check(rl, RequestDescriptor(tuple(shady.items())))
        assert again.allowed
        assert again.statuses[0].over_limit and not again.statuses[0].denies
    assert harness.metric("lockgate_gateway_limit_decisions_total", domain="rl", limit="foo.baz_shady",
                          outcome="shadow_over_limit") == 3  # fmt: skip
    assert harness.metric("lockgate_gateway_decisions_total", domain="rl", outcome="allowed") == 4
    # Metrics are labelled by domain and configured limit, never by a request's values.
    assert b'"x"' not in generate_latest(harness.metrics.registry)


async def test_a_zero_limit_denies_without_charging_the_other_limits(harness: Harness) -> None:
    (policy,) = load_policy_files([FIXTURES / "example.yaml"]).values()
    rl = CompiledDomain(policy)
    banned = RequestDescriptor((("foo", "x"), ("bar", "banned")))
    foo = RequestDescriptor((("foo", "x"),))
    for _ in range(3):
        verdict = await harness.check(rl, banned, foo)
        assert not verdict.allowed and verdict.statuses[0].denies
        assert verdict.statuses[1].remaining == 2  # peeked, never charged
    assert harness.gateway_state_keys() == set()
    assert (await harness.check(rl, foo)).statuses[0].remaining == 1


async def test_unlimited_and_whitelisted_descriptors_never_touch_the_store(harness: Harness) -> None:
    (policy,) = load_policy_files([FIXTURES / "example.yaml"]).values()
    rl = CompiledDomain(policy)
    for _ in range(5):
        verdict = await harness.check(rl, {"qux": "a"}, RequestDescriptor((("foo", "x"), ("bay", "y"))))
        assert verdict.allowed
        assert all(status.limit is not None and status.limit.unlimited for status in verdict.statuses)
        assert verdict.statuses[0].remaining == 2**32 - 1
    assert harness.gateway_state_keys() == set()


async def test_a_peek_charges_nothing_request_wide_or_per_descriptor(harness: Harness) -> None:
    policy = domain([{"key": "ip", "rate_limit": {**RATE, "requests_per_unit": 2}}])
    committed = harness.engine.stats.ops_committed
    peek = await harness.check(policy, {"ip": "a"}, hits_addend=0)
    assert peek.allowed and peek.statuses[0].remaining == 2
    assert harness.engine.stats.ops_committed == committed  # not logged at all
    assert (await harness.check(policy, {"ip": "a"})).statuses[0].remaining == 1
    mixed = await harness.check(
        policy, RequestDescriptor((("ip", "a"),), hits_addend=0), RequestDescriptor((("ip", "b"),), hits_addend=2)
    )
    assert mixed.allowed and [status.remaining for status in mixed.statuses] == [1, 0]
    assert (await harness.check(policy, {"ip": "a"})).statuses[0].remaining == 0
    assert not (await harness.check(policy, {"ip": "b"})).allowed


async def test_descriptors_sharing_a_state_add_up(harness: Harness) -> None:
    policy = domain([{"key": "ip", "rate_limit": {**RATE, "requests_per_unit": 3}}])
    assert (await harness.check(policy, {"ip": "a"}, {"ip": "a"})).allowed
    assert not (await harness.check(policy, {"ip": "a"}, {"ip": "a"})).allowed  # 2 + 2 > 3
    assert (await harness.check(policy, {"ip": "a"})).allowed


async def test_a_limit_replaces_another_by_name(harness: Harness) -> None:
    policy = domain(
        [
            {"key": "plan", "rate_limit": {**RATE, "requests_per_unit": 1, "name": "default"}},
            {
                "key": "customer",
                "value": "big",
                "rate_limit": {**RATE, "requests_per_unit": 100, "replaces": [{"name": "default"}]},
            },
        ]
    )
    both = [{"plan": "free"}, {"customer": "big"}]
    for _ in range(5):
        verdict = await harness.check(policy, *both)
        assert verdict.allowed and verdict.statuses[0].limit is None
    assert (await harness.check(policy, {"plan": "free"})).allowed
    assert not (await harness.check(policy, {"plan": "free"})).allowed


async def test_a_callers_limit_override_applies_instead(harness: Harness) -> None:
    policy = domain([{"key": "ip", "rate_limit": {**RATE, "requests_per_unit": 100}}])
    override = RequestDescriptor((("ip", "a"),), override=(2, "second"))
    assert [(await harness.check(policy, override)).allowed for _ in range(3)] == [True, True, False]
    limit = (await harness.check(policy, override)).statuses[0].limit
    assert limit is not None and (limit.requests, limit.window_ms, limit.shadow) == (2, 1000, False)
    assert (await harness.check(policy, {"ip": "a"})).statuses[0].remaining == 99


async def test_reset_forgets_only_the_named_state(harness: Harness) -> None:
    policy = domain([{"key": "ip", "rate_limit": {**RATE, "requests_per_unit": 1}}])
    for ip in ("a", "b"):
        assert (await harness.check(policy, {"ip": ip})).allowed
        assert not (await harness.check(policy, {"ip": ip})).allowed
    reset, lsn = await harness.decider.reset(policy, [_descriptor({"ip": "a"}), _descriptor({"nothing": "x"})])
    assert reset == 1 and lsn > 0
    assert (await harness.check(policy, {"ip": "a"})).allowed
    assert not (await harness.check(policy, {"ip": "b"})).allowed


async def test_a_policy_change_keeps_the_count_of_the_same_descriptor(harness: Harness) -> None:
    before = domain([{"key": "ip", "rate_limit": {**RATE, "requests_per_unit": 2}}])
    for _ in range(2):
        assert (await harness.check(before, {"ip": "a"})).allowed
    after = domain([{"key": "ip", "rate_limit": {**RATE, "requests_per_unit": 3}}])
    assert (await harness.check(after, {"ip": "a"})).allowed
    assert not (await harness.check(after, {"ip": "a"})).allowed


@pytest.mark.parametrize("failure_mode", ["allow", "deny"])
async def test_a_paused_store_decides_by_failure_mode_within_the_timeout(
    harness: Harness, valkey: EmbeddedValkey, failure_mode: str
) -> None:
    policy = domain(
        [{"key": "ip", "rate_limit": {**RATE, "requests_per_unit": 5}}],
        failure_mode=failure_mode,
        failure_timeout_ms=150,
    )
    assert (await harness.check(policy, {"ip": "a"})).allowed
    valkey.pause()
    try:
        started = time.monotonic()
        verdict = await harness.check(policy, {"ip": "a"})
        elapsed = time.monotonic() - started
    finally:
        valkey.resume()
    assert verdict.failure == "timeout"
    assert verdict.allowed is (failure_mode == "allow")
    assert 0.1 <= elapsed < 1.0
    outcome = f"failure_{'allowed' if failure_mode == 'allow' else 'denied'}"
    assert harness.metric("lockgate_gateway_decisions_total", domain="d", outcome=outcome) == 1


async def test_idle_keys_are_dropped_once_their_state_is_full_again(harness: Harness) -> None:
    policy = domain([{"key": "ip", "rate_limit": {**RATE, "requests_per_unit": 5}}])
    for ip in range(20):
        assert (await harness.check(policy, {"ip": str(ip)})).allowed
    assert len(harness.gateway_state_keys()) == 20
    harness.clock.advance(62_000)  # the window is over (and then some): every key is full again
    for _ in range(200):  # the engine's expiry sweep runs every few ms of real time
        if not harness.gateway_state_keys():
            break
        await asyncio.sleep(0.01)
    assert harness.gateway_state_keys() == set()
    assert (await harness.check(policy, {"ip": "0"})).statuses[0].remaining == 4
