"""Prometheus series. Labels are per route and outcome, never per key or name."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..engine.node import Engine
from .tally import CounterTally, HistogramTally

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.ops = CounterTally(
            "lockgate_ops", "Operations by kind, operation and outcome", ["kind", "op", "outcome"], self.registry
        )
        self.latency = HistogramTally(
            "lockgate_op_latency_seconds",
            "Time from request decoded to answer ready, by kind and operation",
            ["kind", "op"],
            _LATENCY_BUCKETS,
            self.registry,
        )
        self.http_requests = CounterTally(
            "lockgate_http_requests", "HTTP requests to the API, by route", ["route"], self.registry
        )
        self.relayed = Counter(
            "lockgate_relayed_requests",
            "Requests this node, standing by, relayed to the active node, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.commit_ops = Histogram(
            "lockgate_commit_batch_ops", "Operations carried by one commit (group commit)", buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.commit_latency = Histogram(
            "lockgate_append_latency_seconds", "One fenced append round trip to the store", buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.inbox = Gauge(
            "lockgate_inbox_depth", "Ops applied, waiting for their commit to be durable", registry=self.registry
        )
        self.waiters = Gauge("lockgate_waiters", "Callers queued for a lock or semaphore", registry=self.registry)
        self.shards = Gauge("lockgate_shards_owned", "Shards this node owns and serves", registry=self.registry)
        self.expirations = Gauge(
            "lockgate_expiry_sweeps", "Expiry ops the timer has sequenced (counter)", registry=self.registry
        )
        self.gateway_decisions = CounterTally(
            "lockgate_gateway_decisions",
            "Gateway checks (HTTP check, /json, gRPC) by domain and outcome",
            ["domain", "outcome"],
            self.registry,
        )
        self.gateway_limit_decisions = CounterTally(
            "lockgate_gateway_limit_decisions",
            "Gateway limits matched, by domain, configured limit and outcome (ok, over_limit, shadow_over_limit)",
            ["domain", "limit", "outcome"],
            self.registry,
        )
        self._labels: dict[str, tuple[str, str]] = {}  # "locks.acquire" -> ("locks", "acquire")

    def bind(self, engine: Engine) -> None:
        self.inbox.set_function(engine.pending_ops)
        self.waiters.set_function(engine.waiting_callers)
        self.shards.set_function(
            lambda: sum(1 for status in engine.slot_statuses().values() if status.value == "ready")
        )
        self.expirations.set_function(lambda: engine.stats.expirations)
        engine.stats.commit_observers.append(self._on_commit)

    def _on_commit(self, ops: int, shards: int, seconds: float) -> None:
        self.commit_ops.observe(ops)
        self.commit_latency.observe(seconds)

    def observe(self, operation: str, outcome: str, seconds: float, count: int = 1) -> None:
        labels = self._labels.get(operation)
        if labels is None:
            kind, _, op = operation.partition(".")
            labels = self._labels[operation] = (kind, op)
        self.ops.inc((*labels, outcome), count)
        self.latency.observe(labels, seconds, count)
