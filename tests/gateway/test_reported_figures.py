"""What the answers report agrees with itself: remaining never above the reported limit, and a
fixed window's reset is the end of the current window even for a key never used."""

from __future__ import annotations

from lockgate_server.core.ops import RateCheck
from lockgate_server.core.ratelimit import check
from lockgate_server.gateway.headers import rate_limit_headers
from lockgate_server.gateway.rls import response_from_verdict

from .test_decisions import RATE, Harness, domain, harness

__all__ = ["harness"]  # the fixture, shared with test_decisions


async def test_a_gcra_burst_never_reports_more_remaining_than_the_limit(harness: Harness) -> None:
    policy = domain(
        [{"key": "ip", "rate_limit": {"unit": "second", "requests_per_unit": 2, "burst": 5, "algorithm": "gcra"}}]
    )
    reported = []
    for _ in range(5):
        verdict = await harness.check(policy, {"ip": "a"})
        assert verdict.allowed  # the burst still lets five through at once
        headers = dict(rate_limit_headers(verdict))
        assert headers["RateLimit-Policy"] == '"ip";q=2;w=1'
        remaining = int(headers["X-RateLimit-Remaining"])
        assert remaining <= int(headers["X-RateLimit-Limit"]) == 2
        assert f'"ip";r={remaining};' in headers["RateLimit"]
        (status,) = response_from_verdict(verdict).statuses
        assert status.limit_remaining <= status.current_limit.requests_per_unit == 2
        reported.append(remaining)
    assert reported == [2, 2, 2, 1, 0]
    assert not (await harness.check(policy, {"ip": "a"})).allowed


async def test_a_burst_below_the_limit_reports_what_is_left(harness: Harness) -> None:
    policy = domain([{"key": "ip", "rate_limit": {**RATE, "requests_per_unit": 7, "burst": 3, "algorithm": "gcra"}}])
    reported = [(await harness.check(policy, {"ip": "a"})).statuses[0].remaining for _ in range(3)]
    assert reported == [2, 1, 0]


async def test_a_peek_at_an_unused_fixed_window_key_reports_the_end_of_the_window(harness: Harness) -> None:
    policy = domain([{"key": "ip", "rate_limit": {**RATE, "requests_per_unit": 3}}])  # fixed window, a minute
    harness.clock.advance(15_000)
    peek = await harness.check(policy, {"ip": "never-used"}, hits_addend=0)
    assert peek.allowed and peek.statuses[0].remaining == 3
    assert peek.statuses[0].reset_after_ms == 45_000
    assert dict(rate_limit_headers(peek))["X-RateLimit-Reset"] == "45"
    assert response_from_verdict(peek).statuses[0].duration_until_reset.seconds == 45


def test_the_core_reports_the_window_end_for_an_unused_key() -> None:
    for cost in (0, 5):  # a peek, and a request larger than the limit (denied, nothing used)
        _, decision = check(
            None,
            RateCheck(namespace="n", name="r", limit=3, period_ms=1000, cost=cost, algorithm="fixed_window"),
            12_250,
        )
        assert decision.reset_after_ms == 750
