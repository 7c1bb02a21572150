"""The SDK end to end (`make bench-sdk`): AsyncClient -> HTTP server -> Valkey, vs redis-py and limits.

64 async tasks in one process through one AsyncClient: uncontended lock acquire+release
pairs and rate-limit checks over 10,000 keys. Then, against the same Valkey
(appendfsync always), redis-py's asyncio Lock and limits' FixedWindowRateLimiter, as in
the engine benchmark. The HTTP client choice is measured too: the same single checks
through httpx, through our stream transport without batching, and with batching.
Writes loadtests/results/sdk.json.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as redis
import uvloop
from lockgate import AsyncClient

from lockgate_server.harness import ServerProcess
from lockgate_server.storage.embedded import EmbeddedValkey

from .bench_engine import run_limits_checks, run_redis_py_lock_pairs
from .common import CpuWatch, Measurement, Timing, apply_timing, bench_parser, machine_facts, run_closed_loop

RESULTS = Path(__file__).parent / "results" / "sdk.json"
TASKS = 64
KEYS = 10_000
TIMING = Timing(seconds=10.0, warmup=1.0, quick_seconds=2.0, quick_warmup=0.5)


async def sdk_workloads(url: str, args: argparse.Namespace) -> list[Measurement]:
    results = []
    async with AsyncClient(url, namespace="bench", max_connections=TASKS) as client:

        async def pair(task: int, iteration: int) -> bool:
            context = client.lock(f"job-{task}-{iteration % 100}", ttl=10, wait=0, auto_renew=False)
            await context.acquire()
            await context.release()
            return True

        results.append(await run_closed_loop("sdk_lock_pairs", pair, tasks=TASKS, warmup_s=args.warmup,
                                             seconds=args.seconds))  # fmt: skip
        pickers = [random.Random(task) for task in range(TASKS)]

        async def check(task: int, iteration: int) -> bool:
            decision = await client.rate_limit(f"key-{pickers[task].randrange(KEYS)}", limit=1000, per=60)
            return decision.allowed

        results.append(await run_closed_loop("sdk_checks", check, tasks=TASKS, warmup_s=args.warmup,
                                             seconds=args.seconds))  # fmt: skip
        results[-1].extra["http_requests"] = client.requests_sent
    return results


async def transport_comparison(url: str, args: argparse.Namespace) -> list[Measurement]:
    """The same single check through three HTTP clients: why the SDK has its own."""
    body = b'{"limit":1000000,"period_ms":60000}'
    pickers = [random.Random(task) for task in range(TASKS)]
    results = []
    limits = httpx.Limits(max_connections=TASKS, max_keepalive_connections=TASKS)
    async with httpx.AsyncClient(base_url=url, limits=limits) as client:

        async def via_httpx(task: int, iteration: int) -> bool:
            key = pickers[task].randrange(KEYS)
            answer = await client.post(f"/v1/namespaces/bench/ratelimits/k{key}/check", content=body)
            return answer.status_code == 200

        results.append(await run_closed_loop("httpx_checks", via_httpx, tasks=TASKS, warmup_s=args.warmup,
                                             seconds=args.seconds))  # fmt: skip
    for batching in (False, True):
        async with AsyncClient(url, namespace="bench", batching=batching, max_connections=TASKS) as sdk:

            async def via_sdk(task: int, iteration: int, sdk: AsyncClient = sdk) -> bool:
                decision = await sdk.rate_limit(f"k{pickers[task].randrange(KEYS)}", limit=1_000_000, per=60)
                return decision.allowed

            name = "sdk_transport_batched_checks" if batching else "sdk_transport_unbatched_checks"
            results.append(await run_closed_loop(name, via_sdk, tasks=TASKS, warmup_s=args.warmup,
                                                 seconds=args.seconds))  # fmt: skip
    return results


async def baselines(valkey: EmbeddedValkey, args: argparse.Namespace) -> list[Measurement]:
    admin = redis.Redis.from_url(valkey.url)
    results = []
    try:
        for workload in (run_redis_py_lock_pairs, run_limits_checks):
            await admin.flushall()
            cpu = CpuWatch(admin)
            measurement = await workload(valkey, args, cpu)
            measurement.extra.update(cpu.figures())
            results.append(measurement)
    finally:
        await admin.aclose()
    return results


def main(argv: list[str] | None = None) -> None:
    args = apply_timing(bench_parser("loadtests.bench_sdk", __doc__, RESULTS, TIMING).parse_args(argv), TIMING)
    measurements: dict[str, Measurement] = {}
    with tempfile.TemporaryDirectory() as folder, EmbeddedValkey(Path(folder) / "valkey") as valkey:
        env = {"LOCKGATE_REDIS_URL": valkey.url, "LOCKGATE_LOG_LEVEL": "warning"}
        server = ServerProcess(Path(folder) / "server", env=env, shards=64).start()
        try:
            for measurement in uvloop.run(sdk_workloads(server.url, args)):
                measurements[measurement.name] = measurement
            for measurement in uvloop.run(transport_comparison(server.url, args)):
                measurements[measurement.name] = measurement
        finally:
            server.stop()
        for measurement in uvloop.run(baselines(valkey, args)):
            measurements[measurement.name] = measurement

    def rate(name: str) -> float:
        return measurements[name].ops_per_s

    document: dict[str, Any] = {
        "machine": machine_facts(),
        "note": "client, server and Valkey (appendfsync always) share the machine; one server worker",
        "tasks": TASKS,
        "results": {name: m.summary() for name, m in measurements.items()},
        "ratios": {
            "sdk_lock_pairs_vs_redis_py": round(rate("sdk_lock_pairs") / rate("redis_py_lock_pairs"), 2),
            "sdk_checks_vs_limits": round(rate("sdk_checks") / rate("limits_checks"), 2),
            "sdk_transport_unbatched_vs_httpx": round(rate("sdk_transport_unbatched_checks") / rate("httpx_checks"), 2),
        },
        "targets": {"sdk_lock_pairs_vs_redis_py": 2.0, "sdk_checks_vs_limits": 2.0},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2))
    print(f"{'workload':<32}{'ops/s':>12}{'p50 ms':>10}{'p99 ms':>10}")
    for name, measurement in measurements.items():
        summary = measurement.summary()
        print(f"{name:<32}{summary['ops_per_s']:>12,.0f}{summary['p50_ms']:>10.2f}{summary['p99_ms']:>10.2f}")
    for name, value in document["ratios"].items():
        print(f"{name}: {value}x")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
