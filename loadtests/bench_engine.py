"""Engine-level benchmark: Lockgate's engine against redis-py's Lock and limits, on one Valkey.

Four workloads run one after another in this process on uvloop, against the same Valkey
(appendfsync always, bound to 127.0.0.1), each after a short warm-up and an empty database:

  engine_lock_pairs    64 callers, Acquire + Release on their own lock names
  redis_py_lock_pairs  64 callers, redis.asyncio Lock acquire + release on their own names
  engine_checks        64 callers, RateCheck on keys drawn uniformly from 10,000
  limits_checks        64 callers, limits' async FixedWindowRateLimiter.hit over 10,000 keys

No HTTP: this measures the engine (sequencing + group commit) against one round trip per
command. Client and server share the machine, so the figures are relative, not absolute.

    python -m loadtests.bench_engine [--seconds 10] [--quick]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import limits
import limits.aio.storage
import limits.aio.strategies
import redis.asyncio as redis
import uvloop
from redis.utils import HIREDIS_AVAILABLE

from lockgate_server.core.ops import Acquire, Algorithm, Granted, RateCheck, RateDecision, Release, Released
from lockgate_server.engine.node import Engine, new_lease_id
from lockgate_server.storage.embedded import EmbeddedValkey
from lockgate_server.storage.log import RedisLog

from .common import (
    CpuWatch,
    Measurement,
    Operation,
    Timing,
    Watch,
    apply_timing,
    bench_parser,
    filesystem_of,
    machine_facts,
    percentile,
    run_closed_loop,
)

TASKS = 64
KEYS = 10_000
NAMES_PER_TASK = 100
LOCK_TTL_MS = 10_000
RATE_LIMIT = 1000  # per minute: high enough that nearly every check is allowed
RATE_PERIOD_MS = 60_000
# Same algorithm as the limits side, so the comparison is like for like.
ENGINE_RATE_ALGORITHM: Algorithm = "fixed_window"
NAMESPACE = "bench"
TARGET_RATIO = 10.0
RESULTS_PATH = Path(__file__).parent / "results" / "engine.json"


def lock_name(task: int, iteration: int) -> str:
    return f"job-{task}-{iteration % NAMES_PER_TASK}"


def key_pickers() -> list[random.Random]:
    """One seeded generator per caller: uniform keys, the same sequence on every run."""
    return [random.Random(task) for task in range(TASKS)]


# --- engine workloads -------------------------------------------------------------------------
class CommitWatch:
    """Engine commits and their round trips (send to reply, perf_counter) inside the measured window only."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.recording = False
        self.commit_seconds: list[float] = []
        self.commit_shards: list[int] = []
        self.opened = (0, 0)
        self.closed = (0, 0)
        engine.stats.commit_observers.append(self._observe)

    def _observe(self, ops: int, shards: int, seconds: float) -> None:
        if self.recording:
            self.commit_seconds.append(seconds)
            self.commit_shards.append(shards)

    async def open(self) -> None:
        self.recording = True
        self.opened = (self.engine.stats.commits, self.engine.stats.ops_committed)

    async def close(self) -> None:
        self.recording = False
        self.closed = (self.engine.stats.commits, self.engine.stats.ops_committed)

    def figures(self, window_s: float) -> dict[str, object]:
        commits = self.closed[0] - self.opened[0]
        ops = self.closed[1] - self.opened[1]
        round_trips = sorted(self.commit_seconds)
        shards = self.commit_shards
        return {
            "commits": commits,
            "ops_committed": ops,
            "ops_per_commit": round(ops / commits, 2) if commits else 0.0,
            "commits_per_s": round(commits / window_s, 1),
            "commit_cycle_ms": round(1000 * window_s / commits, 3) if commits else 0.0,
            "commit_round_trip_p50_ms": round(percentile(round_trips, 0.50) * 1000, 3),
            "commit_round_trip_p99_ms": round(percentile(round_trips, 0.99) * 1000, 3),
            "shards_per_commit": round(sum(shards) / len(shards), 1) if shards else 0.0,
            "largest_commit": self.engine.stats.largest_commit,
            "failed_commits": self.engine.stats.failed_commits,
            "snapshots": self.engine.snapshots.stats.taken,
        }


def engine_lock_pairs(engine: Engine) -> Operation:
    async def pair(task: int, iteration: int) -> bool:
        name = lock_name(task, iteration)
        acquire = Acquire(kind="lock", namespace=NAMESPACE, name=name, lease_id=new_lease_id(), ttl_ms=LOCK_TTL_MS)
        granted, _ = await engine.execute(acquire)
        if not isinstance(granted, Granted):
            return False
        release = Release(kind="lock", namespace=NAMESPACE, name=name, lease_id=granted.lease_id)
        released, _ = await engine.execute(release)
        return isinstance(released, Released)

    return pair


def engine_checks(engine: Engine) -> Operation:
    pickers = key_pickers()

    async def check(task: int, iteration: int) -> bool:
        command = RateCheck(
            namespace=NAMESPACE,
            name=f"key-{pickers[task].randrange(KEYS)}",
            limit=RATE_LIMIT,
            period_ms=RATE_PERIOD_MS,
            algorithm=ENGINE_RATE_ALGORITHM,
        )
        decision, _ = await engine.execute(command)
        return isinstance(decision, RateDecision) and decision.allowed

    return check


async def run_engine(
    name: str,
    operation_for: Callable[[Engine], Operation],
    valkey: EmbeddedValkey,
    args: argparse.Namespace,
    cpu: Watch,
) -> Measurement:
    """A fresh engine on an empty database, so no workload replays another's log."""
    engine = Engine(RedisLog(valkey.url))
    await engine.start()
    watch = CommitWatch(engine)
    try:
        measurement = await run_closed_loop(
            name, operation_for(engine), tasks=TASKS, warmup_s=args.warmup, seconds=args.seconds, watches=[cpu, watch]
        )
    finally:
        await engine.stop()
    measurement.extra["engine"] = watch.figures(measurement.seconds)
    return measurement


async def run_engine_lock_pairs(valkey: EmbeddedValkey, args: argparse.Namespace, cpu: Watch) -> Measurement:
    return await run_engine("engine_lock_pairs", engine_lock_pairs, valkey, args, cpu)


async def run_engine_checks(valkey: EmbeddedValkey, args: argparse.Namespace, cpu: Watch) -> Measurement:
    return await run_engine("engine_checks", engine_checks, valkey, args, cpu)


# --- baselines ------------------------------------------------------------------------------
async def run_redis_py_lock_pairs(valkey: EmbeddedValkey, args: argparse.Namespace, cpu: Watch) -> Measurement:
    client = redis.Redis.from_url(valkey.url, max_connections=TASKS)
    try:

        async def pair(task: int, iteration: int) -> bool:
            lock = client.lock(lock_name(task, iteration), timeout=LOCK_TTL_MS / 1000)
            if not await lock.acquire():
                return False
            await lock.release()
            return True

        return await run_closed_loop(
            "redis_py_lock_pairs", pair, tasks=TASKS, warmup_s=args.warmup, seconds=args.seconds, watches=[cpu]
        )
    finally:
        await client.aclose()


async def run_limits_checks(valkey: EmbeddedValkey, args: argparse.Namespace, cpu: Watch) -> Measurement:
    # limits defaults to coredis; redis-py (with hiredis) is the client the engine uses too.
    storage = limits.aio.storage.RedisStorage(
        f"async+redis://127.0.0.1:{valkey.port}", implementation="redispy", max_connections=TASKS
    )
    limiter = limits.aio.strategies.FixedWindowRateLimiter(storage)
    item = limits.RateLimitItemPerMinute(RATE_LIMIT)
    pickers = key_pickers()
    try:
        assert await storage.check(), "limits cannot reach Valkey"

        async def check(task: int, iteration: int) -> bool:
            return await limiter.hit(item, f"key-{pickers[task].randrange(KEYS)}")

        return await run_closed_loop(
            "limits_checks", check, tasks=TASKS, warmup_s=args.warmup, seconds=args.seconds, watches=[cpu]
        )
    finally:
        client: Any = storage.bridge.storage  # type: ignore[attr-defined]
        await client.aclose()


Workload = Callable[[EmbeddedValkey, argparse.Namespace, Watch], Awaitable[Measurement]]
WORKLOADS: list[Workload] = [run_engine_lock_pairs, run_redis_py_lock_pairs, run_engine_checks, run_limits_checks]


# --- the run ----------------------------------------------------------------------------------
async def store_facts(admin: Any, valkey: EmbeddedValkey) -> dict[str, object]:
    info = await admin.info("server")
    config = await admin.config_get("appendfsync")
    return {
        "valkey_version": info.get("valkey_version") or info.get("redis_version"),
        "appendfsync": config.get("appendfsync"),
        "appendonly": (await admin.config_get("appendonly")).get("appendonly"),
        "bind": "127.0.0.1",
        "data_dir_filesystem": filesystem_of(valkey.data_dir),
    }


async def run_all(valkey: EmbeddedValkey, args: argparse.Namespace) -> tuple[dict[str, object], dict[str, Measurement]]:
    admin = redis.Redis.from_url(valkey.url, decode_responses=True)
    try:
        store = await store_facts(admin, valkey)
        if store["appendfsync"] != "always":
            raise SystemExit(f"Valkey reports appendfsync={store['appendfsync']!r}, expected 'always'")
        results: dict[str, Measurement] = {}
        for workload in WORKLOADS:
            await admin.flushall()
            cpu = CpuWatch(admin)
            measurement = await workload(valkey, args, cpu)
            measurement.extra.update(cpu.figures())
            results[measurement.name] = measurement
            print(f"  {measurement.name:<20} {measurement.ops_per_s:>12,.0f} ops/s", flush=True)
        await admin.flushall()
    finally:
        await admin.aclose()
    return store, results


def ratio(numerator: Measurement, denominator: Measurement) -> float:
    return round(numerator.ops_per_s / denominator.ops_per_s, 2) if denominator.ops_per_s else float("inf")


def report(
    machine: dict[str, object], store: dict[str, object], results: dict[str, Measurement], args: argparse.Namespace
) -> dict[str, Any]:
    lock_ratio = ratio(results["engine_lock_pairs"], results["redis_py_lock_pairs"])
    check_ratio = ratio(results["engine_checks"], results["limits_checks"])
    return {
        "benchmark": "engine",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(args.started)),
        "config": {
            "tasks": TASKS,
            "seconds_per_workload": args.seconds,
            "warmup_s": args.warmup,
            "lock_names_per_task": NAMES_PER_TASK,
            "lock_ttl_ms": LOCK_TTL_MS,
            "rate_keys": KEYS,
            "rate_limit": f"{RATE_LIMIT} per {RATE_PERIOD_MS} ms",
            "engine_rate_algorithm": ENGINE_RATE_ALGORITHM,
            "event_loop": f"uvloop {version('uvloop')}",
            "units": "lock workloads count acquire+release pairs; check workloads count single checks",
        },
        "machine": machine,
        "store": store,
        "clients": {
            "redis_py": version("redis"),
            "hiredis": bool(HIREDIS_AVAILABLE),
            "limits": version("limits"),
            "limits_implementation": "redispy",
        },
        "workloads": {name: measurement.summary() for name, measurement in results.items()},
        "ratios": {
            "lock_pairs_engine_over_redis_py": lock_ratio,
            "checks_engine_over_limits": check_ratio,
        },
        "targets": {
            "ratio_min": TARGET_RATIO,
            "lock_pairs_met": lock_ratio >= TARGET_RATIO,
            "checks_met": check_ratio >= TARGET_RATIO,
        },
        "note": (
            "Client and server share the machine (Valkey is a local child process on 127.0.0.1), "
            "so they compete for the same CPUs; compare the ratios, not the absolute figures."
        ),
    }


def print_table(document: dict[str, Any]) -> None:
    machine, store = document["machine"], document["store"]
    print()
    print(
        f"Lockgate engine benchmark: {document['config']['tasks']} tasks, "
        f"{document['config']['seconds_per_workload']} s per workload, {document['config']['event_loop']}"
    )
    print(
        f"machine: {machine['cpu_count']} CPUs, {machine['cpu_model']}, Python {machine['python']}; "
        f"Valkey {store['valkey_version']}, appendfsync={store['appendfsync']} on {store['data_dir_filesystem']}"
    )
    print()
    header = (
        f"{'workload':<22}{'ops/s':>12}{'p50 ms':>10}{'p99 ms':>10}{'ops':>11}{'refused':>9}"
        f"{'client CPU':>12}{'server CPU':>12}"
    )
    print(header)
    print("-" * len(header))
    for name, row in document["workloads"].items():
        print(
            f"{name:<22}{row['ops_per_s']:>12,.0f}{row['p50_ms']:>10.3f}{row['p99_ms']:>10.3f}"
            f"{row['ops']:>11,}{row['refused']:>9,}"
            f"{row.get('client_cpu_pct', 0):>11.0f}%{row.get('server_cpu_pct', 0):>11.0f}%"
        )
    print()
    for name, row in document["workloads"].items():
        if "engine" in row:
            engine = row["engine"]
            print(
                f"{name}: {engine['commits']:,} commits ({engine['commits_per_s']:,.0f}/s, one per "
                f"{engine['commit_cycle_ms']:.2f} ms), {engine['ops_per_commit']} ops and "
                f"{engine['shards_per_commit']} shards per commit; commit round trip p50 "
                f"{engine['commit_round_trip_p50_ms']:.3f} ms, p99 {engine['commit_round_trip_p99_ms']:.3f} ms"
            )
    ratios, targets = document["ratios"], document["targets"]
    print()
    print(
        f"lock pairs/s engine / redis-py: {ratios['lock_pairs_engine_over_redis_py']:>7.2f}x  "
        f"(target >= {targets['ratio_min']:g}x: {'met' if targets['lock_pairs_met'] else 'NOT met'})"
    )
    print(
        f"checks/s     engine / limits:   {ratios['checks_engine_over_limits']:>7.2f}x  "
        f"(target >= {targets['ratio_min']:g}x: {'met' if targets['checks_met'] else 'NOT met'})"
    )
    print(f"note: {document['note']}")


TIMING = Timing(seconds=10.0, warmup=1.0, quick_seconds=2.0, quick_warmup=0.5)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = bench_parser("loadtests.bench_engine", __doc__, RESULTS_PATH, TIMING)
    return apply_timing(parser.parse_args(argv), TIMING)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.started = time.time()
    machine = machine_facts()  # before the run, so the load average is what the run started with
    with tempfile.TemporaryDirectory(prefix="lockgate-bench-") as folder, EmbeddedValkey(folder) as valkey:
        print(f"Valkey on 127.0.0.1:{valkey.port}, data in {folder}; {4 * (args.warmup + args.seconds):.0f} s to go")
        store, results = uvloop.run(run_all(valkey, args))
    document = report(machine, store, results, args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    print_table(document)
    print(f"results written to {args.output}")


if __name__ == "__main__":
    main()
