"""Every benchmark in one run, and the report (`make bench`): loadtests/results/REPORT.md plus PNG plots.

1. The benchmarks of the earlier issues, each as its own process, as their make targets run
   them: bench_engine, bench_http, bench_sdk, bench_gateway, bench_state (--quick passes through).
2. On one Valkey (appendfsync always, 127.0.0.1), `lockgate-server` (one worker, 64 shards) and
   the `limits` library behind the same HTTP route (loadtests/scenarios/limits_app.py, served by
   the same HTTP server, redis-py to the same Valkey):
   - the Locust gateway mix against both, stepping the offered load, to compare the p99 of a
     check at the load where limits' p99 crosses 20 ms;
   - the Locust job-runner, semaphore and counter scenarios, with their correctness checks;
   - a concurrency sweep, 1 to 256 wrk connections of single rate checks against both, reading
     the server's lockgate_commit_batch_ops histogram at every step (batch size against load);
   - a scaling sweep: LOCKGATE_SHARDS 1, 4, 16, 64 x concurrent clients, with the CPU each
     process used, to show where throughput saturates and why.
3. loadtests/results/report.json (git-ignored), then REPORT.md and the plots (report_render.py).

Every process runs on 127.0.0.1 and is stopped at the end, also on error or SIGTERM. Exits 1
if a benchmark failed to run or a Locust run did not pass (a violation, or checks that could not
mean anything: see loadtests/scenarios/locustfile.py); missed targets do not fail the run, the
report says which. Client and server share the machine. Not run here: `make bench-failover`.

    python -m loadtests.report [--quick] [--only engine,http,...] [--render-only]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import redis

from lockgate_server.storage.embedded import EmbeddedValkey

from .bench_http import HTTP_DIR, ROOT, Readings, _stop_on_sigterm, tool_version
from .common import filesystem_of, machine_facts
from .scenarios.run import run_locust, servers

RESULTS = ROOT / "loadtests" / "results"
REPORT_JSON = RESULTS / "report.json"

BENCHES: dict[str, dict[str, Any]] = {
    "engine": {"module": "loadtests.bench_engine", "quick": ["--quick"], "full": [], "make": "make bench-engine"},
    "http": {
        "module": "loadtests.bench_http",
        "quick": ["--quick", "--profile", "never"],
        "full": ["--profile", "never"],
        "make": "make bench-http",
        "needs": "wrk",
    },
    "sdk": {"module": "loadtests.bench_sdk", "quick": ["--quick"], "full": [], "make": "make bench-sdk"},
    "gateway": {
        "module": "loadtests.bench_gateway",
        "quick": ["--quick"],
        "full": [],
        "make": "make bench-gateway",
        "needs": "wrk",
    },
    "state": {
        "module": "loadtests.bench_state",
        "quick": ["--rate-keys", "100000", "--locks", "10000", "--counters", "10000"],
        "full": [],
        "make": "make bench-state",
    },
}
OWN_PARTS = ("gateway_mix", "scenarios", "concurrency", "shards")

KEYS = 10_000  # wrk checks: the same keys and policy as bench_http's single checks
WRK_THREADS = 2
GATEWAY_USER_RATE = 20.0  # checks/s per Locust user in the gateway mix
LOCUST_PROCESSES = 2
"""Locust worker processes for the gateway mix: one process tops out near 4,000 checks/s here."""
P99_THRESHOLD_MS = 20.0
PEER_MAX_FAILED_SHARE = 1.0
"""The limits peer's failed requests do not fail its step: past its capacity it fails requests (6% at
8,000 offered checks/s in the last full run), which is what the step measures and the table shows;
its answered checks are still checked. Lockgate's steps keep the locustfile's bound."""


# --- the earlier benchmarks, as processes -------------------------------------------------------
def run_bench(name: str, args: argparse.Namespace) -> dict[str, Any]:
    spec = BENCHES[name]
    needs = spec.get("needs")
    if needs and shutil.which(needs) is None:
        return {"status": "skipped", "reason": f"{needs} is not installed", "command": spec["make"]}
    extra = spec["quick" if args.quick else "full"]
    command = [sys.executable, "-m", spec["module"], *extra]
    path = RESULTS / f"{name}.json"
    started, began = time.time(), time.monotonic()
    print(f"\n=== {name}: {' '.join(command[1:])}", flush=True)
    tail: collections.deque[str] = collections.deque(maxlen=40)
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    timer = threading.Timer(args.bench_timeout, lambda: _end_group(process))
    timer.start()
    try:
        assert process.stdout is not None
        for line in process.stdout:
            tail.append(line.rstrip())
            print(f"    {line.rstrip()}", flush=True)
        code = process.wait()
    finally:
        timer.cancel()
        if process.poll() is None:
            _end_group(process)
    outcome: dict[str, Any] = {
        "command": spec["make"] + (f" (python -m {spec['module']} {' '.join(extra)})" if extra else ""),
        "exit_code": code,
        "seconds": round(time.monotonic() - began, 1),
    }
    fresh = path.exists() and path.stat().st_mtime >= started
    if code == 0 and fresh:
        outcome["status"] = "ok"
        outcome["document"] = json.loads(path.read_text())
    else:
        outcome["status"] = "failed"
        outcome["reason"] = f"exit {code}" + ("" if fresh else f"; {path.name} was not written")
        outcome["log_tail"] = "\n".join(tail)
    return outcome


def _end_group(process: subprocess.Popen[str]) -> None:
    """SIGTERM the benchmark's process group (it stops what it started), SIGKILL after 20 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


# --- wrk and the server's commit histogram --------------------------------------------------------
def wrk_checks(url: str, connections: int, seconds: int, namespace: str) -> dict[str, Any]:
    """Single rate checks over 10,000 keys (loadtests/http/checks.lua) from `connections` connections."""
    threads = min(connections, WRK_THREADS)
    command = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s",
        "-s", "checks.lua", url, "--", namespace, str(KEYS),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=HTTP_DIR, capture_output=True, text=True, timeout=seconds + 60)
    line = next((line for line in done.stdout.splitlines() if line.startswith("BENCH_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    report: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
    return report


class BatchWatch:
    """lockgate_commit_batch_ops (and append latency) over a window, from the server's /metrics."""

    OPS, APPEND = "lockgate_commit_batch_ops", "lockgate_append_latency_seconds"

    def __init__(self, metrics_url: str) -> None:
        self.url = metrics_url
        self.opened = self._scrape()

    def _scrape(self) -> dict[str, float]:
        values: dict[str, float] = {}
        with contextlib.suppress(OSError, ValueError), urllib.request.urlopen(self.url, timeout=5) as answer:
            for line in answer.read().decode().splitlines():
                if line.startswith((self.OPS, self.APPEND)) and not line.startswith((self.OPS + "_created",)):
                    name, _, value = line.rpartition(" ")
                    values[name] = float(value)
        return values

    def figures(self, seconds: float) -> dict[str, Any]:
        closed = self._scrape()
        delta = {name: closed[name] - self.opened.get(name, 0.0) for name in closed}
        commits = delta.get(self.OPS + "_count", 0.0)
        if not commits:
            return {}
        buckets = sorted(
            (float(name.split('le="', 1)[1].split('"', 1)[0]), count)
            for name, count in delta.items()
            if name.startswith(self.OPS + "_bucket") and "+Inf" not in name
        )
        histogram = [[bound, int(count)] for bound, count in buckets]

        def upper_bound(fraction: float) -> float | None:
            return next((bound for bound, count in buckets if count >= fraction * commits), None)

        appends = delta.get(self.APPEND + "_count", 0.0)
        return {
            "commits": int(commits),
            "commits_per_s": round(commits / seconds, 1),
            "ops_per_commit": round(delta.get(self.OPS + "_sum", 0.0) / commits, 2),
            "ops_per_commit_p50_le": upper_bound(0.50),
            "ops_per_commit_p99_le": upper_bound(0.99),
            "batch_histogram_cumulative": histogram,
            "append_mean_ms": round(1000 * delta.get(self.APPEND + "_sum", 0.0) / appends, 3) if appends else None,
        }


def measure_checks(
    url: str,
    connections: int,
    seconds: int,
    namespace: str,
    *,
    server_pid: int,
    admin: redis.Redis,
    metrics: bool,
) -> dict[str, Any]:
    watch = BatchWatch(url + "/metrics") if metrics else None
    readings = Readings(server_pid, admin)
    report = wrk_checks(url, connections, seconds, namespace)
    cpu = readings.figures()
    window = report["duration_us"] / 1e6
    counters = report["counters"]
    ops = counters.get("ok", 0) + counters.get("denied", 0)
    latency = report["latency_us"]
    return {
        "connections": connections,
        "ops_per_s": round(ops / window, 1),
        "p50_ms": latency["p50"] / 1000,
        "p90_ms": latency["p90"] / 1000,
        "p99_ms": latency["p99"] / 1000,
        "max_ms": latency["max"] / 1000,
        "failed": counters.get("failed", 0),
        "socket_errors": {name: count for name, count in report["errors"].items() if count},
        **cpu,
        **({"commit": watch.figures(window)} if watch else {}),
    }


# --- the parts on our own Valkey --------------------------------------------------------------------
def gateway_mix(urls: dict[str, str], folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Locust's gateway mix against Lockgate and against limits, step by step in offered checks/s."""
    steps: list[dict[str, Any]] = []
    for index, offered in enumerate(args.gateway_steps):
        order = ("limits", "lockgate") if index % 2 == 0 else ("lockgate", "limits")
        for target in order:
            users = max(1, math.ceil(offered / GATEWAY_USER_RATE))
            outcome = run_locust(
                "GatewayUser", urls[target], users=users, seconds=args.gateway_seconds, folder=folder,
                namespace=f"gw-{target}-{index}", user_rate=GATEWAY_USER_RATE, processes=LOCUST_PROCESSES,
                max_failed_share=PEER_MAX_FAILED_SHARE if target == "limits" else None,
            )  # fmt: skip
            total = outcome["stats"].get("Aggregated", {})
            row = {
                "target": target,
                "offered_per_s": offered,
                "users": users,
                "achieved_per_s": total.get("requests_per_s"),
                "p50_ms": total.get("p50_ms"),
                "p90_ms": total.get("p90_ms"),
                "p99_ms": total.get("p99_ms"),
                "p999_ms": total.get("p999_ms"),
                "requests": total.get("requests"),
                "failures": total.get("failures"),
                "exit_code": outcome["exit_code"],
                "passed": outcome["passed"],
                "violations": outcome["verdict"].get("violations"),
                "verdict": outcome["verdict"],
            }
            if "log_tail" in outcome:
                row["log_tail"] = outcome["log_tail"]
            steps.append(row)
            print(
                f"  gateway mix {target:<8} offered {offered:>6,}/s  achieved {row['achieved_per_s'] or 0:>8,.0f}/s  "
                f"p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms  violations {row['violations']}"
                + ("" if row["passed"] else "  FAILED"),
                flush=True,
            )
    return {"user_rate": GATEWAY_USER_RATE, "locust_processes": LOCUST_PROCESSES,
            "seconds_per_step": args.gateway_seconds, "steps": steps, **crossing(steps)}  # fmt: skip


def crossing(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """The first offered load where limits' p99 passes 20 ms, and Lockgate's p99 at that load.

    Met only if both runs at that load passed: a run whose requests failed fast has a low p99 too.
    """
    by_load: dict[float, dict[str, dict[str, Any]]] = collections.defaultdict(dict)
    for row in steps:
        by_load[row["offered_per_s"]][row["target"]] = row
    for offered in sorted(by_load):
        limits_row, ours = by_load[offered].get("limits"), by_load[offered].get("lockgate")
        if limits_row and ours and (limits_row["p99_ms"] or 0) > P99_THRESHOLD_MS:
            return {
                "crossing_offered_per_s": offered,
                "limits_p99_at_crossing_ms": limits_row["p99_ms"],
                "lockgate_p99_at_crossing_ms": ours["p99_ms"],
                "met": ours["p99_ms"] is not None
                and ours["p99_ms"] <= P99_THRESHOLD_MS
                and ours.get("passed", True)
                and limits_row.get("passed", True),
            }
    return {"crossing_offered_per_s": None, "met": None}


def scenarios(url: str, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for user_class, users in (("JobWorker", 100), ("SemaphoreContender", 200), ("CounterClient", 100)):
        outcome = run_locust(user_class, url, users=users, seconds=args.scenario_seconds, folder=folder,
                             namespace=f"scenario-{user_class.lower()}")  # fmt: skip
        results[user_class] = outcome
        total = outcome["stats"].get("Aggregated", {})
        print(
            f"  {user_class:<20} {users:>4} users {total.get('requests_per_s', 0):>8,.0f} req/s  "
            f"p99 {total.get('p99_ms')} ms  violations {outcome['verdict'].get('violations')}  "
            f"exit {outcome['exit_code']}" + ("" if outcome["passed"] else "  FAILED"),
            flush=True,
        )
    return results


def concurrency_sweep(
    targets: dict[str, tuple[str, int]], admin: redis.Redis, args: argparse.Namespace
) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for target, (url, pid) in targets.items():
        wrk_checks(url, 64, 1, f"sweep-{target}")  # warm-up: connections, key state, the JIT-less caches
        for connections in args.connections:
            row = measure_checks(url, connections, args.sweep_seconds, f"sweep-{target}", server_pid=pid,
                                 admin=admin, metrics=target == "lockgate")  # fmt: skip
            row["target"] = target
            rows.append(row)
            commit = row.get("commit", {})
            print(
                f"  {target:<8} {connections:>4} connections {row['ops_per_s']:>9,.0f} checks/s  p99 "
                f"{row['p99_ms']:>7.2f} ms  server {row['server_cpu_pct']}%  valkey {row['store_cpu_pct']}%"
                + (f"  {commit.get('ops_per_commit')} ops/commit" if commit else ""),
                flush=True,
            )
    return {"seconds_per_step": args.sweep_seconds, "wrk_threads": WRK_THREADS, "keys": KEYS, "rows": rows}


def shard_sweep(valkey: EmbeddedValkey, folder: Path, admin: redis.Redis, args: argparse.Namespace) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for shards in args.shards:
        admin.flushdb()  # LOCKGATE_SHARDS is fixed for the life of the data: each count starts empty
        with servers(folder, valkey, shards=shards) as (server, url, _, _):
            pid = server.worker_pid()
            wrk_checks(url, 64, 1, "shards")
            for clients in args.clients:
                row = measure_checks(url, clients, args.shard_seconds, "shards", server_pid=pid, admin=admin,
                                     metrics=True)  # fmt: skip
                row["shards"] = shards
                rows.append(row)
                print(
                    f"  shards {shards:>3}  clients {clients:>4}  {row['ops_per_s']:>9,.0f} checks/s  p99 "
                    f"{row['p99_ms']:>7.2f} ms  server {row['server_cpu_pct']}%  valkey {row['store_cpu_pct']}%  "
                    f"{row.get('commit', {}).get('ops_per_commit')} ops/commit",
                    flush=True,
                )
    admin.flushdb()
    return {"seconds_per_step": args.shard_seconds, "rows": rows}


def own_parts(args: argparse.Namespace, document: dict[str, Any]) -> None:
    wanted = [part for part in OWN_PARTS if part in args.only]
    if not wanted:
        return
    if shutil.which("wrk") is None and ({"concurrency", "shards"} & set(wanted)):
        for part in {"concurrency", "shards"} & set(wanted):
            document[part] = {"skipped": "wrk is not installed"}
        wanted = [part for part in wanted if part not in ("concurrency", "shards")]
    with (
        tempfile.TemporaryDirectory(prefix="lockgate-report-") as folder_name,
        EmbeddedValkey(Path(folder_name) / "valkey") as valkey,
    ):
        folder = Path(folder_name)
        admin = redis.Redis.from_url(valkey.url, decode_responses=True)
        try:
            info: Any = admin.info("server")
            document["store"] = {
                "valkey_version": info.get("valkey_version") or info.get("redis_version"),
                "appendonly": admin.config_get("appendonly").get("appendonly"),
                "appendfsync": admin.config_get("appendfsync").get("appendfsync"),
                "bind": "127.0.0.1",
                "data_dir_filesystem": filesystem_of(valkey.data_dir),
            }
            if document["store"]["appendfsync"] != "always":
                raise SystemExit(f"Valkey reports appendfsync={document['store']['appendfsync']!r}, expected 'always'")
            if {"gateway_mix", "scenarios", "concurrency"} & set(wanted):
                with servers(folder, valkey, limits_peer=True) as (server, url, peer, peer_url):
                    urls = {"lockgate": url, "limits": peer_url}
                    if "gateway_mix" in wanted:
                        print("\n=== Locust gateway mix, Lockgate vs limits, stepping the offered load", flush=True)
                        document["gateway_mix"] = gateway_mix(urls, folder, args)
                    if "scenarios" in wanted:
                        print("\n=== Locust scenarios with correctness checks", flush=True)
                        document["scenarios"] = scenarios(url, folder, args)
                    if "concurrency" in wanted:
                        print("\n=== concurrency sweep: single checks, wrk 1..256 connections", flush=True)
                        targets = {"lockgate": (url, server.worker_pid()), "limits": (peer_url, peer.worker_pid())}
                        document["concurrency"] = concurrency_sweep(targets, admin, args)
            if "shards" in wanted:
                print("\n=== scaling sweep: shards x concurrent clients", flush=True)
                document["shards"] = shard_sweep(valkey, folder, admin, args)
        finally:
            admin.close()


# --- the run ---------------------------------------------------------------------------------------
def versions() -> dict[str, Any]:
    def package(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {
        "python": sys.version.split()[0],
        "lockgate_server": package("lockgate-server"),
        "lockgate_sdk": package("lockgate"),
        "httptools": package("httptools"),
        "uvloop": package("uvloop"),
        "msgspec": package("msgspec"),
        "redis_py": package("redis"),
        "limits": package("limits"),
        "locust": package("locust"),
        "matplotlib": package("matplotlib"),
        "wrk": tool_version(["wrk", "-v"]),
        "git_commit": _git(["rev-parse", "--short", "HEAD"]),
        "git_dirty": bool(_git(["status", "--porcelain", "--untracked-files=no"])),
    }


def _git(arguments: list[str]) -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(["git", *arguments], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return done.stdout.strip() if done.returncode == 0 else None
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtests.report", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs everywhere: a few minutes in all")
    parser.add_argument("--only", default=",".join([*BENCHES, *OWN_PARTS]),
                        help=f"comma-separated parts (default all): {', '.join([*BENCHES, *OWN_PARTS])}")  # fmt: skip
    parser.add_argument("--render-only", action="store_true", help=f"redraw REPORT.md and plots from {REPORT_JSON}")
    parser.add_argument("--bench-timeout", type=float, default=None, help="seconds one earlier benchmark may take")
    args = parser.parse_args(argv)
    args.only = [part for part in args.only.split(",") if part]
    unknown = set(args.only) - set(BENCHES) - set(OWN_PARTS)
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    if args.quick:
        args.gateway_steps = [500, 3000, 6000]
        args.gateway_seconds = 6
        args.scenario_seconds = 8
        args.connections = [1, 4, 16, 64, 256]
        args.sweep_seconds = 2
        args.shards = [1, 4, 16, 64]
        args.clients = [1, 16, 256]
        args.shard_seconds = 2
    else:
        args.gateway_steps = [500, 1000, 2000, 3000, 4000, 5000, 6000, 8000]
        args.gateway_seconds = 10
        args.scenario_seconds = 20
        args.connections = [1, 2, 4, 8, 16, 32, 64, 128, 256]
        args.sweep_seconds = 4
        args.shards = [1, 4, 16, 64]
        args.clients = [1, 4, 16, 64, 256]
        args.shard_seconds = 3
    if args.bench_timeout is None:
        args.bench_timeout = 420.0 if args.quick else 900.0
    return args


def main(argv: list[str] | None = None) -> None:
    from . import report_render

    args = parse_args(argv)
    if args.render_only:
        document = json.loads(REPORT_JSON.read_text())
        report_render.render(document, RESULTS)
        print(f"wrote {RESULTS / 'REPORT.md'}")
        return
    began = time.monotonic()
    document: dict[str, Any] = {
        "started_at": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "mode": "quick" if args.quick else "full",
        "command": "make bench" + (" BENCH_ARGS=--quick" if args.quick else ""),
        "machine": machine_facts(),
        "versions": versions(),
        "benches": {},
    }
    if set(args.only) != {*BENCHES, *OWN_PARTS}:
        document["only"] = args.only
    with _stop_on_sigterm():
        for name in BENCHES:
            if name in args.only:
                document["benches"][name] = run_bench(name, args)
        own_parts(args, document)
    document["machine"]["load_average_at_end"] = [round(load, 2) for load in os.getloadavg()]
    document["duration_s"] = round(time.monotonic() - began, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    REPORT_JSON.write_text(json.dumps(document, indent=2) + "\n")
    summary = report_render.render(document, RESULTS)
    print(f"\nwrote {REPORT_JSON}, {RESULTS / 'REPORT.md'} and {len(summary['plots'])} plots in {RESULTS}")
    print(summary["headline_text"])
    problems = summary["problems"]
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print(f"took {document['duration_s'] / 60:.1f} min")
    if problems:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
