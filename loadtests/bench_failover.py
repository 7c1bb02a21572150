"""Failover time (`make bench-failover`): how soon a standby serves once the active node dies.

Two server processes (64 shards) on one Valkey (appendfsync always), one active and one
standing by. Each round stops the active node, by kill -9 (its ownership leases must run
out, 3 s from its last renewal) or by SIGTERM (it lets go at once), and times until the
standby's /readyz?active=1 answers 200 (it serves the shards itself); the stopped node then
comes back as the new standby.
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

from .common import machine_facts

RESULTS = Path(__file__).parent / "results" / "failover.json"
WAYS = ("kill -9", "SIGTERM")
READY_POLL_S = 0.01
GIVE_UP_S = 30.0


def serving_after(standby: ServerProcess, since: float) -> float:
    while standby.get_status(SERVING) != 200:
        if time.monotonic() - since > GIVE_UP_S:
            raise RuntimeError(f"the standby did not take over within {GIVE_UP_S} s:\n{standby.log()}")
        time.sleep(READY_POLL_S)
    return time.monotonic() - since


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="failovers of each kind (default 5)")
    args = parser.parse_args(argv)
    seconds: dict[str, list[float]] = {way: [] for way in WAYS}
    with tempfile.TemporaryDirectory() as folder, EmbeddedValkey(Path(folder) / "valkey") as valkey:
        env = {"LOCKGATE_REDIS_URL": valkey.url, "LOCKGATE_LOG_LEVEL": "warning"}
        active = ServerProcess(Path(folder) / "a", env=env, shards=64).start()
        standby = ServerProcess(Path(folder) / "b", env=env, shards=64).start(until="/healthz")
        try:
            for _ in range(args.rounds):
                for way in WAYS:
                    stopped_at = time.monotonic()
                    active.kill() if way == "kill -9" else active.stop()
                    seconds[way].append(serving_after(standby, stopped_at))
                    active.start(until="/healthz")
                    active, standby = standby, active
        finally:
            active.stop()
            standby.stop()
    summary = {way: {"median_s": round(statistics.median(values), 3), "max_s": round(max(values), 3),
                     "runs": [round(value, 3) for value in values]} for way, values in seconds.items()}  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": machine_facts(), "shards": 64, "failover": summary}, indent=2))
    for way, figures in summary.items():
        median, most = figures["median_s"], figures["max_s"]
        print(f"{way:>8}: the standby serves after {median:.2f} s (median), {most:.2f} s (max)")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
