"""Gateway benchmark: the HTTP check endpoint and the Envoy RLS gRPC API, against `limits`.

One Valkey (appendfsync always, 127.0.0.1) serves all three, one after another:

  limits_checks   the `limits` library's async FixedWindowRateLimiter.hit, in this process on
                  uvloop, 64 callers (its database 1, so it never touches Lockgate's keys)
  check_endpoint  wrk, 64 connections, GET /check/bench with X-Key drawn from 10,000 keys
                  Zipf-like (loadtests/gateway/zipf_keys.lua), against `python -m lockgate_server`
                  (one worker, as a user starts it)
  grpc            envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit on the same
                  server, from a lean grpcio asyncio driver (stub generated from our .proto),
                  same keys and distribution
  grpc transport  the same driver against a server that only answers: grpcio's asyncio server
  alone           and ours (loadtests/grpc_transport.py), and the CPU each spends per call

Every side applies the same limit: 1000 per minute per key in fixed windows, so the hot keys
of the Zipf draw are denied part of the time on every side (a denial counts as a check done).
Client and server share the machine's cores, so compare the ratios, not the absolute figures.

    python -m loadtests.bench_gateway [--seconds 10] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import multiprocessing
import os
import random
import re
import shutil
import subprocess
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as redis

from lockgate_server.harness import ServerProcess
from lockgate_server.storage.embedded import EmbeddedValkey, free_port

from .common import (
    CpuWatch,
    Measurement,
    Timing,
    apply_timing,
    bench_parser,
    filesystem_of,
    machine_facts,
    percentile,
    run_closed_loop,
)
from .grpc_transport import TRANSPORTS, ProcessUsage, start_fixed_answer

CONNECTIONS = 64
"""wrk connections and limits callers."""
KEYS = 10_000
ZIPF_EXPONENT = 1.0
RATE_LIMIT = 1000  # per minute, fixed windows on every side
DOMAIN = "bench"
GRPC_PROCESSES = 1
"""Driver processes (spawned, each its own event loop and channel)."""
GRPC_CONCURRENCY = 16
"""In-flight calls per driver process. Envoy multiplexes its RLS calls over few HTTP/2
connections; on this 2-core machine 1 x 16 gave the most calls/s and the lowest p99 of
1x16, 2x12, 2x24 and 4x8 (the grpcio asyncio client slows down with many calls in flight)."""
TARGET_CHECK_RATIO = 1.5
TARGET_GRPC_RPS = 5_000
TARGET_GRPC_P99_MS = 20.0  # Envoy's default rate limit service timeout
RESULTS_PATH = Path(__file__).parent / "results" / "gateway.json"
LUA_SCRIPT = Path(__file__).parent / "gateway" / "zipf_keys.lua"

POLICY = f"""
domain: {DOMAIN}
algorithm: fixed_window
descriptors:
  - key: key
    rate_limit: {{unit: minute, requests_per_unit: {RATE_LIMIT}}}
http:
  descriptors:
    - entries: [{{key: key, source: header, header: X-Key}}]
"""


# --- keys ---------------------------------------------------------------------------------------
def zipf_cdf(keys: int = KEYS, exponent: float = ZIPF_EXPONENT) -> list[float]:
    """The same distribution as zipf_keys.lua: rank r with probability proportional to 1 / r^s."""
    cumulative, total = [], 0.0
    for rank in range(1, keys + 1):
        total += 1 / rank**exponent
        cumulative.append(total)
    return [value / total for value in cumulative]


def draw(rng: random.Random, cdf: list[float]) -> int:
    return min(bisect.bisect_left(cdf, rng.random()), len(cdf) - 1) + 1


# --- limits, the baseline ----------------------------------------------------------------------------
async def run_limits(valkey: EmbeddedValkey, args: argparse.Namespace) -> Measurement:
    import limits
    import limits.aio.storage
    import limits.aio.strategies

    storage = limits.aio.storage.RedisStorage(
        f"async+redis://127.0.0.1:{valkey.port}/1", implementation="redispy", max_connections=CONNECTIONS
    )
    limiter = limits.aio.strategies.FixedWindowRateLimiter(storage)
    item = limits.RateLimitItemPerMinute(RATE_LIMIT)
    cdf = zipf_cdf()
    pickers = [random.Random(task) for task in range(CONNECTIONS)]
    admin = redis.Redis.from_url(valkey.url)
    cpu = CpuWatch(admin)
    try:
        assert await storage.check(), "limits cannot reach Valkey"

        async def check(task: int, iteration: int) -> bool:
            return await limiter.hit(item, f"key-{draw(pickers[task], cdf)}")

        measurement = await run_closed_loop(
            "limits_checks", check, tasks=CONNECTIONS, warmup_s=args.warmup, seconds=args.seconds, watches=[cpu]
        )
    finally:
        client: Any = storage.bridge.storage  # type: ignore[attr-defined]
        await client.aclose()
        await admin.aclose()
    measurement.extra.update(cpu.figures())
    return measurement


SHARDS = 64  # the default a user gets


# --- the server ---------------------------------------------------------------------------------------
class Server(ServerProcess):
    """`python -m lockgate_server` on the benchmark's Valkey, with the benchmark's policy."""

    def __init__(self, folder: Path, valkey: EmbeddedValkey) -> None:
        policy = folder / "gateway.yaml"
        policy.write_text(POLICY)
        env = {
            "LOCKGATE_REDIS_URL": valkey.url,
            "LOCKGATE_POLICY_FILES": str(policy),
            "LOCKGATE_LOG_LEVEL": "warning",
        }
        super().__init__(folder / "server", env=env, shards=SHARDS)
        self.start()

    def cpu_seconds(self) -> float:
        """User + system CPU of every process of the server's group (the server and its snapshot writers)."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) == self.pgid:
                total += int(fields[11]) + int(fields[12])
        return total / ticks

    def decisions(self) -> dict[str, float]:
        """lockgate_gateway_decisions_total by outcome, as the server counted them."""
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        counts: dict[str, float] = {}
        for match in re.finditer(
            r'^lockgate_gateway_decisions_total\{domain="[^"]*",outcome="([^"]+)"\} (\S+)$', text, re.M
        ):
            counts[match.group(1)] = counts.get(match.group(1), 0.0) + float(match.group(2))
        return counts


class Usage:
    """CPU the server group and Valkey used over a measured window, as % of one core."""

    def __init__(self, server: Server, admin: Any) -> None:
        self.server = server
        self.valkey = CpuWatch(admin)
        self.started = (0.0, 0.0)
        self.figures: dict[str, object] = {}

    async def open(self) -> None:
        await self.valkey.open()
        self.started = (time.perf_counter(), self.server.cpu_seconds())

    async def close(self) -> None:
        await self.valkey.close()
        wall = time.perf_counter() - self.started[0]
        self.figures = {
            "lockgate_server_cpu_pct": round(100 * (self.server.cpu_seconds() - self.started[1]) / wall, 1),
            "valkey_cpu_pct": self.valkey.figures().get("server_cpu_pct"),
        }


# --- wrk ------------------------------------------------------------------------------------------------
_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS_MS[unit]


def parse_wrk(output: str) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    done = re.search(r"(\d+) requests in ([\d.]+)(m?s)", output)
    if done is None:
        raise SystemExit(f"cannot read wrk's output:\n{output}")
    figures["requests"] = int(done.group(1))
    figures["seconds"] = float(done.group(2)) * (60 if done.group(3) == "m" else 1)
    figures["ops_per_s"] = round(float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)), 1)  # type: ignore[union-attr]
    for label in ("50", "75", "90", "99"):
        found = re.search(rf"^\s+{label}%\s+([\d.]+(?:us|ms|s))$", output, re.M)
        if found:
            figures[f"p{label}_ms"] = round(_ms(found.group(1)), 3)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    figures["non_2xx"] = int(non_2xx.group(1)) if non_2xx else 0
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    figures["socket_errors"] = sum(int(count) for count in errors.groups()) if errors else 0
    return figures


def run_wrk(server: Server, seconds: float) -> dict[str, Any]:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is missing: apt-get install wrk (make bench-gateway does it when root)")
    env = {
        **os.environ,
        "BENCH_KEYS": str(KEYS),
        "BENCH_ZIPF_EXPONENT": str(ZIPF_EXPONENT),
        "BENCH_PATH": f"/check/{DOMAIN}",
    }
    # One wrk thread: on 2 cores a second one takes CPU from the server it measures.
    command = [wrk, "-t", "1", "-c", str(CONNECTIONS), "-d", f"{max(1, round(seconds))}s", "--latency",
               "-s", str(LUA_SCRIPT), server.url]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 60, check=True)
    return parse_wrk(done.stdout)


async def measure_check_endpoint(server: Server, admin: Any, args: argparse.Namespace) -> dict[str, Any]:
    await asyncio.to_thread(run_wrk, server, args.warmup)
    before = server.decisions()
    usage = Usage(server, admin)
    await usage.open()
    figures = await asyncio.to_thread(run_wrk, server, args.seconds)
    await usage.close()
    after = server.decisions()
    figures["server_decisions"] = {key: int(after.get(key, 0) - before.get(key, 0)) for key in after}
    figures.update(usage.figures)
    return figures


# --- gRPC -------------------------------------------------------------------------------------------------
def grpc_driver(
    target: str, start_at: float, warmup_s: float, seconds: float, concurrency: int, seed: int
) -> dict[str, Any]:
    """One driver process: `concurrency` asyncio tasks calling ShouldRateLimit back to back."""
    import grpc

    from lockgate_server.gateway.proto.envoy.extensions.common.ratelimit.v3.ratelimit_pb2 import RateLimitDescriptor
    from lockgate_server.gateway.proto.envoy.service.ratelimit.v3.rls_pb2 import RateLimitRequest, RateLimitResponse
    from lockgate_server.gateway.proto.envoy.service.ratelimit.v3.rls_pb2_grpc import RateLimitServiceStub

    # Requests are built once: the driver should spend its CPU on calls, not on messages.
    requests = [
        RateLimitRequest(
            domain=DOMAIN,
            descriptors=[RateLimitDescriptor(entries=[RateLimitDescriptor.Entry(key="key", value=f"key-{rank}")])],
        )
        for rank in range(1, KEYS + 1)
    ]
    cdf = zipf_cdf()

    async def main() -> dict[str, Any]:
        measured_from = start_at + warmup_s
        measured_to = measured_from + seconds
        latencies: list[float] = []
        over_limit = errors = 0
        async with grpc.aio.insecure_channel(target) as channel:
            stub = RateLimitServiceStub(channel)
            await channel.channel_ready()
            while time.time() < start_at:
                await asyncio.sleep(0.005)

            async def caller(task: int) -> None:
                nonlocal over_limit, errors
                rng = random.Random(seed * 1000 + task)
                while True:
                    request = requests[draw(rng, cdf) - 1]
                    began_wall, began = time.time(), time.perf_counter()
                    try:
                        answer = await stub.ShouldRateLimit(request, timeout=5)
                        denied, failed = answer.overall_code == RateLimitResponse.OVER_LIMIT, False
                    except grpc.aio.AioRpcError:
                        denied, failed = False, True
                    ended = time.perf_counter()
                    if began_wall + (ended - began) > measured_to:
                        return
                    if began_wall >= measured_from:
                        latencies.append(ended - began)
                        over_limit += denied
                        errors += failed

            await asyncio.gather(*(caller(task) for task in range(concurrency)))
        return {"latencies": latencies, "over_limit": over_limit, "errors": errors}

    return asyncio.run(main())


async def measure_grpc(target: str, usage: Usage | ProcessUsage, args: argparse.Namespace) -> dict[str, Any]:
    start_at = time.time() + 3.0  # the driver processes need a moment to start
    context = multiprocessing.get_context("spawn")  # grpc must not be forked

    async def window() -> None:
        await asyncio.sleep(max(0.0, start_at + args.warmup - time.time()))
        await usage.open()
        await asyncio.sleep(args.seconds)
        await usage.close()

    with context.Pool(args.grpc_processes) as pool:
        pending = [
            pool.apply_async(grpc_driver, (target, start_at, args.warmup, args.seconds, args.grpc_concurrency, seed))
            for seed in range(args.grpc_processes)
        ]
        await window()
        results = [await asyncio.to_thread(result.get, args.warmup + args.seconds + 120) for result in pending]
    latencies = sorted(latency for result in results for latency in result["latencies"])
    return {
        "ops": len(latencies),
        "seconds": args.seconds,
        "ops_per_s": round(len(latencies) / args.seconds, 1),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 3),
        "p90_ms": round(percentile(latencies, 0.90) * 1000, 3),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 3),
        "max_ms": round(latencies[-1] * 1000, 3) if latencies else 0.0,
        "over_limit": sum(result["over_limit"] for result in results),
        "errors": sum(result["errors"] for result in results),
        "driver": f"{args.grpc_processes} processes x {args.grpc_concurrency} asyncio tasks each",
        **usage.figures,
    }


# --- the run -----------------------------------------------------------------------------------------------
async def store_facts(admin: Any, valkey: EmbeddedValkey) -> dict[str, object]:
    info = await admin.info("server")
    return {
        "valkey_version": info.get("valkey_version") or info.get("redis_version"),
        "appendfsync": (await admin.config_get("appendfsync")).get("appendfsync"),
        "appendonly": (await admin.config_get("appendonly")).get("appendonly"),
        "bind": "127.0.0.1",
        "data_dir_filesystem": filesystem_of(valkey.data_dir),
    }


async def run_all(folder: Path, valkey: EmbeddedValkey, args: argparse.Namespace) -> dict[str, Any]:
    admin = redis.Redis.from_url(valkey.url, decode_responses=True)
    try:
        store = await store_facts(admin, valkey)
        if store["appendfsync"] != "always":
            raise SystemExit(f"Valkey reports appendfsync={store['appendfsync']!r}, expected 'always'")
        print("  limits_checks ...", flush=True)
        limits_run = await run_limits(valkey, args)
        print(f"  limits_checks  {limits_run.ops_per_s:>10,.0f} checks/s", flush=True)
        server = Server(folder, valkey)
        try:
            print("  check_endpoint (wrk) ...", flush=True)
            check = await measure_check_endpoint(server, admin, args)
            print(f"  check_endpoint {check['ops_per_s']:>10,.0f} checks/s", flush=True)
            print("  grpc ...", flush=True)
            grpc_run = await measure_grpc(f"127.0.0.1:{server.grpc_port}", Usage(server, admin), args)
            print(f"  grpc           {grpc_run['ops_per_s']:>10,.0f} calls/s", flush=True)
        finally:
            server.stop()
    finally:
        await admin.aclose()
    transport = {name: await measure_transport(name, args) for name in TRANSPORTS}
    return {
        "store": store,
        "limits_checks": limits_run.summary(),
        "check_endpoint": check,
        "grpc": grpc_run,
        "grpc_transport": transport,
    }


async def measure_transport(name: str, args: argparse.Namespace) -> dict[str, Any]:
    print(f"  grpc transport alone: {name} ...", flush=True)
    port = free_port()
    process = start_fixed_answer(name, port)
    try:
        assert process.pid is not None
        row = await measure_grpc(f"127.0.0.1:{port}", ProcessUsage(process.pid), args)
    finally:
        process.kill()
    cpu_s = row.pop("server_cpu_s")
    row["server_cpu_us_per_call"] = round(1e6 * cpu_s / row["ops"], 1) if row["ops"] else None
    print(f"  {name + ' alone':<15}{row['ops_per_s']:>10,.0f} calls/s", flush=True)
    return row


def report(figures: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    limits_rate = figures["limits_checks"]["ops_per_s"]
    check_ratio = round(figures["check_endpoint"]["ops_per_s"] / limits_rate, 2) if limits_rate else float("inf")
    grpc_run = figures["grpc"]
    return {
        "benchmark": "gateway",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(args.started)),
        "command": "make bench-gateway  (python -m loadtests.bench_gateway" + (" --quick" if args.quick else "") + ")",
        "config": {
            "connections": CONNECTIONS,
            "keys": KEYS,
            "key_distribution": f"Zipf-like, exponent {ZIPF_EXPONENT}",
            "limit": f"{RATE_LIMIT} per minute per key, fixed windows (Lockgate and limits alike)",
            "seconds_per_workload": args.seconds,
            "warmup_s": args.warmup,
            "server": "python -m lockgate_server, one process (our HTTP/1.1 server + uvloop), same Valkey",
            "wrk": f"1 thread, {CONNECTIONS} connections, {LUA_SCRIPT.name}",
            "grpc_driver": grpc_run["driver"],
        },
        "machine": {
            **machine_facts(),
            # Other work on the machine skews every figure: the load before and after the run.
            "load_average_at_start": [round(load, 2) for load in args.load_at_start],
            "load_average_at_end": [round(load, 2) for load in os.getloadavg()],
            "client_and_server": "share this machine: wrk, the gRPC driver, the server and Valkey run here",
        },
        "store": figures["store"],
        "clients": {"limits": version("limits"), "limits_implementation": "redispy", "grpcio": version("grpcio")},
        "workloads": {
            "limits_checks": figures["limits_checks"],
            "check_endpoint": figures["check_endpoint"],
            "grpc": grpc_run,
        },
        "grpc_transport_alone": figures["grpc_transport"],
        "ratios": {
            "check_endpoint_over_limits": check_ratio,
            "grpc_transport_cpu_grpcio_over_lockgate": _cpu_ratio(figures["grpc_transport"]),
        },
        "targets": {
            "check_ratio_min": TARGET_CHECK_RATIO,
            "check_ratio_met": check_ratio >= TARGET_CHECK_RATIO,
            "grpc_ops_per_s_min": TARGET_GRPC_RPS,
            "grpc_p99_ms_max": TARGET_GRPC_P99_MS,
            "grpc_met": grpc_run["ops_per_s"] >= TARGET_GRPC_RPS and grpc_run["p99_ms"] <= TARGET_GRPC_P99_MS,
        },
        "note": (
            "wrk, the gRPC driver, the server and Valkey share the machine's cores; the limits baseline "
            "runs in this process without HTTP. A denial (429 / OVER_LIMIT) is a completed check on every side."
        ),
    }


def _cpu_ratio(transport: dict[str, dict[str, Any]]) -> float | None:
    ours, theirs = (transport[name].get("server_cpu_us_per_call") for name in ("lockgate", "grpcio"))
    return round(theirs / ours, 2) if ours and theirs else None


def print_table(document: dict[str, Any]) -> None:
    machine, store, work = document["machine"], document["store"], document["workloads"]
    print()
    print(
        f"Lockgate gateway benchmark: {machine['cpu_count']} CPUs, {machine['cpu_model']}, Python {machine['python']}; "
        f"Valkey {store['valkey_version']}, appendfsync={store['appendfsync']} on {store['data_dir_filesystem']}"
    )
    print(f"{'workload':<18}{'ops/s':>12}{'p50 ms':>10}{'p99 ms':>10}{'denied':>10}")
    limits_row = work["limits_checks"]
    print(f"{'limits_checks':<18}{limits_row['ops_per_s']:>12,.0f}{limits_row['p50_ms']:>10.3f}{limits_row['p99_ms']:>10.3f}"
          f"{limits_row['refused']:>10,}")  # fmt: skip
    check = work["check_endpoint"]
    print(f"{'check_endpoint':<18}{check['ops_per_s']:>12,.0f}{check.get('p50_ms', 0):>10.3f}"
          f"{check.get('p99_ms', 0):>10.3f}{check['non_2xx']:>10,}")  # fmt: skip
    grpc_row = work["grpc"]
    print(f"{'grpc':<18}{grpc_row['ops_per_s']:>12,.0f}{grpc_row['p50_ms']:>10.3f}{grpc_row['p99_ms']:>10.3f}"
          f"{grpc_row['over_limit']:>10,}")  # fmt: skip
    for name, row in document["grpc_transport_alone"].items():
        print(f"{name + ' alone':<18}{row['ops_per_s']:>12,.0f}{row['p50_ms']:>10.3f}{row['p99_ms']:>10.3f}"
              f"{'':>10}  server {row['server_cpu_us_per_call']} us CPU per call")  # fmt: skip
    targets = document["targets"]
    print()
    print(
        f"check endpoint / limits: {document['ratios']['check_endpoint_over_limits']:.2f}x "
        f"(target >= {targets['check_ratio_min']}x: {'met' if targets['check_ratio_met'] else 'NOT met'})"
    )
    print(
        f"gRPC: {grpc_row['ops_per_s']:,.0f} calls/s, p99 {grpc_row['p99_ms']:.1f} ms (target >= {TARGET_GRPC_RPS:,}/s "
        f"with p99 <= {TARGET_GRPC_P99_MS:g} ms: {'met' if targets['grpc_met'] else 'NOT met'})"
    )


TIMING = Timing(seconds=10.0, warmup=2.0, quick_seconds=3.0, quick_warmup=1.0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = bench_parser("loadtests.bench_gateway", __doc__, RESULTS_PATH, TIMING)
    parser.add_argument("--grpc-processes", type=int, default=GRPC_PROCESSES, help="gRPC driver processes")
    parser.add_argument("--grpc-concurrency", type=int, default=GRPC_CONCURRENCY, help="in-flight calls per driver")
    return apply_timing(parser.parse_args(argv), TIMING)


def main(argv: list[str] | None = None) -> None:
    import uvloop

    args = parse_args(argv)
    args.started = time.time()
    args.load_at_start = os.getloadavg()
    with (
        tempfile.TemporaryDirectory(prefix="lockgate-bench-gateway-") as folder,
        EmbeddedValkey(Path(folder) / "valkey") as valkey,
    ):
        print(f"Valkey on 127.0.0.1:{valkey.port}; 3 workloads of {args.warmup:g} + {args.seconds:g} s", flush=True)
        figures = uvloop.run(run_all(Path(folder), valkey, args))
    document = report(figures, args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    print_table(document)
    print(f"results written to {args.output}")


if __name__ == "__main__":
    main()
