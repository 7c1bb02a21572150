"""What a check answers when the store does not: a banned descriptor stays banned, and a full
namespace is its own answer, not a store outage."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from lockgate_server.clock import ManualClock
from lockgate_server.gateway.decision import RequestDescriptor
from lockgate_server.gateway.headers import FAILURE_HEADER, rate_limit_headers
from lockgate_server.gateway.rls import response_from_verdict
from lockgate_server.storage.embedded import EmbeddedValkey

from .test_decisions import RATE, WINDOW_START_MS, Harness, domain, harness

__all__ = ["harness"]  # the fixture, shared with test_decisions


@pytest.mark.parametrize("failure_mode", ["allow", "deny"])
async def test_a_banned_descriptor_denies_even_when_the_store_does_not_answer(
    harness: Harness, valkey: EmbeddedValkey, failure_mode: str
) -> None:
    policy = domain(
        [
            {"key": "banned", "rate_limit": {**RATE, "requests_per_unit": 0}},
            {"key": "user", "rate_limit": {**RATE, "requests_per_unit": 5}},
        ],
        failure_mode=failure_mode,
        failure_timeout_ms=100,
    )
    valkey.pause()
    try:
        # A charge waits for the paused store, so the banned request's look at `user` waits behind it.
        charging = asyncio.create_task(harness.check(policy, {"user": "u"}))
        await asyncio.sleep(0.01)
        verdict = await harness.check(policy, {"banned": "x"}, {"user": "u"})
        assert (await charging).failure == "timeout"  # the store did fail this time
    finally:
        valkey.resume()
    assert not verdict.allowed
    assert verdict.failure is None  # a denial, not a failure: gRPC answers OVER_LIMIT, not UNAVAILABLE
    assert verdict.statuses[0].denies
    assert response_from_verdict(verdict).overall_code == response_from_verdict(verdict).OVER_LIMIT


@pytest.mark.parametrize("failure_mode", ["allow", "deny"])
async def test_a_full_namespace_denies_new_keys_as_over_limit_not_as_a_store_outage(
    engines: Any, failure_mode: str
) -> None:
    clock = ManualClock(WINDOW_START_MS)
    full = Harness(await engines.start(engines.config(max_objects_per_namespace=1), clock=clock), clock)
    policy = domain(
        [
            {"key": "ip", "rate_limit": {**RATE, "requests_per_unit": 5}},
            {"key": "watched", "shadow_mode": True, "rate_limit": {**RATE, "requests_per_unit": 5}},
        ],
        failure_mode=failure_mode,
    )
    assert (await full.check(policy, {"ip": "kept"})).allowed
    verdict = await full.check(policy, {"ip": "kept"}, {"ip": "new"})
    assert not verdict.allowed and verdict.failure == "quota-exceeded" and not verdict.store_failed
    assert [status.denies for status in verdict.statuses] == [True, True]
    assert response_from_verdict(verdict).overall_code == response_from_verdict(verdict).OVER_LIMIT
    assert dict(rate_limit_headers(verdict))[FAILURE_HEADER] == "quota-exceeded"
    # Counted as what it is, not as a store outage.
    assert full.metric("lockgate_gateway_decisions_total", domain="d", outcome="quota_exceeded") == 1
    assert full.metric("lockgate_gateway_decisions_total", domain="d", outcome="failure_denied") == 0
    # Nothing was charged, a kept key works on, and a shadow limit still never denies.
    assert (await full.check(policy, {"ip": "kept"})).statuses[0].remaining == 3
    assert (await full.check(policy, RequestDescriptor((("watched", "new"),)))).allowed
