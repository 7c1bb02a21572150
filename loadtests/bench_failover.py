"""Failover time (`make bench-failover`): how soon a standby serves once the active node dies.

Two server processes (64 shards) on one Valkey (appendfsync always), one active and one
standing by. Each round stops the active node, by kill -9 (its ownership leases must run
out, 3 s from its last renewal) or by SIGTERM (it lets go at once), and times until the
standby's /readyz?active=1 answers 200 (it serves the shards itself); the stopped node then
comes back as the new standby.

Then what the standby's relay costs: wrk's single rate-limit checks (64 connections)
against the active node and through the standby, alternately, in the same run.
Writes loadtests/results/failover.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from lockgate_server.harness import SERVING, ServerProcess
from lockgate_server.storage.embedded import EmbeddedValkey

from .bench_http import run_wrk
from .common import machine_facts

RESULTS = Path(__file__).parent / "results" / "failover.json"
WAYS = ("kill -9", "SIGTERM")
READY_POLL_S = 0.01
GIVE_UP_S = 30.0


def serving_after(standby: ServerProcess, since: float) -> float:
    while not _serving(standby):
        if time.monotonic() - since > GIVE_UP_S:
            raise RuntimeError(f"the standby did not take over within {GIVE_UP_S} s:\n{standby.log()}")
        time.sleep(READY_POLL_S)
    return time.monotonic() - since


def _serving(node: ServerProcess) -> bool:
    try:
        return node.get_status(SERVING) == 200
    except TimeoutError:  # busy loading the shards: not serving yet
        return False


def relay_cost(active: ServerProcess, standby: ServerProcess, seconds: int, rounds: int) -> dict[str, object]:
    """Checks/s and latency straight to the active node and relayed by the standby."""
    runs: dict[str, list[dict[str, float]]] = {"direct": [], "relayed": []}
    for _ in range(rounds):
        for path, node in (("direct", active), ("relayed", standby)):
            report = run_wrk("checks.lua", node.url, ["bench-relay", 10_000], seconds)
            latency = report["latency_us"]
            runs[path].append({"checks_per_s": round(report["requests"] * 1e6 / report["duration_us"], 1),
                               "p50_ms": latency["p50"] / 1000, "p99_ms": latency["p99"] / 1000})  # fmt: skip
    summary: dict[str, object] = {
        path: {key: statistics.median(run[key] for run in values) for key in values[0]} for path, values in runs.items()
    }
    summary["runs"] = runs
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="failovers of each kind (default 5)")
    parser.add_argument("--relay-seconds", type=int, default=5, help="each wrk run of the relay cost (default 5)")
    args = parser.parse_args(argv)
    seconds: dict[str, list[float]] = {way: [] for way in WAYS}
    with tempfile.TemporaryDirectory() as folder, EmbeddedValkey(Path(folder) / "valkey") as valkey:
        env = {"LOCKGATE_REDIS_URL": valkey.url, "LOCKGATE_LOG_LEVEL": "warning"}
        active = ServerProcess(Path(folder) / "a", env=env, shards=64).start()
        standby = ServerProcess(Path(folder) / "b", env=env, shards=64).start(until="/readyz")
        try:
            for _ in range(args.rounds):
                for way in WAYS:
                    stopped_at = time.monotonic()
                    active.kill() if way == "kill -9" else active.stop()
                    seconds[way].append(serving_after(standby, stopped_at))
                    active.start(until="/healthz")
                    active, standby = standby, active
            standby.wait_ready("/readyz")  # relaying (after the failovers: its checks leave state behind)
            relay = relay_cost(active, standby, args.relay_seconds, rounds=2)
        finally:
            active.stop()
            standby.stop()
    summary = {way: {"median_s": round(statistics.median(values), 3), "max_s": round(max(values), 3),
                     "runs": [round(value, 3) for value in values]} for way, values in seconds.items()}  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    document = {"machine": machine_facts(), "shards": 64, "failover": summary, "relay": relay}
    RESULTS.write_text(json.dumps(document, indent=2))
    for path in ("direct", "relayed"):
        figures = relay[path]
        assert isinstance(figures, dict)
        print(f"{path:>8}: {figures['checks_per_s']:,.0f} checks/s, p50 {figures['p50_ms']:.2f} ms, "
              f"p99 {figures['p99_ms']:.2f} ms (median of 2 runs)")  # fmt: skip
    for way, figures in summary.items():
        median, most = figures["median_s"], figures["max_s"]
        print(f"{way:>8}: the standby serves after {median:.2f} s (median), {most:.2f} s (max)")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
