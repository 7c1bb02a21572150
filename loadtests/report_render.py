"""REPORT.md and the PNG plots from the document loadtests/report.py gathers (results/report.json).

Kept apart from the runs so the report can be redrawn without measuring again:
`python -m loadtests.report --render-only`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.patches
import matplotlib.pyplot as plt
import matplotlib.ticker

PLOTS = {
    "peers": "throughput_vs_peers.png",
    "latency": "latency_percentiles.png",
    "gateway_mix": "gateway_mix_p99.png",
    "concurrency": "concurrency_sweep.png",
    "batch": "batch_size_vs_load.png",
    "shards": "shards_scaling.png",
}
LOCKGATE, PEER, PEER2 = "#1f5fa8", "#c0792b", "#8c8c8c"
THRESHOLD_MS = 20.0
BUSY_PCT = 95
"""% of one core from which a process counts as busy (the same bar shard_findings uses)."""
SAME_WITHIN = 0.10
"""Figures within 10% of each other are "the same" in the prose: run-to-run noise here is 15-35%."""
_LATE_GRANTS = "grants read after their lease could have expired"
"""The locustfile's figure for grants it could not check (older verdicts have no "grants checked")."""

Row = dict[str, Any]


def _bench(document: dict[str, Any], name: str) -> dict[str, Any] | None:
    bench = document.get("benches", {}).get(name)
    if bench and bench.get("status") == "ok":
        result: dict[str, Any] = bench["document"]
        return result
    return None


def _why_missing(document: dict[str, Any], name: str) -> str:
    bench = document.get("benches", {}).get(name)
    if bench is None:
        return "not run"
    return f"not measured ({bench.get('status')}: {bench.get('reason', '')})"


def _n(value: Any, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return f"{value:,.{digits}f}"
    return str(value)


def _met(value: Any) -> str:
    return {True: "**met**", False: "missed", None: "not measured"}[value if isinstance(value, bool) else None]


# --- the headline table ----------------------------------------------------------------------------
def headline_rows(document: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []

    def add(issue: str, target: str, figure: str, met: bool | None, command: str) -> None:
        rows.append({"issue": issue, "target": target, "figure": figure, "met": met, "command": command})

    engine = _bench(document, "engine")
    command = "make bench-engine"
    if engine:
        work, ratios = engine["workloads"], engine["ratios"]
        minimum = engine.get("targets", {}).get("ratio_min", 10)
        pairs, checks = ratios["lock_pairs_engine_over_redis_py"], ratios["checks_engine_over_limits"]
        add(
            "2",
            f"Engine lock pairs/s ≥ {minimum:g}x redis-py `Lock`",
            f"{_n(work['engine_lock_pairs']['ops_per_s'])} vs {_n(work['redis_py_lock_pairs']['ops_per_s'])}/s = "
            f"{pairs:.2f}x",
            pairs >= minimum,
            command,
        )
        add(
            "2",
            f"Engine checks/s ≥ {minimum:g}x `limits`",
            f"{_n(work['engine_checks']['ops_per_s'])} vs {_n(work['limits_checks']['ops_per_s'])}/s = {checks:.2f}x",
            checks >= minimum,
            command,
        )
    else:
        for target in ("Engine lock pairs/s ≥ 10x redis-py `Lock`", "Engine checks/s ≥ 10x `limits`"):
            add("2", target, _why_missing(document, "engine"), None, command)

    http = _bench(document, "http")
    command = "make bench-http"
    labels = {
        "lock_pairs_vs_etcd": "HTTP lock pairs/s ≥ 1.5x etcd 3.4",
        "lock_pairs_vs_redis_py": "HTTP lock pairs/s ≥ 1.5x redis-py `Lock`",
        "checks_vs_limits": "HTTP single checks/s ≥ 1.5x `limits`",
        "batched_checks_per_s": "Batched checks ≥ 150,000/s (100 per request)",
        "contended_p99_wait_ms": "64 clients on one lock: p99 wait ≤ 50 ms",
        "contended_strict_fifo": "64 clients on one lock: strict FIFO",
        "checks_share_of_ceiling": "Check route ≥ 60% of the bare-ASGI ceiling",
        "lock_routes_share_of_ceiling": "Lock routes ≥ 60% of the bare-ASGI ceiling",
    }
    if http:
        scenarios, targets = http["scenarios"], http["targets"]

        def rate(name: str, key: str = "ops_per_s") -> str:
            return _n(scenarios.get(name, {}).get(key))

        def versus(ours: str, theirs: str, unit: str) -> Callable[[Any], str]:
            return lambda value: f"{rate(ours)} vs {rate(theirs)} {unit} = {_n(value, 2)}x"

        def share(ours: str) -> Callable[[Any], str]:
            return lambda value: (
                f"{rate(ours, 'requests_per_s')} vs {rate('bare_asgi_hello', 'requests_per_s')} req/s = "
                f"{_n(100 * value)}%"
            )

        def fifo(_: Any) -> str:
            row = scenarios.get("lockgate_contended", {}).get("fifo", {})
            return f"{row.get('overtaken')} overtaken of {_n(row.get('grants_checked'))} grants"

        redis_py_wait = _n(scenarios.get("redis_py_contended", {}).get("p99_ms"), 1)
        figures: dict[str, Callable[[Any], str]] = {
            "lock_pairs_vs_etcd": versus("lockgate_lock_pairs", "etcd_lock_pairs", "pairs/s"),
            "lock_pairs_vs_redis_py": versus("lockgate_lock_pairs", "redis_py_lock_pairs", "pairs/s"),
            "checks_vs_limits": versus("lockgate_checks", "limits_checks", "checks/s"),
            "batched_checks_per_s": lambda value: f"{_n(value)} checks/s",
            "contended_p99_wait_ms": lambda value: f"p99 {_n(value, 1)} ms (redis-py: {redis_py_wait} ms)",
            "contended_strict_fifo": fifo,
            "checks_share_of_ceiling": share("lockgate_checks"),
            "lock_routes_share_of_ceiling": share("lockgate_lock_pairs"),
        }
        for name, label in labels.items():
            target = targets.get(name, {})
            value = target.get("value")
            figure = (
                figures[name](value)
                if value is not None
                else "n/a"
                + (f" ({http.get('skipped', {}).get('etcd_lock_pairs')})" if name == "lock_pairs_vs_etcd" else "")
            )
            add("3", label, figure, target.get("met"), command)
    else:
        for label in labels.values():
            add("3", label, _why_missing(document, "http"), None, command)

    sdk = _bench(document, "sdk")
    command = "make bench-sdk"
    if sdk:
        results, ratios = sdk["results"], sdk["ratios"]
        pairs, checks = ratios["sdk_lock_pairs_vs_redis_py"], ratios["sdk_checks_vs_limits"]
        add(
            "4",
            "SDK lock pairs/s ≥ 2x redis-py `Lock`",
            f"{_n(results['sdk_lock_pairs']['ops_per_s'])} vs {_n(results['redis_py_lock_pairs']['ops_per_s'])}/s = "
            f"{pairs:.2f}x",
            pairs >= 2,
            command,
        )
        add(
            "4",
            "SDK checks/s ≥ 2x `limits`",
            f"{_n(results['sdk_checks']['ops_per_s'])} vs {_n(results['limits_checks']['ops_per_s'])}/s = "
            f"{checks:.2f}x",
            checks >= 2,
            command,
        )
    else:
        for label in ("SDK lock pairs/s ≥ 2x redis-py `Lock`", "SDK checks/s ≥ 2x `limits`"):
            add("4", label, _why_missing(document, "sdk"), None, command)

    gateway = _bench(document, "gateway")
    command = "make bench-gateway"
    if gateway:
        work, targets = gateway["workloads"], gateway.get("targets", {})
        ratio = gateway.get("ratios", {}).get("check_endpoint_over_limits")
        grpc = work.get("grpc", {})
        add(
            "5",
            "Gateway check endpoint ≥ 1.5x `limits` (Zipf keys)",
            f"{_n(work['check_endpoint']['ops_per_s'])} vs {_n(work['limits_checks']['ops_per_s'])} checks/s = "
            f"{_n(ratio, 2)}x",
            targets.get("check_ratio_met"),
            command,
        )
        add(
            "5",
            "gRPC ShouldRateLimit ≥ 5,000/s with p99 ≤ 20 ms",
            f"{_n(grpc.get('ops_per_s'))}/s, p99 {_n(grpc.get('p99_ms'), 1)} ms",
            targets.get("grpc_met"),
            command,
        )
    else:
        labels_5 = (
            "Gateway check endpoint ≥ 1.5x `limits` (Zipf keys)",
            "gRPC ShouldRateLimit ≥ 5,000/s with p99 ≤ 20 ms",
        )
        for label in labels_5:
            add("5", label, _why_missing(document, "gateway"), None, command)

    mix = document.get("gateway_mix")
    command = "make bench (Locust gateway mix)"
    label = "Locust gateway mix: check p99 ≤ 20 ms where `limits`' p99 crosses 20 ms"
    if mix and mix.get("steps"):
        if mix.get("crossing_offered_per_s") is not None:
            figure = (
                f"at {_n(mix['crossing_offered_per_s'])} offered checks/s: Lockgate p99 "
                f"{_n(mix['lockgate_p99_at_crossing_ms'])} ms, limits {_n(mix['limits_p99_at_crossing_ms'])} ms"
            )
        else:
            top = max(row["offered_per_s"] for row in mix["steps"])
            figure = f"limits' p99 stayed ≤ 20 ms up to {_n(top)} offered checks/s: no crossing in this run"
        add("6", label, figure, mix.get("met"), command)
    else:
        add("6", label, "not run", None, command)
    checked = correctness(document)
    add(
        "6",
        "Locust scenarios: no correctness violation (locks, semaphores, counters, rate limits)",
        checked["figure"],
        checked["met"],
        "make bench-locust",
    )

    state = _bench(document, "state")
    command = "make bench-state"
    if state:
        per_object, targets_bytes = state["bytes_per_object"], state.get("targets_bytes", {})
        for kind, label in (
            ("ratelimit", "an idle rate-limit key"),
            ("counter", "a counter"),
            ("unheld_lock", "an unheld lock"),
        ):
            limit = targets_bytes.get(kind)
            figures = per_object.get(kind, {})
            worst = max(figures.values()) if figures else None
            add(
                "7",
                f"Memory of {label} ≤ {limit} bytes",
                f"{_n(figures.get('rss'))} B (RSS), {_n(figures.get('tracemalloc'))} B (tracemalloc)",
                worst <= limit if worst is not None and limit else None,
                command,
            )
        engine_part, targets = state["engine"], state.get("targets", {})
        objects = engine_part.get("objects")
        scale = "" if (objects or 0) >= 1_000_000 else f" (this run: {_n(objects)} objects, not 1,000,000)"
        pause = engine_part.get("longest_request_during_snapshot_ms")
        add(
            "7",
            f"Longest request pause during a snapshot ≤ {targets.get('longest_pause_ms', 20)} ms{scale}",
            f"{_n(pause, 1)} ms (fork {_n(engine_part.get('fork_pause_ms'), 1)} ms)",
            pause <= targets.get("longest_pause_ms", 20) if pause is not None else None,
            command,
        )
        recovery = engine_part.get("recovery_seconds_to_ready")
        add(
            "7",
            f"Recovery to ready ≤ {targets.get('recovery_seconds', 5)} s{scale}",
            f"{_n(recovery, 2)} s for {_n(engine_part.get('recovered_objects'))} objects",
            recovery <= targets.get("recovery_seconds", 5) if recovery is not None else None,
            command,
        )
    else:
        add(
            "7",
            "State targets (bytes per object, snapshot pause, recovery)",
            _why_missing(document, "state"),
            None,
            command,
        )
    return rows


def _passed(outcome: dict[str, Any]) -> bool:
    """As loadtests/scenarios/run.py judges a Locust run: exit 0, and a merged verdict that is ok."""
    verdict = outcome.get("verdict") or {}
    return outcome.get("exit_code") == 0 and bool(verdict.get("ok")) and not verdict.get("violations")


def correctness(document: dict[str, Any]) -> dict[str, Any]:
    """Every Locust run of this report: violations, what was checked, and which runs did not pass."""
    runs: list[tuple[str, dict[str, Any], int | None]] = []
    failed: list[str] = []
    outcomes = [
        (f"gateway mix vs {row['target']} at {row['offered_per_s']}/s", row)
        for row in (document.get("gateway_mix") or {}).get("steps", [])
    ]
    outcomes += list((document.get("scenarios") or {}).items())
    for name, outcome in outcomes:
        runs.append((name, outcome.get("verdict") or {}, outcome.get("exit_code")))
        if not _passed(outcome):
            failed.append(name)
    if not runs:
        return {"figure": "not run", "met": None, "runs": [], "violations": 0, "details": [], "failed": []}
    violations = sum(verdict.get("violations", 0) for _, verdict, _ in runs)
    details = [
        {"run": name, **detail}
        for name, verdict, _ in runs
        for scenario in verdict.get("scenarios", {}).values()
        for detail in scenario.get("violation_details", [])
    ]
    parts = [f"{violations} violations in {len(runs)} Locust runs"]
    scenarios = document.get("scenarios") or {}
    jobs = _scenario_summary(scenarios.get("JobWorker"))
    if jobs:
        figures = jobs.get("figures", {})
        checked = figures.get("grants checked", figures.get("grants", 0) - figures.get(_LATE_GRANTS, 0))
        parts.append(f"{_n(checked)} lock grants checked")
    pool = _scenario_summary(scenarios.get("SemaphoreContender"))
    if pool:
        parts.append(f"most live permit holders {pool.get('most_live_holders_seen')} of {pool.get('permits')}")
    counters = _scenario_summary(scenarios.get("CounterClient"))
    if counters:
        parts.append(
            f"counters {_n(counters.get('final_sum'))} = {_n(counters.get('acknowledged_adds'))} acknowledged adds"
        )
    if failed:
        parts.append(f"did not pass: {', '.join(failed)}")
    return {
        "figure": "; ".join(parts),
        "met": violations == 0 and not failed,
        "runs": runs,
        "violations": violations,
        "details": details,
        "failed": failed,
    }


def _scenario_summary(outcome: dict[str, Any] | None) -> dict[str, Any]:
    if not outcome:
        return {}
    scenarios = (outcome.get("verdict") or {}).get("scenarios", {})
    return next(iter(scenarios.values()), {})


# --- plots -----------------------------------------------------------------------------------------
def _save(figure: Any, folder: Path, key: str, drawn: list[str]) -> None:
    figure.tight_layout()
    figure.savefig(folder / PLOTS[key], dpi=110)
    plt.close(figure)
    drawn.append(key)


def plot_peers(document: dict[str, Any], folder: Path, drawn: list[str]) -> None:
    engine, http, sdk, gateway = (_bench(document, name) for name in ("engine", "http", "sdk", "gateway"))
    locks: list[tuple[str, list[tuple[str, float, str]]]] = []
    checks: list[tuple[str, list[tuple[str, float, str]]]] = []
    if engine:
        work = engine["workloads"]
        locks.append(
            (
                "engine, no HTTP",
                [
                    ("Lockgate engine", work["engine_lock_pairs"]["ops_per_s"], LOCKGATE),
                    ("redis-py Lock", work["redis_py_lock_pairs"]["ops_per_s"], PEER),
                ],
            )
        )
        checks.append(
            (
                "engine, no HTTP",
                [
                    ("Lockgate engine", work["engine_checks"]["ops_per_s"], LOCKGATE),
                    ("limits", work["limits_checks"]["ops_per_s"], PEER),
                ],
            )
        )
    if http:
        rows = http["scenarios"]
        bars = (
            [("Lockgate over HTTP", rows["lockgate_lock_pairs"]["ops_per_s"], LOCKGATE)]
            if "lockgate_lock_pairs" in rows
            else []
        )
        if "etcd_lock_pairs" in rows:
            bars.append(("etcd 3.4 over HTTP", rows["etcd_lock_pairs"]["ops_per_s"], PEER2))
        if "redis_py_lock_pairs" in rows:
            bars.append(("redis-py Lock (direct)", rows["redis_py_lock_pairs"]["ops_per_s"], PEER))
        locks.append(("HTTP bench", bars))
        bars = [
            ("Lockgate single, HTTP", rows[name]["ops_per_s"], LOCKGATE)
            for name in ("lockgate_checks",)
            if name in rows
        ]
        bars += [
            ("Lockgate batched, HTTP", rows[name]["ops_per_s"], LOCKGATE)
            for name in ("lockgate_batch_checks",)
            if name in rows
        ]
        bars += [("limits (direct)", rows[name]["ops_per_s"], PEER) for name in ("limits_checks",) if name in rows]
        checks.append(("HTTP bench", bars))
    if sdk:
        results = sdk["results"]
        locks.append(
            (
                "SDK (AsyncClient)",
                [
                    ("Lockgate SDK", results["sdk_lock_pairs"]["ops_per_s"], LOCKGATE),
                    ("redis-py Lock (direct)", results["redis_py_lock_pairs"]["ops_per_s"], PEER),
                ],
            )
        )
        checks.append(
            (
                "SDK (AsyncClient)",
                [
                    ("Lockgate SDK", results["sdk_checks"]["ops_per_s"], LOCKGATE),
                    ("limits (direct)", results["limits_checks"]["ops_per_s"], PEER),
                ],
            )
        )
    if gateway:
        work = gateway["workloads"]
        bars = [("check endpoint", work["check_endpoint"]["ops_per_s"], LOCKGATE)]
        if work.get("grpc"):
            bars.append(("gRPC RLS", work["grpc"]["ops_per_s"], LOCKGATE))
        bars.append(("limits (direct)", work["limits_checks"]["ops_per_s"], PEER))
        checks.append(("gateway, Zipf keys", bars))
    if not locks and not checks:
        return
    figure, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for axis, groups, title, unit in (
        (axes[0], locks, "Lock acquire + release pairs", "pairs/s"),
        (axes[1], checks, "Rate-limit checks", "checks/s"),
    ):
        labels, values, colors, ticks, position = [], [], [], [], 0.0
        for group, bars in groups:
            for label, value, color in bars:
                labels.append(f"{label}\n[{group}]")
                values.append(value)
                colors.append(color)
                ticks.append(position)
                position += 1
            position += 0.6
        axis.barh(ticks, values, color=colors)
        axis.set_yticks(ticks, labels, fontsize=8)
        axis.invert_yaxis()
        axis.set_xlabel(unit)
        axis.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:,.0f}"))
        axis.set_xlim(0, max(values, default=1) * 1.18)
        axis.set_title(title)
        for tick, value in zip(ticks, values, strict=True):
            axis.text(value, tick, f" {value:,.0f}", va="center", fontsize=8)
        axis.grid(axis="x", alpha=0.3)
    figure.suptitle("Throughput against each peer (same machine, same Valkey, appendfsync always)")
    _save(figure, folder, "peers", drawn)


def latency_series(document: dict[str, Any]) -> list[tuple[str, dict[str, float | None], str]]:
    series: list[tuple[str, dict[str, float | None], str]] = []
    http = _bench(document, "http")
    if http:
        names = {
            "bare_asgi_hello": ("bare ASGI ceiling", PEER2),
            "lockgate_lock_pairs": ("Lockgate lock routes", LOCKGATE),
            "etcd_lock_pairs": ("etcd lock routes", PEER2),
            "lockgate_checks": ("Lockgate check", LOCKGATE),
            "limits_checks": ("limits check (direct)", PEER),
            "lockgate_contended": ("Lockgate contended wait", LOCKGATE),
            "redis_py_contended": ("redis-py contended wait", PEER),
        }
        for name, (label, color) in names.items():
            row = http["scenarios"].get(name)
            if row:
                series.append((f"{label}\n(HTTP bench)", {q: row.get(f"{q}_ms") for q in ("p50", "p90", "p99")}, color))
    mix = document.get("gateway_mix") or {}
    if mix.get("steps"):
        load = mix.get("crossing_offered_per_s") or max(row["offered_per_s"] for row in mix["steps"])
        for row in mix["steps"]:
            if row["offered_per_s"] == load:
                color = LOCKGATE if row["target"] == "lockgate" else PEER
                series.append(
                    (
                        f"{row['target']} check\n(Locust mix, {load:,.0f}/s)",
                        {q: row.get(f"{q}_ms") for q in ("p50", "p90", "p99")},
                        color,
                    )
                )
    for name, label in (
        ("JobWorker", "lock acquire (wait)"),
        ("SemaphoreContender", "semaphore acquire"),
        ("CounterClient", "counter add"),
    ):
        outcome = (document.get("scenarios") or {}).get(name)
        row = (outcome or {}).get("stats", {}).get(label)
        if row:
            series.append(
                (f"Lockgate {label}\n(Locust)", {q: row.get(f"{q}_ms") for q in ("p50", "p90", "p99")}, LOCKGATE)
            )
    return series


def plot_latency(document: dict[str, Any], folder: Path, drawn: list[str]) -> None:
    series = latency_series(document)
    if not series:
        return
    figure, axis = plt.subplots(figsize=(10, 0.55 * len(series) + 1.5))
    height = 0.27
    shades = (("p50", 0.35), ("p90", 0.65), ("p99", 1.0))
    for offset, (quantile, alpha) in enumerate(shades):
        ys = [index + (offset - 1) * height for index in range(len(series))]
        values = [(figures.get(quantile) or 0.0) for _, figures, _ in series]
        axis.barh(ys, values, height, color=[color for *_, color in series], alpha=alpha)
    axis.set_xscale("log")
    axis.set_xlabel("ms (log scale)")
    axis.set_yticks(range(len(series)), [label.replace("\n", " ") for label, *_ in series], fontsize=8)
    axis.invert_yaxis()
    axis.axvline(THRESHOLD_MS, color="red", lw=0.8, ls="--")
    handles = [matplotlib.patches.Patch(color="black", alpha=alpha, label=quantile) for quantile, alpha in shades]
    axis.legend(handles=handles, fontsize=8, loc="lower right")
    axis.set_title("Latency percentiles, p50 / p90 / p99 (blue: Lockgate, orange/grey: peers; red: 20 ms)")
    axis.grid(axis="x", alpha=0.3)
    _save(figure, folder, "latency", drawn)


def plot_gateway_mix(document: dict[str, Any], folder: Path, drawn: list[str]) -> None:
    mix = document.get("gateway_mix") or {}
    if not mix.get("steps"):
        return
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for target, color in (("lockgate", LOCKGATE), ("limits", PEER)):
        rows = sorted((row for row in mix["steps"] if row["target"] == target), key=lambda row: row["offered_per_s"])
        offered = [row["offered_per_s"] for row in rows]
        left.plot(offered, [row["p99_ms"] or 0 for row in rows], "o-", color=color, label=f"{target} p99")
        left.plot(offered, [row["p50_ms"] or 0 for row in rows], "o:", color=color, alpha=0.6, label=f"{target} p50")
        right.plot(offered, [row["achieved_per_s"] or 0 for row in rows], "o-", color=color, label=target)
    left.axhline(THRESHOLD_MS, color="red", lw=0.8, ls="--", label="20 ms")
    if mix.get("crossing_offered_per_s"):
        left.axvline(mix["crossing_offered_per_s"], color="grey", lw=0.8, ls=":", label="limits' p99 crosses 20 ms")
    left.set_yscale("log")
    left.set_xlabel("offered checks/s (Locust users x 20/s)")
    left.set_ylabel("ms (log scale)")
    left.set_title("Check latency under the gateway mix")
    left.legend(fontsize=8)
    top = max(row["offered_per_s"] for row in mix["steps"])
    right.plot([0, top], [0, top], color="grey", lw=0.6, ls="--", label="offered")
    right.set_xlabel("offered checks/s")
    right.set_ylabel("achieved checks/s")
    right.set_title("Achieved load")
    right.legend(fontsize=8)
    for axis in (left, right):
        axis.grid(alpha=0.3)
    _save(figure, folder, "gateway_mix", drawn)


def plot_concurrency(document: dict[str, Any], folder: Path, drawn: list[str]) -> None:
    sweep = document.get("concurrency") or {}
    if not sweep.get("rows"):
        return
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for target, color in (("lockgate", LOCKGATE), ("limits", PEER)):
        rows = [row for row in sweep["rows"] if row["target"] == target]
        connections = [row["connections"] for row in rows]
        left.plot(connections, [row["ops_per_s"] for row in rows], "o-", color=color, label=target)
        right.plot(connections, [row["p99_ms"] for row in rows], "o-", color=color, label=f"{target} p99")
        right.plot(connections, [row["p50_ms"] for row in rows], "o:", color=color, alpha=0.6, label=f"{target} p50")
    for axis in (left, right):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrent connections (wrk)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    left.set_ylabel("checks/s")
    left.set_title("Throughput of single checks over HTTP")
    right.set_yscale("log")
    right.set_ylabel("ms (log scale)")
    right.axhline(THRESHOLD_MS, color="red", lw=0.8, ls="--")
    right.set_title("Latency")
    _save(figure, folder, "concurrency", drawn)


def plot_batch(document: dict[str, Any], folder: Path, drawn: list[str]) -> None:
    rows = [row for row in (document.get("concurrency") or {}).get("rows", []) if row.get("commit")]
    if not rows:
        return
    figure, axis = plt.subplots(figsize=(8, 4.5))
    connections = [row["connections"] for row in rows]
    axis.plot(
        connections,
        [row["commit"]["ops_per_commit"] for row in rows],
        "o-",
        color=LOCKGATE,
        label="mean ops per commit",
    )
    axis.plot(
        connections,
        [row["commit"].get("ops_per_commit_p99_le") or 0 for row in rows],
        "v:",
        color=LOCKGATE,
        alpha=0.6,
        label="p99 ops per commit (bucket bound)",
    )
    axis.set_xscale("log", base=2)
    axis.set_yscale("log", base=2)
    axis.set_xlabel("concurrent connections (wrk, single checks)")
    axis.set_ylabel("ops per commit (log scale)")
    other = axis.twinx()
    other.plot(connections, [row["commit"]["commits_per_s"] for row in rows], "s--", color=PEER, label="commits/s")
    other.set_ylabel("commits/s", color=PEER)
    lines = axis.get_legend_handles_labels()
    more = other.get_legend_handles_labels()
    axis.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="upper left")
    axis.set_title("Group commit: batch size against load (lockgate_commit_batch_ops)")
    axis.grid(alpha=0.3)
    _save(figure, folder, "batch", drawn)


def plot_shards(document: dict[str, Any], folder: Path, drawn: list[str]) -> None:
    rows = (document.get("shards") or {}).get("rows", [])
    if not rows:
        return
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    shard_counts = sorted({row["shards"] for row in rows})
    palette = plt.get_cmap("viridis")
    for index, shards in enumerate(shard_counts):
        mine = [row for row in rows if row["shards"] == shards]
        color = palette(index / max(1, len(shard_counts) - 1) * 0.85)
        clients = [row["connections"] for row in mine]
        axes[0].plot(clients, [row["ops_per_s"] for row in mine], "o-", color=color, label=f"{shards} shards")
        axes[1].plot(
            clients,
            [row.get("server_cpu_pct") or 0 for row in mine],
            "o-",
            color=color,
            label=f"server, {shards} shards",
        )
        axes[1].plot(clients, [row.get("store_cpu_pct") or 0 for row in mine], "x:", color=color, alpha=0.7)
        axes[2].plot(
            clients,
            [row.get("commit", {}).get("ops_per_commit") or 0 for row in mine],
            "o-",
            color=color,
            label=f"{shards} shards",
        )
    axes[0].set_title("Checks/s by shards x clients")
    axes[0].set_ylabel("checks/s")
    axes[1].set_title("CPU, % of one core (o: server worker, x: Valkey)")
    axes[1].axhline(100, color="red", lw=0.8, ls="--")
    axes[1].set_ylabel("% of one core")
    axes[2].set_title("Ops per commit")
    axes[2].set_yscale("log", base=2)
    for axis in axes:
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrent clients (wrk connections)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    _save(figure, folder, "shards", drawn)


# --- the markdown --------------------------------------------------------------------------------------
def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def headline_table(rows: list[Row]) -> list[str]:
    return _table(
        ["issue", "target", "figure", "verdict", "reproduce"],
        [[row["issue"], row["target"], row["figure"], _met(row["met"]), f"`{row['command']}`"] for row in rows],
    )


# (target, multiplier, peer's scenario and bench, HTTP requests per counted op)
_CEILING_CHECKS: list[tuple[str, float, str, str, int]] = [
    ("HTTP lock pairs/s ≥ 1.5x etcd 3.4", 1.5, "etcd_lock_pairs", "http", 2),
    ("HTTP lock pairs/s ≥ 1.5x redis-py `Lock`", 1.5, "redis_py_lock_pairs", "http", 2),
    ("HTTP single checks/s ≥ 1.5x `limits`", 1.5, "limits_checks", "http", 1),
    ("Gateway check endpoint ≥ 1.5x `limits`", 1.5, "limits_checks", "gateway", 1),
]


def ceiling_rows(document: dict[str, Any]) -> tuple[float, list[list[str]]]:
    """Per ratio target over plain HTTP: the request rate it asks of one worker, against the
    rate the bare-ASGI hello-world (the same decode and encode, no work) reached in the same run.
    Above that ceiling no one-worker HTTP server can meet the target on this machine."""
    http = _bench(document, "http") or {}
    ceiling = (http.get("scenarios", {}).get("bare_asgi_hello") or {}).get("requests_per_s")
    if not ceiling:
        return 0.0, []
    rows = []
    for label, multiplier, peer, bench, requests_per_op in _CEILING_CHECKS:
        found = _bench(document, bench) or {}
        row = (found.get("scenarios") or found.get("workloads") or {}).get(peer) or {}
        if not row.get("ops_per_s"):
            continue
        needed = multiplier * row["ops_per_s"] * requests_per_op
        verdict = "above the ceiling: out of reach for one worker here" if needed > ceiling else "below the ceiling"
        rows.append([label, f"{_n(needed)} req/s", f"{_n(100 * needed / ceiling)}%", verdict])
    return ceiling, rows


def _ceiling_section(document: dict[str, Any]) -> list[str]:
    ceiling, rows = ceiling_rows(document)
    if not rows:
        return []
    return [
        "## Which ratio targets one worker can reach here",
        "",
        f"The bare ASGI app on the same HTTP server (decode and encode a check, nothing else) answered "
        f"{_n(ceiling)} req/s in this run: the most any one-worker HTTP service can answer on this machine with "
        "this load generator. redis-py and `limits` are measured as their users call them, straight to Valkey "
        "with no HTTP in between, so a ratio over them asks for this many HTTP requests per second:",
        "",
        *_table(["target", "asks for", "of the ceiling", "so"], rows),
        "",
    ]


def shard_findings(document: dict[str, Any]) -> list[str]:
    rows = (document.get("shards") or {}).get("rows", [])
    findings: list[str] = []
    capacity = 100 * ((document.get("machine") or {}).get("cpu_count") or 1)
    for shards in sorted({row["shards"] for row in rows}):
        mine = sorted((row for row in rows if row["shards"] == shards), key=lambda row: row["connections"])
        peak = max(mine, key=lambda row: row["ops_per_s"])
        busy = next((row for row in mine if (row.get("server_cpu_pct") or 0) >= BUSY_PCT), None)
        machine = sum(peak.get(key) or 0 for key in ("server_cpu_pct", "store_cpu_pct", "client_cpu_pct"))
        worker = (
            f"the server worker is at {_n(busy.get('server_cpu_pct'))}% of a core from {busy['connections']} clients "
            f"on ({_n(busy['ops_per_s'])} checks/s, {_n((busy.get('commit') or {}).get('ops_per_commit'), 1)} ops per "
            "commit); "
            if busy
            else f"the server worker never reached {BUSY_PCT}% of a core; "
        )
        findings.append(
            f"- {shards} shard{'s' if shards != 1 else ''}: {worker}peak {_n(peak['ops_per_s'])} checks/s at "
            f"{peak['connections']} clients, {_n((peak.get('commit') or {}).get('ops_per_commit'), 1)} ops per commit, "
            f"where server, Valkey and wrk together use {_n(machine)}% of the machine's {capacity}% (Valkey "
            f"{_n(peak.get('store_cpu_pct'))}%)."
        )
    return findings


def render(document: dict[str, Any], folder: Path) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    for name in PLOTS.values():
        (folder / name).unlink(missing_ok=True)
    drawn: list[str] = []
    for plot in (plot_peers, plot_latency, plot_gateway_mix, plot_concurrency, plot_batch, plot_shards):
        plot(document, folder, drawn)
    rows = headline_rows(document)
    checked = correctness(document)
    machine, store, versions = document.get("machine", {}), document.get("store", {}), document.get("versions", {})
    etcd = ((_bench(document, "http") or {}).get("versions") or {}).get("etcd")
    lines: list[str] = [
        "# Lockgate benchmark report",
        "",
        f"Regenerate with `{document['command']}` (this is a **{document['mode']}** run of "
        f"{_n(document.get('duration_s', 0) / 60, 1)} min, started {document['started_at']}"
        + (", with `--only " + ",".join(document["only"]) + "`" if document.get("only") else "")
        + "). `make bench` is the full run (about 15 min); `make bench BENCH_ARGS=--quick` takes about 5.",
        "",
        "## Setup",
        "",
        f"- Machine: {machine.get('cpu_count')} cores, {machine.get('cpu_model')}, {machine.get('platform')}; "
        f"load average {machine.get('load_average_at_start')} at the start, {machine.get('load_average_at_end')} "
        "at the end (the machine was shared with other work: absolute figures are noisy, ratios within one run "
        "are what to compare).",
        "- **Client and server share the machine**: every load generator (wrk, Locust, the Python drivers), "
        "every server (Lockgate, the peers) and Valkey run on these cores, on 127.0.0.1.",
        f"- Store: Valkey {store.get('valkey_version')}, `appendonly {store.get('appendonly')}`, "
        f"**`appendfsync {store.get('appendfsync')}`** (every acknowledged write is fsynced), data on "
        f"{store.get('data_dir_filesystem')}. Every benchmark starts its own Valkey this way; its peers use the "
        "same one.",
        f"- Versions: Python {versions.get('python')}, lockgate-server {versions.get('lockgate_server')} "
        f"(git {versions.get('git_commit')}{', uncommitted changes' if versions.get('git_dirty') else ''}), "
        f"lockgate SDK {versions.get('lockgate_sdk')}, httptools {versions.get('httptools')}, uvloop "
        f"{versions.get('uvloop')}, msgspec {versions.get('msgspec')}, redis-py {versions.get('redis_py')}, limits "
        f"{versions.get('limits')}, Locust {versions.get('locust')}, {versions.get('wrk') or 'wrk n/a'}"
        + (f", etcd {etcd}" if etcd else "")
        + ".",
        "- Lockgate runs as a user starts it: `python -m lockgate_server`, one process: our HTTP/1.1 server "
        "(lockgate_server/http1.py) on uvloop, 64 shards unless a sweep says otherwise. The `limits` peer over "
        "HTTP is the same kind of process (loadtests/scenarios/limits_app.py on that server, one "
        "`FixedWindowRateLimiter.hit` per request, "
        "redis-py to the same Valkey).",
        "",
        "## Headline: the targets of issues 2 to 7",
        "",
        *headline_table(rows),
        "",
    ]
    if checked["details"]:
        lines += ["**Correctness violations seen:**", ""]
        lines += [f"- {detail}" for detail in checked["details"][:20]]
        lines.append("")
    lines += _bench_status(document)
    lines += _ceiling_section(document)
    if "peers" in drawn:
        lines += [
            "## Throughput against each peer",
            "",
            f"![throughput against peers]({PLOTS['peers']})",
            "",
            "Each group is one benchmark run with its peers on the same Valkey, so compare bars within a group. "
            "Engine: 64 callers in-process, no HTTP. HTTP bench: wrk, 64 connections to Lockgate and etcd's "
            "HTTP gateway; redis-py and limits are called directly by 64 Python tasks (their usual use, no HTTP in "
            "between). SDK: 64 tasks through one `AsyncClient` (auto-batching) vs the same direct peers. Gateway: "
            "wrk on `/check/{domain}` with Zipf keys, the gRPC driver, limits direct.",
            "",
        ]
    if "latency" in drawn:
        lines += [
            "## Latency percentiles",
            "",
            f"![latency percentiles]({PLOTS['latency']})",
            "",
            "Contended waits are the time from sending a blocking acquire to the grant; Locust latencies of "
            "acquires include the time spent waiting in the queue by design.",
            "",
        ]
    lines += _gateway_section(document, drawn)
    lines += _scenario_section(document)
    lines += _concurrency_section(document, drawn)
    lines += _shard_section(document, drawn)
    lines += [
        "## How each figure is made",
        "",
        "- `make bench-engine`, `bench-http`, `bench-sdk`, `bench-gateway`, `bench-state`: see each module's "
        "docstring in loadtests/; `make bench` runs them as they are (`--quick` passes through) and reads their "
        "JSON.",
        "- `make bench-locust`: the four Locust scenarios (loadtests/scenarios/locustfile.py), 100 users (200 "
        "semaphore contenders), 30 s each, headless, against a fresh server; exits 1 on any violation, and on "
        "a run whose checks could not mean much (a task exception, more failed requests than the locustfile's "
        "MAX_FAILED_SHARE, a server not ready at the end, or nothing to check, such as no denial or no lock "
        "granted twice).",
        "- Percentiles: wrk's latency histogram (HTTP benches, sweeps), Locust's (rounded to 2 significant "
        "digits above 100 ms), our own sorted samples (Python drivers).",
        "",
    ]
    (folder / "REPORT.md").write_text("\n".join(lines))
    problems = _problems(document, checked)
    headline_text = "\n".join(headline_table(rows))
    return {"plots": drawn, "headline_text": headline_text, "problems": problems, "rows": rows}


def _bench_status(document: dict[str, Any]) -> list[str]:
    benches = document.get("benches", {})
    if not benches:
        return []
    rows = [
        [
            name,
            bench.get("status", "?"),
            _n(bench.get("seconds"), 0),
            f"`{bench.get('command', '')}`",
            bench.get("reason", ""),
        ]
        for name, bench in benches.items()
    ]
    return [
        "### The runs behind the table",
        "",
        *_table(["benchmark", "status", "seconds", "command", "note"], rows),
        "",
    ]


def _gateway_section(document: dict[str, Any], drawn: list[str]) -> list[str]:
    mix = document.get("gateway_mix") or {}
    if not mix.get("steps"):
        return []
    lines = [
        "## Locust gateway mix: Lockgate against `limits` as the load grows",
        "",
        f"{_gateway_workload(mix)} (fixed windows on both sides), from Locust users that each "
        f"send {_n(mix.get('user_rate'))} checks/s on average (Poisson arrivals, so the offered load does not "
        f"wait for slow answers), in {mix.get('locust_processes', 1)} Locust process"
        f"{'es' if mix.get('locust_processes', 1) != 1 else ''}; "
        f"{_n(mix.get('seconds_per_step'))} s per step after all users started. Both answer the same route with "
        "the same body; Lockgate makes each answer durable (group-committed, fsynced) before replying, limits "
        "makes one Redis call per check on the same Valkey. Every step also checks that no fixed window admitted "
        "more than its limit (exactly for Lockgate, whose answers carry `remaining`; per key for limits).",
        "",
    ]
    if "gateway_mix" in drawn:
        lines += [f"![gateway mix]({PLOTS['gateway_mix']})", ""]
    rows = [
        [
            _n(row["offered_per_s"]),
            row["target"],
            _n(row["users"]),
            _n(row["achieved_per_s"]),
            _n(row["p50_ms"]),
            _n(row["p90_ms"]),
            _n(row["p99_ms"]),
            _n(row["failures"]),
            _n(row["violations"]),
        ]
        for row in sorted(mix["steps"], key=lambda row: (row["offered_per_s"], row["target"]))
    ]
    lines += _table(
        ["offered/s", "target", "users", "achieved/s", "p50 ms", "p90 ms", "p99 ms", "failures", "violations"], rows
    )
    lines.append("")
    if mix.get("crossing_offered_per_s") is not None:
        lines.append(
            f"limits' p99 first passes 20 ms at {_n(mix['crossing_offered_per_s'])} offered checks/s "
            f"({_n(mix['limits_p99_at_crossing_ms'])} ms); Lockgate's p99 there is "
            f"{_n(mix['lockgate_p99_at_crossing_ms'])} ms: target {_met(mix.get('met'))}."
        )
    else:
        lines.append("limits' p99 did not pass 20 ms at any step of this run, so the target could not be evaluated.")
    lines.append("")
    return lines


def _gateway_workload(mix: dict[str, Any]) -> str:
    """The mix as the locustfile reported it in its verdict (so the prose follows the code that ran)."""
    workload = next(
        (
            found
            for row in mix["steps"]
            if (found := ((row.get("verdict") or {}).get("scenarios", {}).get("GatewayUser") or {}).get("workload"))
        ),
        None,
    )
    if not workload:
        return "Rate-limit checks over Zipf-distributed keys plus a few hot keys (loadtests/scenarios/locustfile.py)"
    return (
        f"Rate-limit checks over {_n(workload['keys'])} keys drawn Zipf-like (exponent {workload['zipf_exponent']:g}) "
        f"at {_n(workload['limit'])} per {_n(workload['period_ms'] / 1000)} s per key, plus {workload['hot_keys']} "
        f"hot keys taking {_n(100 * workload['hot_share'])}% of the checks at {_n(workload['hot_limit'])} per "
        f"{_n(workload['hot_period_ms'] / 1000)} s"
    )


def _scenario_section(document: dict[str, Any]) -> list[str]:
    scenarios = document.get("scenarios") or {}
    if not scenarios:
        return []
    lines = [
        "## Locust scenarios with correctness checks",
        "",
        "Each client records what it holds in a shared check object (one Locust process): a lock grant read "
        "while another live holder is recorded, a fencing token that does not grow, more than 8 live semaphore "
        "holders, a renew/release refused although the lease could not have expired, two acknowledged counter "
        "adds with the same value, or a final counter that is not its acknowledged adds, is a violation and fails "
        "the run. See loadtests/scenarios/locustfile.py for why the client-side view is a sound check.",
        "",
    ]
    rows = []
    for name, outcome in scenarios.items():
        for label, stats in outcome.get("stats", {}).items():
            if label == "Aggregated":
                continue
            rows.append(
                [
                    name,
                    _n(outcome["users"]),
                    label,
                    _n(stats["requests"]),
                    _n(stats["requests_per_s"]),
                    _n(stats["p50_ms"]),
                    _n(stats["p99_ms"]),
                    _n(stats["failures"]),
                ]
            )
    lines += _table(["scenario", "users", "request", "count", "req/s", "p50 ms", "p99 ms", "failures"], rows)
    lines.append("")
    for name, outcome in scenarios.items():
        summary = _scenario_summary(outcome)
        shown = {key: value for key, value in summary.items() if key not in ("violation_details", "counters")}
        lines.append(f"- {name}: exit {outcome.get('exit_code')}; `{shown}`")
    lines.append("")
    return lines


def _concurrency_section(document: dict[str, Any], drawn: list[str]) -> list[str]:
    sweep = document.get("concurrency") or {}
    if not sweep.get("rows"):
        return [f"## Concurrency sweep\n\n{sweep['skipped']}\n"] if sweep.get("skipped") else []
    lines = [
        "## Concurrency: 1 to 256 connections",
        "",
        f"Single rate checks over {_n(sweep.get('keys'))} keys (loadtests/http/checks.lua), wrk with "
        f"{sweep.get('wrk_threads')} threads, {sweep.get('seconds_per_step')} s per step, against Lockgate and the "
        "limits peer behind the same route.",
        "",
    ]
    if "concurrency" in drawn:
        lines += [f"![concurrency sweep]({PLOTS['concurrency']})", ""]
    if "batch" in drawn:
        lines += [
            "### Batch size against load",
            "",
            f"![batch size]({PLOTS['batch']})",
            "",
            "From the server's `lockgate_commit_batch_ops` histogram, read before and after each step. The ops "
            "that arrive while a commit is in flight join the next one (group commit). "
            + _batch_findings(sweep["rows"]),
            "",
        ]
    rows = []
    for row in sweep["rows"]:
        commit = row.get("commit") or {}
        rows.append(
            [
                row["target"],
                _n(row["connections"]),
                _n(row["ops_per_s"]),
                _n(row["p50_ms"], 2),
                _n(row["p99_ms"], 2),
                _n(row.get("server_cpu_pct")),
                _n(row.get("store_cpu_pct")),
                _n(commit.get("ops_per_commit"), 1) if commit else "-",
                _n(commit.get("commits_per_s")) if commit else "-",
            ]
        )
    lines += _table(
        [
            "target",
            "connections",
            "checks/s",
            "p50 ms",
            "p99 ms",
            "server CPU %",
            "Valkey CPU %",
            "ops/commit",
            "commits/s",
        ],
        rows,
    )
    lines.append("")
    return lines


def _shard_section(document: dict[str, Any], drawn: list[str]) -> list[str]:
    sweep = document.get("shards") or {}
    if not sweep.get("rows"):
        return [f"## Shards\n\n{sweep['skipped']}\n"] if sweep.get("skipped") else []
    lines = [
        "## Scaling: shards x concurrent clients",
        "",
        "The same single checks with `LOCKGATE_SHARDS` = 1, 4, 16 and 64 (a fresh store for each) and a growing "
        f"number of wrk connections, {sweep.get('seconds_per_step')} s per point. CPU is % of one core over the "
        "window: the server's worker process, Valkey (INFO cpu) and wrk.",
        "",
    ]
    if "shards" in drawn:
        lines += [f"![shards scaling]({PLOTS['shards']})", ""]
    lines += shard_findings(document)
    lines += [
        "",
        "How shards relate to throughput: one server worker is one Python event loop. Shards are units of "
        "ownership, ordering and recovery, not of parallelism inside a process: every shard is applied on "
        "the same loop and the ops of all shards pending in one loop tick leave as one fenced script call. A "
        "commit carries one fenced append per shard it touches (an epoch check, an LSN check, an `XADD` and a "
        "`SET` each), so the same ops spread over more shards make a bigger script call and more per-shard work "
        "on the loop. " + _shard_comparison(document),
        "",
    ]
    rows = [
        [
            _n(row["shards"]),
            _n(row["connections"]),
            _n(row["ops_per_s"]),
            _n(row["p99_ms"], 2),
            _n(row.get("server_cpu_pct")),
            _n(row.get("store_cpu_pct")),
            _n(row.get("client_cpu_pct")),
            _n((row.get("commit") or {}).get("ops_per_commit"), 1),
        ]
        for row in sweep["rows"]
    ]
    lines += _table(
        ["shards", "clients", "checks/s", "p99 ms", "server CPU %", "Valkey CPU %", "wrk CPU %", "ops/commit"], rows
    )
    lines.append("")
    return lines


def _shard_comparison(document: dict[str, Any]) -> str:
    """What the sweep shows about shards and about which process is the limit, from its rows only."""
    rows = (document.get("shards") or {}).get("rows", [])
    counts = sorted({row["shards"] for row in rows})
    if not rows:
        return ""
    sentences = []
    if len(counts) > 1:
        peaks = {count: max(row["ops_per_s"] for row in rows if row["shards"] == count) for count in counts}
        fewest, most = counts[0], counts[-1]
        best = max(counts, key=lambda count: peaks[count])
        if max(peaks.values()) <= (1 + SAME_WITHIN) * min(peaks.values()):
            effect = f"the shard count made no difference beyond noise (every peak within {100 * SAME_WITHIN:g}%)"
        elif best == fewest:
            effect = "more shards cost throughput on one worker"
        else:
            effect = f"more shards added throughput (the most with {best})"
        sentences.append(
            f"In this run {effect}: the peak was {_n(peaks[fewest])} checks/s with {fewest} "
            f"shard{'s' if fewest > 1 else ''} and {_n(peaks[most])} with {most} "
            f"({_n(100 * peaks[most] / peaks[fewest]) if peaks[fewest] else 'n/a'}% of it)."
        )
    worker = max(row.get("server_cpu_pct") or 0 for row in rows)
    store = max(row.get("store_cpu_pct") or 0 for row in rows)
    if worker >= BUSY_PCT and store < BUSY_PCT:
        sentences.append(
            f"The server worker reached {_n(worker)}% of a core while Valkey stayed at or below {_n(store)}%: the "
            "one Python worker was the limit, not the store."
        )
    elif store >= BUSY_PCT:
        sentences.append(
            f"Valkey reached {_n(store)}% of a core (the server worker {_n(worker)}%): the store was busy."
        )
    else:
        sentences.append(
            f"The server worker peaked at {_n(worker)}% of a core and Valkey at {_n(store)}%: neither was pegged on "
            "its own in this run."
        )
    return " ".join(sentences)


def _batch_findings(rows: list[dict[str, Any]]) -> str:
    """Ops per commit and commits/s across the sweep, as the rows show them."""
    ours = sorted((row for row in rows if row.get("commit")), key=lambda row: row["connections"])
    if not ours:
        return ""
    first, last = ours[0], ours[-1]
    peak = max(ours, key=lambda row: row["commit"]["commits_per_s"])
    text = (
        f"In this run the ops per commit went from {_n(first['commit']['ops_per_commit'], 1)} at "
        f"{first['connections']} connection{'s' if first['connections'] != 1 else ''} to "
        f"{_n(last['commit']['ops_per_commit'], 1)} at {last['connections']}, and commits/s from "
        f"{_n(first['commit']['commits_per_s'])} to {_n(last['commit']['commits_per_s'])} (peak "
        f"{_n(peak['commit']['commits_per_s'])} at {peak['connections']} connections)."
    )
    grew = last["commit"]["ops_per_commit"] > (1 + SAME_WITHIN) * first["commit"]["ops_per_commit"]
    if grew and peak is not last:
        text += (
            f" Past {peak['connections']} connections commits/s did not grow while the ops per commit did: each "
            "commit's fixed cost (one script call, one fsync wait) was shared by more ops."
        )
    return text


def _problems(document: dict[str, Any], checked: dict[str, Any]) -> list[str]:
    problems = []
    for name, bench in document.get("benches", {}).items():
        if bench.get("status") != "ok":
            problems.append(f"benchmark {name} {bench.get('status')}: {bench.get('reason', '')}")
    if checked["violations"]:
        problems.append(f"{checked['violations']} correctness violations: {checked['details'][:5]}")
    for name, verdict, code in checked["runs"]:
        if name in checked["failed"] and not verdict.get("violations"):
            why = "; ".join(verdict.get("problems") or []) or ("no verdict" if not verdict else "see its log")
            problems.append(f"Locust run {name} did not pass (exit {code}): {why}")
    for part in ("concurrency", "shards"):
        if (document.get(part) or {}).get("skipped"):
            problems.append(f"{part} skipped: {document[part]['skipped']}")
    return problems
