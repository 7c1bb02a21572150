"""Limits judged and reported as envoyproxy/ratelimit judges and reports them: each override
against its own limit, a limit of 0 until the end of its window, the week as a unit, and a
policy file without any domain refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from lockgate_server.api.metrics import Metrics
from lockgate_server.clock import ManualClock
from lockgate_server.engine.node import Engine
from lockgate_server.gateway.decision import Decider, DescriptorStatus, RequestDescriptor, Verdict
from lockgate_server.gateway.headers import rate_limit_headers
from lockgate_server.gateway.loader import PolicyError, load_policy_files, parse_policies
from lockgate_server.gateway.matcher import CompiledDomain
from lockgate_server.gateway.policy import UNIT_MS
from lockgate_server.gateway.proto.envoy.service.ratelimit.v3.rls_pb2 import RateLimitResponse
from lockgate_server.gateway.rls import response_from_verdict
from lockgate_server.gateway.telemetry import GatewayMetrics

from .support import FIXTURES
from .test_decisions import WINDOW_START_MS, Harness, harness

__all__ = ["harness"]  # the fixture, shared with test_decisions

WEEK_UNIT_NUMBER = 7
"""RateLimitResponse.RateLimit.Unit.WEEK in Envoy's rls.proto (envoyproxy/envoy#37494)."""


async def test_two_overrides_of_the_same_entries_are_each_judged_by_their_own_limit(harness: Harness) -> None:
    policy = CompiledDomain(parse_policies(b"domain: o\n", source="o.yaml")[0])
    generous = RequestDescriptor((("user", "u"),), override=(100, "minute"))
    strict = RequestDescriptor((("user", "u"),), override=(1, "minute"))
    first = await harness.check(policy, generous, strict)
    assert first.allowed
    assert [status.remaining for status in first.statuses] == [99, 0]
    second = await harness.check(policy, generous, strict)
    assert not second.allowed
    assert [status.over_limit for status in second.statuses] == [False, True]
    assert [status.limit.requests for status in second.statuses if status.limit] == [100, 1]


def _no_store() -> Engine:
    raise AssertionError("a limit of 0 is decided without the store")


async def test_a_limit_of_0_reports_the_rest_of_the_window_not_the_whole_unit() -> None:
    clock = ManualClock(WINDOW_START_MS + 45_000)  # 45 s into a minute
    decider = Decider(_no_store, GatewayMetrics(Metrics()), clock=clock)
    (policy,) = load_policy_files([FIXTURES / "example.yaml"]).values()
    verdict = await decider.decide(CompiledDomain(policy), [RequestDescriptor((("foo", "a"), ("bar", "banned")))])
    assert not verdict.allowed
    (status,) = verdict.statuses
    assert (status.reset_after_ms, status.retry_after_ms) == (15_000, 15_000)
    assert response_from_verdict(verdict).statuses[0].duration_until_reset.seconds == 15
    headers = dict(rate_limit_headers(verdict))
    assert (headers["X-RateLimit-Reset"], headers["Retry-After"]) == ("15", "15")
    clock.advance(14_999)  # the last millisecond of the window
    verdict = await decider.decide(CompiledDomain(policy), [RequestDescriptor((("foo", "a"), ("bar", "banned")))])
    assert verdict.statuses[0].reset_after_ms == 1


def test_a_week_is_a_unit_of_seven_days_reported_as_envoys_week() -> None:
    text = b"domain: w\ndescriptors:\n  - key: k\n    rate_limit: {unit: Week, requests_per_unit: 5}\n"
    domain = CompiledDomain(parse_policies(text, source="w.yaml")[0])
    node = domain.match([("k", "v")])
    assert node is not None and node.limit is not None
    assert (node.limit.window_ms, node.limit.unit) == (7 * 86_400_000, "week") == (UNIT_MS["week"], "week")
    assert node.limit.policy_header == '"k";q=5;w=604800'
    assert RateLimitResponse.RateLimit.Unit.Value("WEEK") == WEEK_UNIT_NUMBER
    verdict = Verdict(allowed=True, statuses=[DescriptorStatus(node.limit, remaining=4, reset_after_ms=1000)])
    assert response_from_verdict(verdict).statuses[0].current_limit.unit == WEEK_UNIT_NUMBER


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("empty.yaml", b""),
        ("comments.yaml", b"# cut short\n"),
        ("separator.yaml", b"---\n"),
        ("documents.yaml", b"---\n---\n"),
        ("list.yaml", b"domains: []\n"),
        ("list.toml", b"domains = []\n"),
        ("list.json", b'{"domains": []}'),
    ],
)
def test_a_policy_file_without_any_domain_is_refused(tmp_path: Path, name: str, text: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(text)
    with pytest.raises(PolicyError, match=f"{name}: config file cannot have empty domain"):
        load_policy_files([path])
    assert load_policy_files([]) == {}  # no policy files at all: a gateway without domains
