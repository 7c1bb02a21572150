"""State at scale: bytes per object, snapshot cost, and recovery time (`make bench-state`).

1. Bytes per object by kind, in separate child processes so one kind's garbage does not
   colour another's: RSS growth over N objects, and tracemalloc per object.
2. Through the engine, against Valkey with appendfsync always: 1,000,000 rate-limit keys,
   100,000 held locks and 100,000 counters; then a snapshot of every shard while a probe
   keeps sending requests (the longest request pause is what a snapshot costs a caller);
   then a new engine recovers it all (time from start to ready).
Writes loadtests/results/state.json.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import redis
import uvloop

from lockgate_server.core.ops import Acquire, CounterAdd, RateCheck
from lockgate_server.core.shard_state import ShardState
from lockgate_server.engine.node import Engine, EngineConfig, new_lease_id
from lockgate_server.storage.embedded import EmbeddedValkey
from lockgate_server.storage.log import RedisLog, shard_keys

from .common import machine_facts, percentile

RESULTS = Path(__file__).parent / "results" / "state.json"
NOW_MS = 1_800_000_000_000
HOUR_MS = 3_600_000


def command_for(kind: str, index: int) -> Any:
    if kind == "ratelimit":
        return RateCheck(namespace="gateway", name=f"ip:10.{index >> 16}.{(index >> 8) & 255}.{index & 255}",
                         limit=100, period_ms=HOUR_MS)  # fmt: skip
    if kind == "counter":
        return CounterAdd(namespace="jobs", name=f"counter-{index}", delta=1)
    if kind == "held_lock":
        return Acquire(kind="lock", namespace="jobs", name=f"job-{index}", lease_id=new_lease_id(), ttl_ms=HOUR_MS)
    if kind == "unheld_lock":  # acquired and released: the object carries nothing and is dropped
        return Acquire(kind="lock", namespace="jobs", name=f"job-{index}", lease_id=new_lease_id(), ttl_ms=1)
    raise ValueError(kind)


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def measure_kind(kind: str, count: int, use_tracemalloc: bool) -> float:
    """Bytes per object of one kind in one shard state (run in a fresh process)."""
    state = ShardState(0)
    gc.collect()
    if use_tracemalloc:
        tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0] if use_tracemalloc else rss_bytes()
    for index in range(count):
        state.apply(command_for(kind, index), NOW_MS)
    if kind == "unheld_lock":
        state.apply(command_for("counter", 0), NOW_MS + 10)  # any op: settles nothing by itself
        from lockgate_server.core.ops import Expire

        state.apply(Expire(until_ms=NOW_MS + 10), NOW_MS + 10)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0] if use_tracemalloc else rss_bytes()
    return (after - before) / count


def bytes_per_object(count: int) -> dict[str, dict[str, float]]:
    figures: dict[str, dict[str, float]] = {}
    for kind in ("ratelimit", "counter", "held_lock", "unheld_lock"):
        figures[kind] = {}
        for method in ("rss", "tracemalloc"):
            output = subprocess.run(
                [sys.executable, "-m", "loadtests.bench_state", "--measure", kind, str(count), method],
                check=True, capture_output=True, text=True,
            ).stdout  # fmt: skip
            figures[kind][method] = round(float(output.strip()), 1)
    return figures


async def fill(engine: Engine, commands: list[Any], concurrency: int = 256) -> float:
    started = time.perf_counter()
    queue = iter(commands)

    async def worker() -> None:
        for command in queue:
            await engine.execute(command)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


async def snapshot_everything(engine: Engine) -> dict[str, float]:
    """Snapshot every shard while a probe measures how long requests stall."""
    pauses: list[float] = []
    stop = asyncio.Event()

    async def probe() -> None:
        index = 0
        while not stop.is_set():
            started = time.perf_counter()
            await engine.execute(CounterAdd(namespace="probe", name=f"p{index % 64}", delta=1))
            pauses.append(time.perf_counter() - started)
            index += 1

    probing = asyncio.ensure_future(probe())
    await asyncio.sleep(0.5)
    baseline = len(pauses)
    started = time.perf_counter()
    slots = list(engine._slots.values())
    while not all(slot.state.lsn == slot.sealed_lsn for slot in slots):
        await asyncio.sleep(0)
    engine._snapshot(slots, engine._now())  # the same call the committer makes
    await engine.snapshots.wait()
    snapshot_s = time.perf_counter() - started
    await asyncio.sleep(0.2)
    stop.set()
    await probing
    during = sorted(pauses[baseline:])
    before = sorted(pauses[:baseline])
    return {
        "snapshot_seconds": round(snapshot_s, 3),
        "fork_pause_ms": round(engine.snapshots.stats.longest_pause_ms, 2),
        "longest_request_during_snapshot_ms": round(during[-1] * 1000, 2) if during else 0.0,
        "p99_request_during_snapshot_ms": round(percentile(during, 0.99) * 1000, 2),
        "p99_request_before_snapshot_ms": round(percentile(before, 0.99) * 1000, 2),
    }


async def run_engine_part(valkey: EmbeddedValkey, args: argparse.Namespace) -> dict[str, Any]:
    config = EngineConfig(snapshot_every_entries=10**9, snapshot_every_ms=10**9)  # snapshots on our cue
    engine = Engine(RedisLog(valkey.url), config)
    await engine.start()
    commands = [command_for("ratelimit", index) for index in range(args.rate_keys)]
    commands += [command_for("held_lock", index) for index in range(args.locks)]
    commands += [command_for("counter", index) for index in range(args.counters)]
    fill_s = await fill(engine, commands)
    objects = sum(sum(slot.state.objects_per_namespace.values()) for slot in engine._slots.values())
    snapshot = await snapshot_everything(engine)
    client = redis.Redis.from_url(valkey.url)
    snapshot_bytes = sum(client.hstrlen(shard_keys(shard)[3], "data") for shard in range(engine.config.shard_count))
    await engine.stop()

    started = time.perf_counter()
    recovered = Engine(RedisLog(valkey.url), config)
    await recovered.start()
    ready_s = time.perf_counter() - started
    recovered_objects = sum(sum(slot.state.objects_per_namespace.values()) for slot in recovered._slots.values())
    await recovered.stop()
    return {
        "objects": objects,
        "fill_seconds": round(fill_s, 2),
        "fill_ops_per_s": round(len(commands) / fill_s),
        "snapshot_bytes": snapshot_bytes,
        **snapshot,
        "recovery_seconds_to_ready": round(ready_s, 2),
        "recovered_objects": recovered_objects,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate-keys", type=int, default=1_000_000)
    parser.add_argument("--locks", type=int, default=100_000)
    parser.add_argument("--counters", type=int, default=100_000)
    parser.add_argument("--measure", nargs=3, metavar=("KIND", "COUNT", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        kind, count, method = args.measure
        print(measure_kind(kind, int(count), method == "tracemalloc"))
        return
    per_object = bytes_per_object(args.rate_keys)
    print(json.dumps({"bytes_per_object": per_object}, indent=2))
    with tempfile.TemporaryDirectory() as folder, EmbeddedValkey(folder) as valkey:
        engine_part = uvloop.run(run_engine_part(valkey, args))
    document = {
        "machine": machine_facts(),
        "note": "client, engine and Valkey (appendfsync always) share the machine",
        "bytes_per_object": per_object,
        "targets_bytes": {"ratelimit": 250, "counter": 250, "unheld_lock": 400},
        "engine": engine_part,
        "targets": {"longest_pause_ms": 20, "recovery_seconds": 5},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(document, indent=2))
    print(json.dumps(document["engine"], indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
