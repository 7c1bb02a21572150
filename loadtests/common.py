"""Shared helpers for the load tests: a closed-loop runner, percentiles and machine facts."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

Operation = Callable[[int, int], Awaitable[bool]]
"""One measured operation: (task number, iteration) -> True if it went as expected."""


@dataclass
class Measurement:
    name: str
    seconds: float
    latencies_s: list[float]
    refused: int  # operations that returned False (a denied rate check, a lock not granted)
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def ops(self) -> int:
        return len(self.latencies_s)

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    def percentile_ms(self, fraction: float) -> float:
        return percentile(sorted(self.latencies_s), fraction) * 1000

    def summary(self) -> dict[str, object]:
        ordered = sorted(self.latencies_s)
        return {
            "ops": self.ops,
            "seconds": round(self.seconds, 3),
            "ops_per_s": round(self.ops_per_s, 1),
            "p50_ms": round(percentile(ordered, 0.50) * 1000, 3),
            "p99_ms": round(percentile(ordered, 0.99) * 1000, 3),
            "max_ms": round(ordered[-1] * 1000, 3) if ordered else 0.0,
            "refused": self.refused,
            **self.extra,
        }


def percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not ordered:
        return 0.0
    rank = max(1, round(fraction * len(ordered) + 0.5))
    return ordered[min(rank, len(ordered)) - 1]


class Watch(Protocol):
    """Something that takes readings as the measured window opens and closes."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...


async def run_closed_loop(
    name: str,
    operation: Operation,
    *,
    tasks: int,
    warmup_s: float,
    seconds: float,
    watches: Sequence[Watch] = (),
) -> Measurement:
    """`tasks` callers each run `operation` back to back; only ops wholly inside the window count."""
    clock = time.perf_counter
    start = clock() + warmup_s
    end = start + seconds

    async def caller(task: int) -> tuple[list[float], int]:
        latencies: list[float] = []
        refused = 0
        iteration = 0
        while True:
            began = clock()
            ok = await operation(task, iteration)
            ended = clock()
            iteration += 1
            if ended > end:
                return latencies, refused
            if began >= start:
                latencies.append(ended - began)
                refused += not ok

    async def timekeeper() -> None:
        await asyncio.sleep(max(0.0, start - clock()))
        for watch in watches:
            await watch.open()
        await asyncio.sleep(max(0.0, end - clock()))
        for watch in watches:
            await watch.close()

    keeper = asyncio.create_task(timekeeper())
    results = await asyncio.gather(*(caller(task) for task in range(tasks)))
    await keeper
    latencies = [latency for per_task, _ in results for latency in per_task]
    refused = sum(count for _, count in results)
    return Measurement(name=name, seconds=seconds, latencies_s=latencies, refused=refused)


class CpuWatch:
    """CPU used in the window by this process (client side) and by the Redis/Valkey server.

    Shown as percent of one core: neither side near 100% means the workload is bound by
    latency (round trips, fsync, turn-taking), not by CPU.
    """

    def __init__(self, server: Any) -> None:
        self.server = server  # a redis.asyncio.Redis for INFO cpu
        self._opened = (0.0, 0.0, 0.0)
        self._closed = (0.0, 0.0, 0.0)

    async def _reading(self) -> tuple[float, float, float]:
        info = await self.server.info("cpu")
        server_cpu = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        return time.perf_counter(), time.process_time(), server_cpu

    async def open(self) -> None:
        self._opened = await self._reading()

    async def close(self) -> None:
        self._closed = await self._reading()

    def figures(self) -> dict[str, object]:
        wall = self._closed[0] - self._opened[0]
        if wall <= 0:
            return {}
        return {
            "client_cpu_pct": round(100 * (self._closed[1] - self._opened[1]) / wall, 1),
            "server_cpu_pct": round(100 * (self._closed[2] - self._opened[2]) / wall, 1),
        }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def filesystem_of(path: Path) -> str:
    """The type of the file system holding `path` (fsync on tmpfs is free, on a disk it is not)."""
    best, kind = "", "unknown"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    resolved = str(path.resolve())
    for line in mounts:
        parts = line.split()
        if len(parts) < 3 or len(parts[1]) <= len(best):
            continue
        if resolved == parts[1] or resolved.startswith(parts[1].rstrip("/") + "/"):
            best, kind = parts[1], parts[2]
    return kind


def machine_facts() -> dict[str, object]:
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        # Other work on the machine skews every figure; worth knowing when comparing runs.
        "load_average_at_start": [round(load, 2) for load in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a process has used so far (Linux /proc), or None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) ": state is fields[0]
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Timing:
    """How long a benchmark measures each workload, normally and with --quick."""

    seconds: float
    warmup: float
    quick_seconds: float
    quick_warmup: float


def bench_parser(prog: str, doc: str | None, results: Path, timing: Timing) -> argparse.ArgumentParser:
    """The options every benchmark takes: --seconds, --warmup, --quick, --output."""
    parser = argparse.ArgumentParser(prog=f"python -m {prog}", description=(doc or "").splitlines()[0])
    parser.add_argument(
        "--seconds",
        type=float,
        default=timing.seconds,
        help=f"measured seconds per workload (default {timing.seconds:g})",
    )
    parser.add_argument(
        "--warmup", type=float, default=None, help=f"warm-up seconds per workload (default {timing.warmup:g})"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{timing.quick_seconds:g} s per workload, {timing.quick_warmup:g} s warm-up",
    )
    parser.add_argument("--output", type=Path, default=results, help=f"JSON results (default {results})")
    return parser


def apply_timing(args: argparse.Namespace, timing: Timing) -> argparse.Namespace:
    if args.quick:
        args.seconds = timing.quick_seconds
    if args.warmup is None:
        args.warmup = timing.quick_warmup if args.quick else timing.warmup
    return args
