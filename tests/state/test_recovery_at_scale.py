"""Recovery of a node holding 100,000 objects (the 1,000,000 figure is `make bench-state`'s)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from lockgate_server.core.ops import (
    Acquire,
    CounterAdd,
    CounterGet,
    CounterValue,
    Inspect,
    LeaseInfo,
    RateCheck,
    RateDecision,
)
from lockgate_server.engine.node import Engine, new_lease_id

RATE_KEYS = 80_000
LOCKS = 10_000
COUNTERS = 10_000
HOUR_MS = 3_600_000


async def run_all(engine: Engine, commands: list[object], concurrency: int = 256) -> list[object]:
    results: list[object] = [None] * len(commands)
    positions = iter(range(len(commands)))

    async def worker() -> None:
        for index in positions:
            results[index] = (await engine.execute(commands[index]))[0]  # type: ignore[arg-type]

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


async def test_a_node_with_100_000_objects_recovers_all_of_them(engines: Any) -> None:
    config = engines.config(shard_count=16, snapshot_every_entries=2_000)
    engine = await engines.start(config)
    commands: list[object] = [
        RateCheck(namespace="gw", name=f"ip:{index}", limit=100, period_ms=HOUR_MS, cost=1 + index % 3)
        for index in range(RATE_KEYS)
    ]
    commands += [
        Acquire(kind="lock", namespace="jobs", name=f"job-{index}", lease_id=new_lease_id(), ttl_ms=HOUR_MS)
        for index in range(LOCKS)
    ]
    commands += [CounterAdd(namespace="jobs", name=f"count-{index}", delta=index + 1) for index in range(COUNTERS)]
    results = await run_all(engine, commands)
    await engine.snapshots.wait()
    assert engine.snapshots.stats.taken > 0, "the log tail should have been bounded by snapshots"
    tokens = {cmd.name: result.token for cmd, result in zip(commands, results, strict=True) if isinstance(cmd, Acquire)}  # type: ignore[attr-defined]
    objects_before = {ns: engine.objects_in(ns) for ns in ("gw", "jobs")}
    await engines.stop(engine)

    started = time.perf_counter()
    recovered = await engines.start(config)
    ready_after_s = time.perf_counter() - started
    print(f"recovered {sum(objects_before.values())} objects in {ready_after_s:.2f} s")

    assert {ns: recovered.objects_in(ns) for ns in ("gw", "jobs")} == objects_before
    assert objects_before == {"gw": RATE_KEYS, "jobs": LOCKS + COUNTERS}
    for index in range(0, LOCKS, 997):
        info, _ = await recovered.execute(Inspect(kind="lock", namespace="jobs", name=f"job-{index}"))
        assert isinstance(info, LeaseInfo) and info.held and info.token == tokens[f"job-{index}"]
    for index in range(0, COUNTERS, 991):
        value, _ = await recovered.execute(CounterGet(namespace="jobs", name=f"count-{index}"))
        assert value == CounterValue(value=index + 1)
    for index in range(0, RATE_KEYS, 7919):
        peek, _ = await recovered.execute(
            RateCheck(namespace="gw", name=f"ip:{index}", limit=100, period_ms=HOUR_MS, cost=0)
        )
        assert isinstance(peek, RateDecision) and peek.remaining == 100 - (1 + index % 3)
