"""`wildcards: anywhere` matches in linear time: a pattern built to backtrack cannot stall the
event loop every shard shares, and the answers are those of a regular expression."""

from __future__ import annotations

import re
import time

from hypothesis import given
from hypothesis import strategies as st

from lockgate_server.gateway.loader import policy_from_mapping
from lockgate_server.gateway.matcher import CompiledDomain, glob_matches


def anywhere(value: str) -> CompiledDomain:
    descriptor = {"key": "path", "value": value, "rate_limit": {"unit": "second", "requests_per_unit": 1}}
    mapping = {"domain": "w", "wildcards": "anywhere", "descriptors": [descriptor]}
    return CompiledDomain(policy_from_mapping(mapping, source="test"))


def test_a_backtracking_pattern_is_decided_at_once() -> None:
    domain = anywhere("*a*a*a*a*a*a*b")
    started = time.perf_counter()
    for length in (400, 4000, 40_000):
        assert domain.match([("path", "a" * length)]) is None
        assert domain.match([("path", "a" * length + "b")]) is not None
    assert time.perf_counter() - started < 0.5  # the regex took 48 s on the first value alone


def test_the_parts_anchor_at_both_ends_and_never_overlap() -> None:
    def matches(pattern: str, actual: str) -> bool:
        return glob_matches(pattern.split("*"), actual)

    assert matches("ab*ba", "aba") is False  # the prefix and suffix may not share characters
    assert matches("ab*ba", "abba")
    assert matches("*", "") and matches("**", "x")
    assert matches("a*b*c", "abc") and not matches("a*b*c", "acb")
    assert matches("*.png", "x.png") and not matches("*.png", "x.png/")


@given(
    pattern=st.text(alphabet="ab*", max_size=8).filter(lambda text: "*" in text),
    actual=st.text(alphabet="ab", max_size=10),
)
def test_the_same_answers_as_a_regular_expression(pattern: str, actual: str) -> None:
    regex = re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)
    assert glob_matches(pattern.split("*"), actual) == (regex.fullmatch(actual) is not None)
