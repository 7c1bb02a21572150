"""HTTP benchmark (`make bench-http`): Lockgate's server under wrk, against its peers, in one run.

One Valkey (appendfsync always, 127.0.0.1) serves Lockgate and the redis-py and limits
baselines. Every HTTP server runs as `lockgate-server` does: our HTTP/1.1 server, uvloop,
ASGI. wrk drives HTTP with Lua scripts (loadtests/http/) over 64 keep-alive connections,
one per wrk thread, so a script can chain calls on its connection. In order:

  redis_py_lock_pairs   redis.asyncio Lock acquire + release, 64 tasks, own names (Python)
  limits_checks         limits' FixedWindowRateLimiter (redis-py), 64 tasks, 10,000 keys (Python)
  redis_py_contended    64 tasks blocking on ONE redis-py Lock (it polls every 100 ms) (Python)
  etcd_lock_pairs       etcd 3.4 lease + lock/unlock through its HTTP gateway (wrk), if installed
  bare_asgi_hello       the HTTP ceiling: raw ASGI doing a check's msgspec decode + encode (wrk)
  litestar_hello        the same through Litestar (wrk)
  lockgate_lock_pairs   acquire -> release with the lease_id from the answer, own names (wrk)
  lockgate_contended    64 connections blocking on ONE lock: wait p99 and strict FIFO (Python)
  lockgate_checks       single rate-limit checks over 10,000 keys (wrk)
  lockgate_batch_checks POST /v1/batch of 100 checks over 10,000 keys (wrk)

If a target is missed (or with --profile always), the single-check scenario runs once more
with py-spy recording the server worker, and the top functions by own time are reported.
Client and server share the machine, so compare ratios rather than absolute figures.

    python -m loadtests.bench_http [--seconds 10] [--quick] [--profile auto|always|never]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any, BinaryIO

import msgspec
import redis
import redis.asyncio as aioredis
import uvloop

from lockgate_server.storage.embedded import EmbeddedValkey, free_port

from .bench_engine import run_limits_checks, run_redis_py_lock_pairs, store_facts
from .common import CpuWatch, Measurement, machine_facts, percentile, process_cpu_seconds

ROOT = Path(__file__).resolve().parent.parent
HTTP_DIR = Path(__file__).resolve().parent / "http"
RESULTS_PATH = Path(__file__).parent / "results" / "http.json"

CONNECTIONS = 64
KEYS = 10_000
NAMES_PER_CONNECTION = 100
BATCH_SIZE = 100
LOCK_TTL_MS = 10_000
CONTENDED_WAIT_MS = 60_000  # the server's default max_wait_ms
CONTENDED_NAMESPACE, CONTENDED_LOCK = "bench-contended", "hot"
RATE_POLICY = "1000 per 60000 ms, fixed_window (the same as the limits side)"
WRK_TIMEOUT = "5s"

TARGETS: dict[str, tuple[str, float]] = {
    "lock_pairs_vs_etcd": (">=", 1.5),
    "lock_pairs_vs_redis_py": (">=", 1.5),
    "checks_vs_limits": (">=", 1.5),
    "batched_checks_per_s": (">=", 150_000),
    "contended_p99_wait_ms": ("<=", 50.0),
    "contended_strict_fifo": ("==", 1),
    "checks_share_of_ceiling": (">=", 0.60),
    "lock_routes_share_of_ceiling": (">=", 0.60),
}

Row = dict[str, Any]


# --- processes we start -------------------------------------------------------------------------
class Served:
    """A server we start in its own session and stop with everything it spawned, also on error."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], ready_url: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log: BinaryIO = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            self._wait_ready(ready_url)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, url: str, timeout_s: float = 45.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} was not ready within {timeout_s:.0f} s: {self.log_tail()}")

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-2000:]
        return ""

    def worker_pid(self) -> int:
        """The one process that serves (its children are only short-lived snapshot writers)."""
        return self.process.pid

    def stop(self) -> None:
        group = self.process.pid  # start_new_session: the group id is our child's pid
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, signal.SIGKILL)
                self.process.wait()
        # A worker that outlived its parent is still in our group: give it a moment, then end it.
        for _ in range(50):
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        self._log.close()

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def peer_app(name: str, target: str, port: int, folder: Path) -> Served:
    """A peer app with lockgate-server's server settings (loadtests/http/serve.py)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "loadtests.http.serve", target, str(port)]
    return Served(name, command, env, f"http://127.0.0.1:{port}/healthz", folder / f"{name}.log")


def lockgate_server(valkey: EmbeddedValkey, port: int, folder: Path, shards: int) -> Served:
    binary = Path(sys.executable).with_name("lockgate-server")
    command = [str(binary)] if binary.exists() else [sys.executable, "-m", "lockgate_server"]
    env = {key: value for key, value in os.environ.items() if not key.startswith("LOCKGATE_")}
    env.update(
        LOCKGATE_HOST="127.0.0.1",
        LOCKGATE_PORT=str(port),
        LOCKGATE_REDIS_URL=valkey.url,  # the benchmark's Valkey, shared with the baselines
        LOCKGATE_DATA_DIR=str(folder / "lockgate-data"),
        LOCKGATE_SHARDS=str(shards),
        LOCKGATE_LOG_LEVEL="warning",
        LOCKGATE_GRPC_PORT="0",  # no Envoy rate-limit listener on a fixed port
    )
    return Served("lockgate", command, env, f"http://127.0.0.1:{port}/readyz", folder / "lockgate.log")


# --- wrk ----------------------------------------------------------------------------------------
def run_wrk(script: str, url: str, script_args: list[object], seconds: int) -> dict[str, Any]:
    """One wrk run, 64 threads x 1 connection; returns the JSON line report.lua prints."""
    command = [
        "wrk", f"-t{CONNECTIONS}", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "--timeout", WRK_TIMEOUT,
        "-s", script, url, "--", *map(str, script_args),
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=HTTP_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = process.communicate(timeout=seconds + 60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    line = next((line for line in out.splitlines() if line.startswith("BENCH_JSON ")), None)
    if process.returncode != 0 or line is None:
        raise RuntimeError(f"wrk {script} failed ({process.returncode}): {err.strip() or out.strip()}")
    report: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
    return report


class Readings:
    """CPU of the server worker, the store (Valkey INFO) and our reaped children (wrk) over a window."""

    def __init__(self, server_pid: int | None, valkey: redis.Redis | None) -> None:
        self.server_pid = server_pid
        self.valkey = valkey
        self.opened = self._take()

    def _take(self) -> tuple[float, float | None, float | None, float]:
        server = process_cpu_seconds(self.server_pid) if self.server_pid else None
        store = None
        if self.valkey is not None:
            info: Any = self.valkey.info("cpu")
            store = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.perf_counter(), server, store, children.ru_utime + children.ru_stime

    def figures(self) -> dict[str, float | None]:
        closed = self._take()
        wall = closed[0] - self.opened[0]

        def pct(index: int) -> float | None:
            before, after = self.opened[index], closed[index]
            return None if before is None or after is None else round(100 * (after - before) / wall, 1)

        return {"server_cpu_pct": pct(1), "store_cpu_pct": pct(2), "client_cpu_pct": pct(3)}


class CommitWatch:
    """The server's own commit figures over a window, from /metrics (none if it has no such series)."""

    OPS, APPEND = "lockgate_commit_batch_ops", "lockgate_append_latency_seconds"

    def __init__(self, metrics_url: str | None) -> None:
        self.url = metrics_url
        self.opened = self._scrape()

    def _scrape(self) -> dict[str, float]:
        if self.url is None:
            return {}
        values: dict[str, float] = {}
        with contextlib.suppress(OSError, ValueError), urllib.request.urlopen(self.url, timeout=5) as answer:
            for line in answer.read().decode().splitlines():
                if line.startswith((self.OPS, self.APPEND)) and not line.endswith("_created"):
                    name, _, value = line.rpartition(" ")
                    values[name] = float(value)
        return values

    def _bucket_percentile(self, delta: dict[str, float], fraction: float) -> float | None:
        buckets = sorted(
            (float(name.split('le="', 1)[1].rstrip('"}')), count)
            for name, count in delta.items()
            if name.startswith(self.APPEND + "_bucket") and "+Inf" not in name
        )
        total = delta.get(self.APPEND + "_count", 0.0)
        for bound, count in buckets:
            if total and count >= fraction * total:
                return bound * 1000
        return None

    def figures(self, seconds: float) -> dict[str, object]:
        closed = self._scrape()
        delta = {name: closed[name] - self.opened.get(name, 0.0) for name in closed}
        commits = delta.get(self.OPS + "_count", 0.0)
        if not commits:
            return {}
        appends = delta.get(self.APPEND + "_count", 0.0)
        return {
            "commits_per_s": round(commits / seconds, 1),
            "ops_per_commit": round(delta.get(self.OPS + "_sum", 0.0) / commits, 1),
            "append_mean_ms": round(1000 * delta.get(self.APPEND + "_sum", 0.0) / appends, 3) if appends else None,
            "append_p50_le_ms": self._bucket_percentile(delta, 0.50),
            "append_p99_le_ms": self._bucket_percentile(delta, 0.99),
            "share_of_window_in_append": round(delta.get(self.APPEND + "_sum", 0.0) / seconds, 2),
        }


def wrk_scenario(
    script: str,
    url: str,
    script_args: list[object],
    warmup_args: list[object],
    args: argparse.Namespace,
    *,
    unit: str,
    ops_counters: tuple[str, ...],
    server_pid: int,
    valkey: redis.Redis | None,
    metrics_url: str | None = None,
) -> Row:
    if args.warmup_int:
        run_wrk(script, url, warmup_args, args.warmup_int)
    commits = CommitWatch(metrics_url)
    readings = Readings(server_pid, valkey)
    report = run_wrk(script, url, script_args, args.seconds_int)
    cpu = readings.figures()
    seconds = report["duration_us"] / 1e6
    engine = commits.figures(seconds)
    counters = report["counters"]
    ops = sum(counters[name] for name in ops_counters)
    latency = report["latency_us"]
    errors = {name: count for name, count in report["errors"].items() if count}
    return {
        "driver": f"wrk -t{CONNECTIONS} -c{CONNECTIONS} -s {script}",
        "unit": unit,
        "ops": ops,
        "seconds": round(seconds, 3),
        "ops_per_s": round(ops / seconds, 1),
        "requests": report["requests"],
        "requests_per_s": round(report["requests"] / seconds, 1),
        "p50_ms": latency["p50"] / 1000,
        "p90_ms": latency["p90"] / 1000,
        "p99_ms": latency["p99"] / 1000,
        "p999_ms": latency["p999"] / 1000,
        "max_ms": latency["max"] / 1000,
        "latency_of": "each HTTP request (wrk --latency)",
        "errors": errors,
        "counters": counters,
        **cpu,
        **({"engine": engine} if engine else {}),
    }


# --- a lean HTTP/1.1 client for the contended scenario ------------------------------------------
class Connection:
    """One keep-alive HTTP/1.1 connection: write a request, read one Content-Length answer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    def send(self, method: bytes, path: bytes, body: bytes = b"") -> None:
        head = b"%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        self.writer.write(head % (method, path, len(body)) + body)

    async def answer(self) -> tuple[int, bytes]:
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return int(head[9:12]), (await self.reader.readexactly(length) if length else b"")

    async def request(self, method: bytes, path: bytes, body: bytes = b"") -> tuple[int, bytes]:
        self.send(method, path, body)
        return await self.answer()

    def close(self) -> None:
        self.writer.close()


class _Grant(msgspec.Struct):
    lease_id: str
    token: int


class _LockStatus(msgspec.Struct):
    waiters: int


def fifo_overtakes(order: list[int]) -> int:
    """Grants that went to a request queued after one still waiting: 0 means strict FIFO."""
    overtaken, latest = 0, -1
    for queued in order:
        if queued < latest:
            overtaken += 1
        latest = max(latest, queued)
    return overtaken


async def lockgate_contended(
    port: int, args: argparse.Namespace, server_pid: int, valkey_url: str, metrics_url: str
) -> Row:
    """64 connections, each: blocking acquire (wait_ms 60 s) on ONE lock, then release, again.

    Queue order is the order acquires were written (one event loop, one global sequence). In the
    steady state at most one client re-queues per hand-off, and the next re-queue can only follow
    a release round trip and a commit, so write order is arrival order. Grant order is the order
    of the fencing tokens, which grow with every grant. The initial burst of 64 simultaneous
    acquires (arrival order undefined) falls in the warm-up and is not checked.
    """
    base = f"/v1/namespaces/{CONTENDED_NAMESPACE}/locks/{CONTENDED_LOCK}".encode()
    acquire_body = b'{"ttl_ms":%d,"wait_ms":%d}' % (LOCK_TTL_MS, CONTENDED_WAIT_MS)
    grant_decoder = msgspec.json.Decoder(_Grant)
    connections = [await Connection.open(port) for _ in range(CONNECTIONS)]
    inspector = await Connection.open(port)
    admin = aioredis.Redis.from_url(valkey_url, decode_responses=True)
    cpu = CpuWatch(admin)
    clock = time.perf_counter
    start = clock() + args.warmup
    end = start + args.seconds
    sequence = itertools.count()
    grants: list[tuple[int, int, float, float]] = []  # token, queue sequence, sent, granted
    failures: Counter[str] = Counter()
    waiters_seen: list[int] = []
    server_cpu: list[float | None] = []
    commits: list[CommitWatch] = []
    loop = asyncio.get_running_loop()

    async def client(connection: Connection) -> None:
        while clock() < end:
            queued, sent = next(sequence), clock()
            connection.send(b"POST", base + b"/acquire", acquire_body)
            status, body = await connection.answer()
            granted = clock()
            if status != 200:
                failures[f"acquire {status}"] += 1
                continue
            lease = grant_decoder.decode(body)
            grants.append((lease.token, queued, sent, granted))
            status, _ = await connection.request(
                b"POST", base + b"/release", b'{"lease_id":"%s"}' % lease.lease_id.encode()
            )
            if status != 200:
                failures[f"release {status}"] += 1

    async def observer() -> None:
        await asyncio.sleep(max(0.0, start - clock()))
        commits.append(await loop.run_in_executor(None, CommitWatch, metrics_url))
        await cpu.open()
        server_cpu.append(process_cpu_seconds(server_pid))
        for _ in range(3):  # the queue's depth, as the server reports it, across the window
            await asyncio.sleep(args.seconds / 4)
            status, body = await inspector.request(b"GET", base)
            if status == 200:
                waiters_seen.append(msgspec.json.decode(body, type=_LockStatus).waiters)
        await asyncio.sleep(max(0.0, end - clock()))
        await cpu.close()
        server_cpu.append(process_cpu_seconds(server_pid))
        engine.update(await loop.run_in_executor(None, commits[0].figures, args.seconds))

    engine: dict[str, object] = {}
    try:
        await asyncio.wait_for(
            asyncio.gather(observer(), *(client(connection) for connection in connections)),
            timeout=args.warmup + args.seconds + CONTENDED_WAIT_MS / 1000 + 30,
        )
    finally:
        for connection in [*connections, inspector]:
            connection.close()
        await admin.aclose()
    waits = sorted(granted - sent for _, _, sent, granted in grants if sent >= start and granted <= end)
    in_window = sum(1 for *_, granted in grants if start <= granted <= end)
    checked = sorted((token, queued) for token, queued, sent, _ in grants if sent >= start)
    tokens = [token for token, _, _, _ in grants]
    by_token = sorted((token, granted) for token, _, _, granted in grants if start <= granted <= end)
    gaps = sorted(later - earlier for (_, earlier), (_, later) in itertools.pairwise(by_token))
    overtakes = fifo_overtakes([queued for _, queued in checked])
    figures = cpu.figures()
    before, after = server_cpu if len(server_cpu) == 2 else (None, None)
    return {
        "driver": f"Python, {CONNECTIONS} raw asyncio HTTP/1.1 connections (uvloop)",
        "unit": "grants (hand-offs)",
        "ops": in_window,
        "seconds": args.seconds,
        "ops_per_s": round(in_window / args.seconds, 1),
        "requests_per_s": round(2 * in_window / args.seconds, 1),
        "p50_ms": round(percentile(waits, 0.50) * 1000, 3),
        "p90_ms": round(percentile(waits, 0.90) * 1000, 3),
        "p99_ms": round(percentile(waits, 0.99) * 1000, 3),
        "max_ms": round(waits[-1] * 1000, 3) if waits else 0.0,
        "latency_of": "wait: acquire written -> grant read, wait_ms 60000",
        "hand_off_ms": round(1000 * args.seconds / in_window, 3) if in_window else None,
        "hand_off_gap_p50_ms": round(percentile(gaps, 0.50) * 1000, 3),
        "hand_off_gap_p99_ms": round(percentile(gaps, 0.99) * 1000, 3),
        "waiters_seen": waiters_seen,
        "fifo": {
            "grants_checked": len(checked),
            "overtaken": overtakes,
            "strict": overtakes == 0 and len(checked) > 0,
            "tokens_unique": len(set(tokens)) == len(tokens),
            "method": "grant order = fencing-token order; queue order = order acquires were written",
        },
        "errors": dict(failures),
        "server_cpu_pct": round(100 * (after - before) / args.seconds, 1) if before is not None and after else None,
        "store_cpu_pct": figures.get("server_cpu_pct"),
        "client_cpu_pct": figures.get("client_cpu_pct"),
        **({"engine": engine} if engine else {}),
    }


# --- Python baselines on the same Valkey --------------------------------------------------------
def measurement_row(measurement: Measurement, unit: str, driver: str) -> Row:
    summary = measurement.summary()
    return {
        "driver": driver,
        "unit": unit,
        "ops": summary["ops"],
        "seconds": summary["seconds"],
        "ops_per_s": summary["ops_per_s"],
        "requests_per_s": None,
        "p50_ms": summary["p50_ms"],
        "p99_ms": summary["p99_ms"],
        "max_ms": summary["max_ms"],
        "latency_of": "each operation (a pair, a check)",
        "errors": {"refused": summary["refused"]} if summary["refused"] else {},
        "server_cpu_pct": None,
        "store_cpu_pct": summary.get("server_cpu_pct"),
        "client_cpu_pct": summary.get("client_cpu_pct"),
    }


async def redis_py_contended(valkey: EmbeddedValkey, args: argparse.Namespace, cpu: CpuWatch) -> Row:
    """64 tasks blocking on one redis-py Lock (it retries every `sleep` = 100 ms by default)."""
    client = aioredis.Redis.from_url(valkey.url, max_connections=CONNECTIONS)
    clock = time.perf_counter
    start = clock() + args.warmup
    end = start + args.seconds
    sequence = itertools.count()
    grants: list[tuple[float, int, float]] = []  # granted, queue sequence, sent

    async def one() -> None:
        while clock() < end:
            lock = client.lock(
                f"{CONTENDED_NAMESPACE}:{CONTENDED_LOCK}", timeout=LOCK_TTL_MS / 1000, blocking_timeout=60
            )
            queued, sent = next(sequence), clock()
            if await lock.acquire():
                grants.append((clock(), queued, sent))
                await lock.release()

    async def keeper() -> None:
        await asyncio.sleep(max(0.0, start - clock()))
        await cpu.open()
        await asyncio.sleep(max(0.0, end - clock()))
        await cpu.close()

    try:
        await asyncio.wait_for(asyncio.gather(keeper(), *(one() for _ in range(CONNECTIONS))), args.seconds + 120)
    finally:
        await client.aclose()
    waits = sorted(granted - sent for granted, _, sent in grants if sent >= start and granted <= end)
    in_window = sum(1 for granted, _, _ in grants if start <= granted <= end)
    order = [queued for _, queued, sent in sorted(grants) if sent >= start]
    figures = cpu.figures()
    return {
        "driver": f"Python, redis.asyncio Lock, {CONNECTIONS} tasks, blocking (polls every 100 ms)",
        "unit": "grants",
        "ops": in_window,
        "seconds": args.seconds,
        "ops_per_s": round(in_window / args.seconds, 1),
        "requests_per_s": None,
        "p50_ms": round(percentile(waits, 0.50) * 1000, 3),
        "p90_ms": round(percentile(waits, 0.90) * 1000, 3),
        "p99_ms": round(percentile(waits, 0.99) * 1000, 3),
        "max_ms": round(waits[-1] * 1000, 3) if waits else 0.0,
        "latency_of": "wait: acquire called -> acquired",
        "fifo": {
            "grants_checked": len(order),
            "overtaken": fifo_overtakes(order),
            "strict": fifo_overtakes(order) == 0 and len(order) > 0,
            "method": "grant order as the client saw it (no tokens); queue order = order acquire was called",
        },
        "errors": {},
        "server_cpu_pct": None,
        "store_cpu_pct": figures.get("server_cpu_pct"),
        "client_cpu_pct": figures.get("client_cpu_pct"),
    }


async def python_baselines(valkey: EmbeddedValkey, args: argparse.Namespace) -> dict[str, Row]:
    admin = aioredis.Redis.from_url(valkey.url, decode_responses=True)
    rows: dict[str, Row] = {}
    try:
        await admin.flushall()
        cpu = CpuWatch(admin)
        pairs = await run_redis_py_lock_pairs(valkey, args, cpu)
        pairs.extra.update(cpu.figures())
        rows["redis_py_lock_pairs"] = measurement_row(
            pairs, "acquire+release pairs", f"Python, redis.asyncio Lock, {CONNECTIONS} tasks, own names"
        )
        print_row("redis_py_lock_pairs", rows["redis_py_lock_pairs"])
        await admin.flushall()
        cpu = CpuWatch(admin)
        checks = await run_limits_checks(valkey, args, cpu)
        checks.extra.update(cpu.figures())
        rows["limits_checks"] = measurement_row(
            checks, "checks", f"Python, limits FixedWindowRateLimiter (redispy), {CONNECTIONS} tasks, {KEYS:,} keys"
        )
        print_row("limits_checks", rows["limits_checks"])
        await admin.flushall()
        rows["redis_py_contended"] = await redis_py_contended(valkey, args, CpuWatch(admin))
        print_row("redis_py_contended", rows["redis_py_contended"])
        await admin.flushall()
    finally:
        await admin.aclose()
    return rows


# --- etcd ---------------------------------------------------------------------------------------
def etcd_lock_pairs(folder: Path, args: argparse.Namespace) -> tuple[Row | None, str | None, str | None]:
    """etcd 3.4 on 127.0.0.1 with its data in the temp folder; (row, version, why skipped)."""
    binary = shutil.which("etcd")
    if binary is None:
        return None, None, "etcd is not installed (apt-get install etcd-server); etcd baseline skipped"
    client_url, peer_url = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    command = [
        binary, "--name", "bench", "--data-dir", str(folder / "etcd"),
        "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
        "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
        "--initial-cluster", f"bench={peer_url}", "--logger", "zap", "--log-level", "warn",
    ]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if not key.startswith("ETCD")}
    with Served("etcd", command, env, client_url + "/health", folder / "etcd.log") as etcd:
        with urllib.request.urlopen(client_url + "/version", timeout=2) as answer:
            etcd_version = json.loads(answer.read()).get("etcdserver")
        row = wrk_scenario(
            "etcd_lock_pairs.lua", client_url, [NAMES_PER_CONNECTION, "bench"], [NAMES_PER_CONNECTION, "warm"],
            args, unit="lock+unlock pairs", ops_counters=("pairs_done",), server_pid=etcd.process.pid, valkey=None,
        )  # fmt: skip
    return row, etcd_version, None


# --- Lockgate and its HTTP peers ----------------------------------------------------------------
def peer_ceilings(folder: Path, args: argparse.Namespace) -> dict[str, Row]:
    rows: dict[str, Row] = {}
    for name, target in (
        ("bare_asgi_hello", "loadtests.http.hello_asgi:app"),
        ("litestar_hello", "loadtests.http.hello_litestar:app"),
    ):
        port = free_port()
        with peer_app(name, target, port, folder) as app:
            rows[name] = wrk_scenario(
                "checks.lua", f"http://127.0.0.1:{port}", ["bench-checks", KEYS], ["bench-checks", KEYS], args,
                unit="requests (check decode+encode)", ops_counters=("ok", "denied"),
                server_pid=app.worker_pid(), valkey=None,
            )  # fmt: skip
        print_row(name, rows[name])
    return rows


def lockgate_scenarios(
    server: Served, url: str, port: int, valkey: EmbeddedValkey, admin: redis.Redis, args: argparse.Namespace
) -> dict[str, Row]:
    rows: dict[str, Row] = {}
    pid = server.worker_pid()
    metrics = url + "/metrics"
    rows["lockgate_lock_pairs"] = wrk_scenario(
        "lock_pairs.lua", url, ["bench-locks", NAMES_PER_CONNECTION], ["bench-locks-warmup", NAMES_PER_CONNECTION],
        args, unit="acquire+release pairs", ops_counters=("pairs_done",), server_pid=pid, valkey=admin,
        metrics_url=metrics,
    )  # fmt: skip
    print_row("lockgate_lock_pairs", rows["lockgate_lock_pairs"])
    rows["lockgate_contended"] = uvloop.run(lockgate_contended(port, args, pid, valkey.url, metrics))
    print_row("lockgate_contended", rows["lockgate_contended"])
    rows["lockgate_checks"] = wrk_scenario(
        "checks.lua", url, ["bench-checks", KEYS], ["bench-checks", KEYS], args,
        unit="checks", ops_counters=("ok", "denied"), server_pid=pid, valkey=admin,
        metrics_url=metrics,
    )  # fmt: skip
    print_row("lockgate_checks", rows["lockgate_checks"])
    rows["lockgate_batch_checks"] = wrk_scenario(
        "batch.lua", url, ["bench-batch", KEYS, BATCH_SIZE], ["bench-batch", KEYS, BATCH_SIZE], args,
        unit=f"checks ({BATCH_SIZE} per request)", ops_counters=("ok", "denied"), server_pid=pid, valkey=admin,
        metrics_url=metrics,
    )  # fmt: skip
    print_row("lockgate_batch_checks", rows["lockgate_batch_checks"])
    return rows


# --- profile ------------------------------------------------------------------------------------
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>.*?)(?::\d+)?\)$")


def _where(path: str) -> str:
    for marker in ("site-packages/", "lockgate_server/", "lib/python3"):
        if marker in path:
            tail = path.split(marker, 1)[1]
            if marker == "lockgate_server/":
                return "lockgate_server/" + tail
            if marker == "lib/python3":
                return "stdlib/" + tail.split("/", 1)[-1]
            return tail
    return path


PROFILE_RATE_HZ = 100  # py-spy's default sampling rate
_NATIVE = "[native: uvloop's loop and socket I/O, under the server's entry frame]"


def summarize_profile(raw: str, seconds: float, top: int = 15) -> dict[str, Any]:
    """py-spy `--threads -f raw` lines are `thread;frame;...;leaf count`: own time is the leaf's.

    Only the main thread runs the event loop and every line of Lockgate, HTTP included; other
    threads (the redis client's, the executor's) are summarized by their busy share.
    """
    threads: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    modules: Counter[str] = Counter()
    main = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        thread, *frames_text = stack.split(";")
        threads[thread] += count
        if "MainThread" not in thread:
            continue
        main += count
        frames = []
        for frame in frames_text:
            match = _FRAME.match(frame)
            frames.append((match["function"], _where(match["file"])) if match else (frame, "?"))
        leaf_function, leaf_file = frames[-1] if frames else ("?", "?")
        native = leaf_file.startswith(("uvloop/", "stdlib/asyncio/runners"))
        own[_NATIVE if native else f"{leaf_function} ({leaf_file})"] += count
        module = leaf_file if leaf_file.startswith("lockgate_server/") else leaf_file.split("/")[0]
        modules["native loop" if native else module] += count
        for label in {f"{function} ({file})" for function, file in frames}:
            inclusive[label] += count

    def share(counter: Counter[str], skip_whole: bool = False) -> list[dict[str, object]]:
        ranked = [(label, n) for label, n in counter.most_common() if not (skip_whole and n >= main)]
        return [{"where": label, "pct": round(100 * n / main, 1)} for label, n in ranked[:top]] if main else []

    expected = seconds * PROFILE_RATE_HZ
    return {
        "main_thread_samples": main,
        "busy_pct_by_thread": {name: round(100 * n / expected, 1) for name, n in threads.most_common()},
        "top_own": share(own),
        "top_inclusive": share(inclusive, skip_whole=True),
        "own_by_module": share(modules),
        "note": (
            "percentages of the main (event-loop) thread's non-idle samples; busy_pct_by_thread is samples over "
            f"{PROFILE_RATE_HZ} Hz x seconds, so 100% = the thread never idled"
        ),
    }


def profile_scenario(
    server: Served,
    url: str,
    folder: Path,
    args: argparse.Namespace,
    scenario: str,
    script: str,
    script_args: list[object],
) -> dict[str, Any]:
    """A scenario again, with py-spy sampling the server worker (a few % slower while sampled)."""
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(pyspy).exists():
        return {"skipped": "py-spy is not installed (.venv/bin/pip install py-spy)"}
    duration = max(2, min(8, args.seconds_int))
    raw_path = folder / f"{scenario}.pyspy.raw"
    pid = server.worker_pid()
    command = [pyspy, "record", "-p", str(pid), "-d", str(duration), "-f", "raw", "--threads", "-o", str(raw_path)]
    outcome: dict[str, Any] = {}

    async def together() -> None:
        loop = asyncio.get_running_loop()
        load = loop.run_in_executor(None, run_wrk, script, url, script_args, duration + 3)
        await asyncio.sleep(1.0)
        spy = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        try:
            _, err = await asyncio.wait_for(spy.communicate(), timeout=duration + 30)
        finally:
            if spy.returncode is None:
                spy.kill()
                await spy.wait()
        outcome["wrk"] = await load
        if spy.returncode != 0:
            outcome["error"] = err.decode(errors="replace").strip()[-500:]

    uvloop.run(together())
    if "error" in outcome or not raw_path.exists():
        return {"skipped": f"py-spy failed: {outcome.get('error', 'no output')}"}
    report = outcome["wrk"]
    return {
        "scenario": f"{scenario} (again, while sampled)",
        "command": " ".join(command[:-2]),
        "worker_pid": pid,
        "seconds": duration,
        "requests_per_s_while_sampled": round(report["requests"] / (report["duration_us"] / 1e6), 1),
        **summarize_profile(raw_path.read_text(), duration),
    }


# --- report -------------------------------------------------------------------------------------
def _ratio(numerator: Row | None, denominator: Row | None, key: str = "ops_per_s") -> float | None:
    if not numerator or not denominator or not numerator.get(key) or not denominator.get(key):
        return None
    return round(numerator[key] / denominator[key], 2)


def evaluate(rows: dict[str, Row]) -> tuple[dict[str, float | None], dict[str, dict[str, object]]]:
    contended = rows.get("lockgate_contended")
    ratios: dict[str, float | None] = {
        "lock_pairs_vs_etcd": _ratio(rows.get("lockgate_lock_pairs"), rows.get("etcd_lock_pairs")),
        "lock_pairs_vs_redis_py": _ratio(rows.get("lockgate_lock_pairs"), rows.get("redis_py_lock_pairs")),
        "checks_vs_limits": _ratio(rows.get("lockgate_checks"), rows.get("limits_checks")),
        "batched_checks_per_s": rows["lockgate_batch_checks"]["ops_per_s"] if "lockgate_batch_checks" in rows else None,
        "contended_p99_wait_ms": contended["p99_ms"] if contended else None,
        "contended_strict_fifo": (1 if contended["fifo"]["strict"] else 0) if contended else None,
        "checks_share_of_ceiling": _ratio(rows.get("lockgate_checks"), rows.get("bare_asgi_hello"), "requests_per_s"),
        "lock_routes_share_of_ceiling": _ratio(
            rows.get("lockgate_lock_pairs"), rows.get("bare_asgi_hello"), "requests_per_s"
        ),
        # context, no target
        "batch_requests_share_of_ceiling": _ratio(
            rows.get("lockgate_batch_checks"), rows.get("bare_asgi_hello"), "requests_per_s"
        ),
        "litestar_share_of_ceiling": _ratio(rows.get("litestar_hello"), rows.get("bare_asgi_hello"), "requests_per_s"),
        "contended_p99_redis_py_over_lockgate": _ratio(rows.get("redis_py_contended"), contended, "p99_ms"),
    }
    targets: dict[str, dict[str, object]] = {}
    for name, (relation, goal) in TARGETS.items():
        value = ratios.get(name)
        met = (
            None
            if value is None
            else (value >= goal if relation == ">=" else value <= goal if relation == "<=" else value == goal)
        )
        targets[name] = {"target": f"{relation} {goal:g}", "value": value, "met": met}
    return ratios, targets


def any_missed(targets: dict[str, dict[str, object]]) -> bool:
    return any(target["met"] is False for target in targets.values())


def print_row(name: str, row: Row) -> None:
    requests = f"{row['requests_per_s']:>10,.0f} req/s" if row.get("requests_per_s") else ""
    print(f"  {name:<24}{row['ops_per_s']:>12,.0f} {row['unit']}/s {requests}", flush=True)


def _pct(value: object) -> str:
    return f"{value:.0f}%" if isinstance(value, int | float) else "-"


def print_table(document: dict[str, Any]) -> None:
    machine, store, config = document["machine"], document["store"], document["config"]
    print()
    print(
        f"Lockgate HTTP benchmark: {config['connections']} connections, {config['seconds_per_scenario']} s per "
        f"scenario; servers: {config['server']}"
    )
    print(
        f"machine: {machine['cpu_count']} CPUs, {machine['cpu_model']}, load {machine['load_average_at_start']} -> "
        f"{machine['load_average_at_end']}; Valkey {store['valkey_version']} appendfsync={store['appendfsync']} on "
        f"{store['data_dir_filesystem']}; client and server share the machine"
    )
    print()
    header = (
        f"{'scenario':<24}{'ops/s':>11}  {'unit':<24}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
        f"{'server':>8}{'valkey':>8}{'client':>8}"
    )
    print(header)
    print("-" * len(header))
    for name, row in document["scenarios"].items():
        requests = f"{row['requests_per_s']:,.0f}" if row.get("requests_per_s") else "-"
        errors = sum(row.get("errors", {}).values())
        print(
            f"{name:<24}{row['ops_per_s']:>11,.0f}  {row['unit'][:23]:<24}{requests:>9}{row['p50_ms']:>9.2f}"
            f"{row['p99_ms']:>9.2f}{errors:>8,}{_pct(row.get('server_cpu_pct')):>8}{_pct(row.get('store_cpu_pct')):>8}"
            f"{_pct(row.get('client_cpu_pct')):>8}"
        )
    print("(CPU as % of one core over the window: server = the HTTP server's worker or etcd; client = wrk or Python)")
    for name, reason in document["skipped"].items():
        print(f"skipped {name}: {reason}")
    for name, row in document["scenarios"].items():
        if "engine" in row:
            engine = row["engine"]
            print(
                f"{name}: {engine['commits_per_s']:,.0f} commits/s, {engine['ops_per_commit']} ops per commit, "
                f"append (script call + fsync) mean {engine['append_mean_ms']} ms, p99 <= {engine['append_p99_le_ms']} "
                f"ms; appends in flight {100 * engine['share_of_window_in_append']:.0f}% of the window"
            )
    contended = document["scenarios"].get("lockgate_contended")
    if contended:
        fifo = contended["fifo"]
        print(
            f"\ncontended: wait p50 {contended['p50_ms']:.1f} ms, p99 {contended['p99_ms']:.1f} ms, max "
            f"{contended['max_ms']:.1f} ms; one hand-off per {contended['hand_off_ms']} ms (gap p50 "
            f"{contended['hand_off_gap_p50_ms']:.2f}, p99 {contended['hand_off_gap_p99_ms']:.2f} ms); waiters seen "
            f"{contended['waiters_seen']}; FIFO {'strict' if fifo['strict'] else 'NOT strict'} "
            f"({fifo['overtaken']} overtaken of {fifo['grants_checked']:,} grants checked)"
        )
    print()
    for name, target in document["targets"].items():
        value = target["value"]
        shown = "n/a" if value is None else f"{value:,.2f}" if isinstance(value, float) else f"{value:,}"
        verdict = {True: "met", False: "NOT met", None: "not measured"}[target["met"]]
        print(f"  {name:<30}{shown:>12}   target {target['target']:<10} {verdict}")
    print(
        "  context: litestar share of ceiling "
        f"{document['ratios']['litestar_share_of_ceiling']}, batch requests share of ceiling "
        f"{document['ratios']['batch_requests_share_of_ceiling']}, redis-py contended p99 / Lockgate "
        f"{document['ratios']['contended_p99_redis_py_over_lockgate']}"
    )
    for name, profile in (document.get("profile") or {}).items():
        if "top_own" not in profile:
            print(f"\nprofile of {name}: {profile.get('skipped')}")
            continue
        busy = ", ".join(f"{thread} {pct}%" for thread, pct in profile["busy_pct_by_thread"].items())
        print(
            f"\nprofile of the server worker during {name} ({profile['requests_per_s_while_sampled']:,.0f} req/s "
            f"while sampled; busy: {busy}); main thread, top by own time:"
        )
        for entry in profile["top_own"][:12]:
            print(f"  {entry['pct']:>5.1f}%  {entry['where']}")
        print("  by module: " + ", ".join(f"{e['where']} {e['pct']}%" for e in profile["own_by_module"][:8]))
    print(f"\nnote: {document['note']}")


def tool_version(command: list[str]) -> str | None:
    try:
        output = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (output.stdout or output.stderr).strip().splitlines()[0] if (output.stdout or output.stderr) else None


# --- the run ------------------------------------------------------------------------------------
def run(folder: Path, valkey: EmbeddedValkey, args: argparse.Namespace) -> dict[str, Any]:
    async def facts() -> dict[str, object]:
        admin = aioredis.Redis.from_url(valkey.url, decode_responses=True)
        try:
            return await store_facts(admin, valkey)
        finally:
            await admin.aclose()

    store = uvloop.run(facts())
    if store["appendfsync"] != "always":
        raise SystemExit(f"Valkey reports appendfsync={store['appendfsync']!r}, expected 'always'")
    rows: dict[str, Row] = {}
    skipped: dict[str, str] = {}
    rows.update(uvloop.run(python_baselines(valkey, args)))
    etcd_row, etcd_version, why = etcd_lock_pairs(folder, args)
    if etcd_row is not None:
        rows["etcd_lock_pairs"] = etcd_row
        print_row("etcd_lock_pairs", etcd_row)
    else:
        skipped["etcd_lock_pairs"] = why or "unknown"
        print(f"  etcd_lock_pairs: skipped ({why})", flush=True)
    rows.update(peer_ceilings(folder, args))
    admin = redis.Redis.from_url(valkey.url, decode_responses=True)
    profile: dict[str, dict[str, Any]] | None = None
    try:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with lockgate_server(valkey, port, folder, args.shards) as server:
            rows.update(lockgate_scenarios(server, url, port, valkey, admin, args))
            _, targets = evaluate(rows)
            if args.profile == "always" or (args.profile == "auto" and any_missed(targets)):
                print("  profiling the server worker with py-spy during single checks, then batches ...", flush=True)
                profile = {
                    "lockgate_checks": profile_scenario(
                        server, url, folder, args, "lockgate_checks", "checks.lua", ["bench-checks", KEYS]
                    ),
                    "lockgate_batch_checks": profile_scenario(
                        server,
                        url,
                        folder,
                        args,
                        "lockgate_batch_checks",
                        "batch.lua",
                        ["bench-batch", KEYS, BATCH_SIZE],
                    ),
                }
    finally:
        admin.close()
    order = [
        "bare_asgi_hello", "litestar_hello", "lockgate_lock_pairs", "etcd_lock_pairs", "redis_py_lock_pairs",
        "lockgate_contended", "redis_py_contended", "lockgate_checks", "limits_checks", "lockgate_batch_checks",
    ]  # fmt: skip
    scenarios = {name: rows[name] for name in order if name in rows}
    ratios, targets = evaluate(rows)
    return {
        "store": store,
        "scenarios": scenarios,
        "skipped": skipped,
        "ratios": ratios,
        "targets": targets,
        "profile": profile,
        "etcd_version": etcd_version,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_http", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per scenario (default 10)")
    parser.add_argument("--warmup", type=float, default=None, help="warm-up seconds per scenario (default 1)")
    parser.add_argument("--quick", action="store_true", help="3 s per scenario, 1 s warm-up")
    parser.add_argument("--shards", type=int, default=64, help="LOCKGATE_SHARDS for the server (default 64)")
    parser.add_argument(
        "--profile", choices=("auto", "always", "never"), default="auto",
        help="py-spy the server during single checks: when a target is missed (auto), always or never",
    )  # fmt: skip
    parser.add_argument("--output", type=Path, default=RESULTS_PATH, help=f"JSON results (default {RESULTS_PATH})")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds = 3.0
    if args.warmup is None:
        args.warmup = 1.0
    # wrk takes whole seconds
    args.seconds_int = max(1, math.ceil(args.seconds))
    args.warmup_int = math.ceil(args.warmup) if args.warmup > 0 else 0
    args.seconds = float(args.seconds_int)
    return args


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every `with` stops the process it started."""

    def raise_exit(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, raise_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk (`make bench-http` does it when run as root)")
    args.started = time.time()
    machine = machine_facts()  # before the run, so the load average is what the run started with
    scenarios = 10
    print(f"about {scenarios * (args.warmup_int + args.seconds_int) + 30:.0f} s to go; wrk {CONNECTIONS} connections")
    with (
        _stop_on_sigterm(),
        tempfile.TemporaryDirectory(prefix="lockgate-bench-http-") as folder,
        EmbeddedValkey(Path(folder) / "valkey") as valkey,
    ):
        print(f"Valkey on 127.0.0.1:{valkey.port}, data in {folder}", flush=True)
        outcome = run(Path(folder), valkey, args)
    machine["load_average_at_end"] = [round(load, 2) for load in os.getloadavg()]
    machine["client_and_server"] = "share this machine: every client and server runs here, on 127.0.0.1"
    document = {
        "benchmark": "http",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(args.started)),
        "config": {
            "connections": CONNECTIONS,
            "wrk_layout": f"-t{CONNECTIONS} -c{CONNECTIONS}: one keep-alive connection per wrk thread",
            "seconds_per_scenario": args.seconds,
            "warmup_s": args.warmup_int,
            "server": "lockgate_server.http1 on uvloop, one process (Lockgate and both hello-worlds)",
            "lockgate_shards": args.shards,
            "lock_names_per_connection": NAMES_PER_CONNECTION,
            "lock_ttl_ms": LOCK_TTL_MS,
            "rate_keys": KEYS,
            "rate_policy": RATE_POLICY,
            "batch_size": BATCH_SIZE,
            "contended_wait_ms": CONTENDED_WAIT_MS,
            "units": "ops_per_s in each scenario's unit; requests_per_s counts HTTP requests",
        },
        "machine": machine,
        "store": outcome["store"],
        "versions": {
            "wrk": tool_version(["wrk", "-v"]),
            "httptools": version("httptools"),
            "litestar": version("litestar"),
            "msgspec": version("msgspec"),
            "uvloop": version("uvloop"),
            "redis_py": version("redis"),
            "limits": version("limits"),
            "etcd": outcome["etcd_version"],
        },
        "scenarios": outcome["scenarios"],
        "skipped": outcome["skipped"],
        "ratios": outcome["ratios"],
        "targets": outcome["targets"],
        "profile": outcome["profile"],
        "note": (
            "Client and server share the machine (wrk or the Python driver, the HTTP server, Valkey and etcd "
            "all on 127.0.0.1, with other work running), so they compete for the same CPUs; compare ratios "
            "within a run, not absolute figures across runs."
        ),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    print_table(document)
    print(f"results written to {args.output}")


if __name__ == "__main__":
    main()
