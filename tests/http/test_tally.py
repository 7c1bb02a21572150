"""The lock-free tallies expose what prometheus_client's own Counter and Histogram would."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from lockgate_server.api.tally import CounterTally, HistogramTally

BOUNDS = (0.001, 0.01, 0.1, 1.0)
# On a bound, below the first, between two, past the last: every bucket rule is exercised.
OBSERVED = [("locks", 0.01), ("locks", 0.0005), ("locks", 0.05), ("locks", 3.0), ("counters", 1.0)]


def samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    exposed = generate_latest(registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(exposed)
        for sample in family.samples
        if not sample.name.endswith("_created")  # prometheus_client's own timestamps; we keep none
    }


def test_histogram_matches_prometheus_client() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    tally = HistogramTally("latency_seconds", "doc", ["kind"], BOUNDS, ours)
    reference = Histogram("latency_seconds", "doc", ["kind"], buckets=BOUNDS, registry=theirs)
    for kind, seconds in OBSERVED:
        tally.observe((kind,), seconds)
        reference.labels(kind).observe(seconds)
    assert samples(ours) == samples(theirs)
    assert samples(ours)[("latency_seconds_bucket", frozenset({("kind", "locks"), ("le", "0.01")}))] == 2


def test_counter_matches_prometheus_client() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    tally = CounterTally("ops", "doc", ["op", "outcome"], ours)
    reference = Counter("ops", "doc", ["op", "outcome"], registry=theirs)
    for labels, amount in [(("acquire", "ok"), 1), (("acquire", "ok"), 3), (("release", "held"), 1)]:
        tally.inc(labels, amount)
        reference.labels(*labels).inc(amount)
    assert samples(ours) == samples(theirs)
    assert samples(ours)[("ops_total", frozenset({("op", "acquire"), ("outcome", "ok")}))] == 4
