"""The Locust scenarios against a server we start (`make bench-locust`), headless and bounded.

Starts a Valkey (appendfsync always) and `lockgate-server` on 127.0.0.1, then runs each
scenario of loadtests/scenarios/locustfile.py as its own headless Locust process, in a fresh
namespace: the gateway mix, the job runners, 200 contenders for 8 permits, the counters.
Every scenario checks correctness while it loads (see the locustfile); a violation, or a run
that could not check enough (exceptions, failed requests, a server not ready at the end,
nothing to check), makes this command exit with status 1. Writes loadtests/results/locust.json.

    python -m loadtests.scenarios.run [--users 100] [--seconds 30] [--quick] [--scenarios JobWorker,...]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lockgate_server.storage.embedded import EmbeddedValkey, free_port

from ..bench_http import ROOT, Served, _stop_on_sigterm, lockgate_server
from ..common import machine_facts

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
RESULTS_PATH = ROOT / "loadtests" / "results" / "locust.json"
SCENARIOS = ("GatewayUser", "JobWorker", "SemaphoreContender", "CounterClient")
SEMAPHORE_CONTENDERS = 200
GATEWAY_USER_RATE = 20.0
"""Checks/s per gateway user: 100 users offer 2,000 checks/s."""
STOP_TIMEOUT_S = 10
LIMITS_DB = 1
"""The limits peer keeps its keys in this Valkey database; Lockgate's log lives in 0."""

_PERCENTILES = ("50%", "90%", "95%", "99%", "99.9%", "100%")


def _number(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def read_stats(prefix: Path) -> dict[str, dict[str, Any]]:
    """Locust's <prefix>_stats.csv: one row per request name plus "Aggregated", latencies in ms."""
    rows: dict[str, dict[str, Any]] = {}
    path = Path(f"{prefix}_stats.csv")
    if not path.exists():
        return rows
    with path.open() as handle:
        for row in csv.DictReader(handle):
            name = row["Name"] if row["Type"] else "Aggregated"
            rows[name] = {
                "requests": int(row["Request Count"]),
                "failures": int(row["Failure Count"]),
                "requests_per_s": round(_number(row["Requests/s"]) or 0.0, 1),
                "mean_ms": round(_number(row["Average Response Time"]) or 0.0, 2),
                **{f"p{label.rstrip('%').replace('.', '')}_ms": _number(row[label]) for label in _PERCENTILES},
            }
    return rows


_SAME_IN_EVERY_PROCESS = frozenset({"workload", "permits"})
"""Verdict fields that describe the scenario, not what a process saw: kept as they are, never summed."""


def merge_verdicts(paths: list[Path], processes: int = 1) -> dict[str, Any]:
    """One verdict from each Locust process (the master's, and each worker's when there are several).

    It passes only if every part passed and every process that should have checked did: with
    --processes N, N workers (a worker that died wrote nothing); otherwise the master itself.
    """
    parts = []
    for path in paths:
        with contextlib.suppress(OSError, ValueError):
            parts.append(json.loads(path.read_text()))
    if not parts:
        return {}
    checking = [part for part in parts if part.get("scenarios")]
    master = next((part for part in parts if part.get("role") == "master"), None)
    lead = master or parts[0]
    problems = [f"{part.get('role')}: {problem}" for part in parts for problem in part.get("problems", [])]
    if master is None:
        problems.append("the Locust master wrote no verdict")
    if len(checking) != processes:
        problems.append(f"{len(checking)} of {processes} Locust processes checked their users' answers")
    scenarios: dict[str, dict[str, Any]] = {}
    for part in checking:
        for name, scenario in part["scenarios"].items():
            if name not in scenarios:
                scenarios[name] = json.loads(json.dumps(scenario))
                continue
            merged = scenarios[name]
            for key, value in scenario.items():
                if key in _SAME_IN_EVERY_PROCESS:
                    continue
                if key in ("violation_details", "not_checked"):
                    merged[key] = (merged.get(key, []) + value)[:50]
                elif isinstance(value, int | float) and not isinstance(value, bool):
                    merged[key] = merged.get(key, 0) + value
                elif isinstance(value, dict):
                    into = merged.setdefault(key, {})
                    for inner, number in value.items():
                        if isinstance(number, int | float):
                            into[inner] = into.get(inner, 0) + number
    return {
        "ok": all(part.get("ok") for part in parts) and not problems,
        "violations": sum(part.get("violations", 0) for part in parts),
        "problems": problems,
        "requests": lead.get("requests"),
        "failures": lead.get("failures"),
        "seconds": lead.get("seconds"),
        "processes": processes,
        "processes_checking": len(checking),
        "scenarios": scenarios,
    }


def run_locust(
    user_class: str,
    host: str,
    *,
    users: int,
    seconds: float,
    folder: Path,
    namespace: str,
    user_rate: float = 0.0,
    processes: int = 1,
    max_failed_share: float | None = None,
) -> dict[str, Any]:
    """One headless Locust run; its stats (after every user was spawned) and its correctness verdict.

    processes > 1 forks Locust workers (only for GatewayUser: its checks hold for any subset of the
    answers, so each worker checks its own; the other scenarios need one process to see every client).
    The master's exit status does not see the workers' checks: "passed" is the run's verdict.
    """
    prefix = folder / f"locust-{namespace}"
    workers: list[str] = []
    if processes > 1:
        # The master listens for its workers on loopback only, on a port free now (not Locust's fixed 5557).
        master_port = str(free_port())
        workers = [
            "--processes", str(processes), "--master-bind-host", "127.0.0.1", "--master-bind-port", master_port,
            "--master-host", "127.0.0.1", "--master-port", master_port,
        ]  # fmt: skip
    verdict_path = folder / f"verdict-{namespace}.json"
    log_path = folder / f"locust-{namespace}.log"
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary", "--reset-stats",
        "-u", str(users), "-r", str(users), "-t", f"{max(1, round(seconds))}s", "--stop-timeout", str(STOP_TIMEOUT_S),
        "--host", host, "--csv", str(prefix), "--loglevel", "WARNING",
        "--lg-namespace", namespace, "--lg-verdict", str(verdict_path), "--lg-user-rate", str(user_rate),
        *workers,
        *(["--lg-max-failed-share", str(max_failed_share)] if max_failed_share is not None else []), user_class,
    ]  # fmt: skip
    started = time.monotonic()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = process.wait(timeout=seconds + STOP_TIMEOUT_S + 120)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, 9)
                process.wait()
    verdict = merge_verdicts(sorted(folder.glob(f"{verdict_path.name}.*.json")), processes)
    stats = read_stats(prefix)
    outcome = {
        "user_class": user_class,
        "users": users,
        "seconds": seconds,
        "user_rate": user_rate or None,
        "offered_per_s": round(users * user_rate, 1) if user_rate else None,
        "namespace": namespace,
        "exit_code": code,
        "passed": passed(code, verdict),
        "wall_s": round(time.monotonic() - started, 1),
        "stats": stats,
        "verdict": verdict,
    }
    if not outcome["passed"]:
        outcome["log_tail"] = log_path.read_text(errors="replace")[-3000:]
    return outcome


def passed(exit_code: int | None, verdict: dict[str, Any]) -> bool:
    """A Locust run passes only if Locust exited 0 and the merged verdict of its processes is ok, with no violation."""
    return exit_code == 0 and bool(verdict.get("ok")) and not verdict.get("violations")


@contextlib.contextmanager
def servers(folder: Path, valkey: EmbeddedValkey, *, shards: int = 64, limits_peer: bool = False) -> Iterator[Any]:
    """lockgate-server (and, if asked, the limits peer app) on the given Valkey; stopped on the way out."""
    port = free_port()
    with lockgate_server(valkey, port, folder, shards) as server:
        if not limits_peer:
            yield server, f"http://127.0.0.1:{port}", None, None
            return
        peer_port = free_port()
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "LIMITS_REDIS_URL": valkey.url.rsplit("/", 1)[0] + f"/{LIMITS_DB}",
        }
        command = [sys.executable, "-m", "loadtests.http.serve", "loadtests.scenarios.limits_app:app", str(peer_port)]
        with Served(
            "limits_http", command, env, f"http://127.0.0.1:{peer_port}/healthz", folder / "limits.log"
        ) as peer:
            yield server, f"http://127.0.0.1:{port}", peer, f"http://127.0.0.1:{peer_port}"


def scenario_users(user_class: str, users: int) -> int:
    return SEMAPHORE_CONTENDERS if user_class == "SemaphoreContender" else users


def summarize(outcome: dict[str, Any]) -> str:
    total = outcome["stats"].get("Aggregated", {})
    verdict = outcome["verdict"]
    return (
        f"  {outcome['user_class']:<20} {outcome['users']:>4} users  {total.get('requests_per_s', 0):>8,.0f} req/s  "
        f"p50 {total.get('p50_ms')} ms  p99 {total.get('p99_ms')} ms  failures {total.get('failures', 0):,}  "
        f"violations {verdict.get('violations', 'n/a')}  exit {outcome['exit_code']}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtests.scenarios.run", description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100, help="users per scenario (semaphores: always 200)")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds per scenario (default 30)")
    parser.add_argument("--quick", action="store_true", help="10 s per scenario")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated user classes")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH)
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds = 10.0
    args.scenarios = [name for name in args.scenarios.split(",") if name]
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    machine = machine_facts()
    results: dict[str, Any] = {}
    run_id = time.strftime("%H%M%S")
    with (
        _stop_on_sigterm(),
        tempfile.TemporaryDirectory(prefix="lockgate-locust-") as folder_name,
        EmbeddedValkey(Path(folder_name) / "valkey") as valkey,
    ):
        folder = Path(folder_name)
        print(f"Valkey on 127.0.0.1:{valkey.port} (appendfsync always); {len(args.scenarios)} scenarios", flush=True)
        with servers(folder, valkey) as (_, url, _, _):
            for user_class in args.scenarios:
                outcome = run_locust(
                    user_class, url, users=scenario_users(user_class, args.users), seconds=args.seconds,
                    folder=folder, namespace=f"{user_class.lower()}-{run_id}",
                    user_rate=GATEWAY_USER_RATE if user_class == "GatewayUser" else 0.0,
                )  # fmt: skip
                results[user_class] = outcome
                print(summarize(outcome), flush=True)
    violations = sum(outcome["verdict"].get("violations", 0) for outcome in results.values())
    failed_runs = [name for name, outcome in results.items() if not outcome["passed"]]
    document = {
        "benchmark": "locust",
        "command": "make bench-locust" + (" BENCH_LOCUST_ARGS=--quick" if args.quick else ""),
        "machine": machine,
        "note": "Locust (one process), the server and Valkey (appendfsync always) share the machine, on 127.0.0.1",
        "scenarios": results,
        "violations": violations,
        "failed_runs": failed_runs,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    for name in failed_runs:
        outcome = results[name]
        print(f"\n{name} failed (exit {outcome['exit_code']}):")
        for problem in outcome["verdict"].get("problems", []) if outcome["verdict"] else ["no verdict was written"]:
            print(f"  {problem}")
        for scenario in outcome["verdict"].get("scenarios", {}).values():
            for detail in scenario.get("violation_details", [])[:10]:
                print(f"  {detail}")
        if "log_tail" in outcome:
            print(outcome["log_tail"][-1500:])
    print(f"results written to {args.output}")
    if failed_runs:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
