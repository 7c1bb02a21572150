"""Every acknowledged op survives kill -9 of the store and kill -9 of the engine process.

Each client records its ops as acknowledged (the engine answered), unknown (a retryable error:
the op may or may not have happened) or wrong (anything else). After the crash a fresh engine
must show every acknowledged effect, and at most the unknown ones on top.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from lockgate_server.core.ops import (
    Acquire,
    CounterAdd,
    CounterGet,
    CounterValue,
    FenceAnswer,
    FenceCheck,
    Granted,
    Inspect,
    LeaseInfo,
    RateCheck,
    RateDecision,
)
from lockgate_server.engine.node import Engine, new_lease_id
from lockgate_server.errors import OutcomeUnknown, RetryableError, Unavailable
from lockgate_server.limits import RATE_PERIOD_MAX_MS
from lockgate_server.storage.embedded import EmbeddedValkey

from .support import eventually, execute_until_served, finished_within, restarted, settle

if TYPE_CHECKING:
    from conftest import Engines

NAMESPACE = "durable"
WORKERS = 16
ACKS_BEFORE_KILL = 2000
RATE_LIMIT = 1_000_000
# A fixed window this long never rolls over during a test, so a peek counts charges exactly.
RATE_POLICY = {"limit": RATE_LIMIT, "period_ms": RATE_PERIOD_MAX_MS, "algorithm": "fixed_window"}
LEASE_TTL_MS = 120_000


@dataclass
class Ledger:
    """What the clients were told."""

    acks: int = 0
    adds: dict[int, int] = field(default_factory=dict)  # worker -> acked adds to its own counter
    adds_unknown: dict[int, int] = field(default_factory=dict)
    shared_acked: int = 0
    shared_unknown: int = 0
    locks: dict[str, tuple[str, int]] = field(default_factory=dict)  # name -> (lease_id, token)
    rates: dict[int, int] = field(default_factory=dict)  # worker -> acked charges to its own key
    rates_unknown: dict[int, int] = field(default_factory=dict)
    errors: list[RetryableError] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)


async def client(engine: Engine, worker: int, ledger: Ledger) -> None:
    """Sequential ops of four kinds until the first error (after which the store is gone)."""
    ledger.adds[worker] = ledger.adds_unknown[worker] = 0
    ledger.rates[worker] = ledger.rates_unknown[worker] = 0
    own = f"w{worker}"
    for step in range(1_000_000):
        kind = step % 4
        try:
            if kind == 0:
                result, _ = await engine.execute(CounterAdd(namespace=NAMESPACE, name=own, delta=1))
                if result != CounterValue(value=ledger.adds[worker] + 1):
                    ledger.wrong.append(f"{own}: add answered {result!r} after {ledger.adds[worker]} adds")
                    return
                ledger.adds[worker] += 1
            elif kind == 1:
                result, _ = await engine.execute(CounterAdd(namespace=NAMESPACE, name="shared", delta=1))
                if not isinstance(result, CounterValue):
                    ledger.wrong.append(f"shared: add answered {result!r}")
                    return
                ledger.shared_acked += 1
            elif kind == 2:
                name, lease_id = f"{own}-{step}", new_lease_id()
                acquire = Acquire(kind="lock", namespace=NAMESPACE, name=name, lease_id=lease_id, ttl_ms=LEASE_TTL_MS)
                result, _ = await engine.execute(acquire)
                if not isinstance(result, Granted) or result.lease_id != lease_id:
                    ledger.wrong.append(f"{name}: acquire of a free lock answered {result!r}")
                    return
                ledger.locks[name] = (lease_id, result.token)
            else:
                result, _ = await engine.execute(RateCheck(namespace=NAMESPACE, name=own, **RATE_POLICY))
                expected_remaining = RATE_LIMIT - ledger.rates[worker] - 1
                if not isinstance(result, RateDecision) or result.remaining != expected_remaining:
                    ledger.wrong.append(f"{own}: rate check answered {result!r}")
                    return
                ledger.rates[worker] += 1
        except RetryableError as error:
            ledger.errors.append(error)
            if kind == 0:
                ledger.adds_unknown[worker] += 1
            elif kind == 1:
                ledger.shared_unknown += 1
            elif kind == 3:
                ledger.rates_unknown[worker] += 1
            return
        except Exception as error:
            ledger.wrong.append(f"{own}: {error!r}")
            return
        ledger.acks += 1


async def missing_effects(engine: Engine, ledger: Ledger) -> list[str]:
    """Every acknowledged effect must be there, and nothing beyond the unknown ones."""
    missing: list[str] = []
    for worker, acked in ledger.adds.items():
        result, _ = await engine.execute(CounterGet(namespace=NAMESPACE, name=f"w{worker}"))
        assert isinstance(result, CounterValue)
        if not acked <= result.value <= acked + ledger.adds_unknown[worker]:
            missing.append(f"counter w{worker} is {result.value}; {acked} adds acked")
    result, _ = await engine.execute(CounterGet(namespace=NAMESPACE, name="shared"))
    assert isinstance(result, CounterValue)
    if not ledger.shared_acked <= result.value <= ledger.shared_acked + ledger.shared_unknown:
        missing.append(f"counter shared is {result.value}; {ledger.shared_acked} adds acked")
    for name, (lease_id, token) in ledger.locks.items():
        info, _ = await engine.execute(Inspect(kind="lock", namespace=NAMESPACE, name=name))
        fence, _ = await engine.execute(FenceCheck(kind="lock", namespace=NAMESPACE, name=name, token=token))
        assert isinstance(info, LeaseInfo) and isinstance(fence, FenceAnswer)
        if not (info.held and info.token == token and fence.current):
            missing.append(f"lock {name} (lease {lease_id}, token {token}) reads {info!r}")
    for worker, acked in ledger.rates.items():
        peek = RateCheck(namespace=NAMESPACE, name=f"w{worker}", cost=0, **RATE_POLICY)
        decision, _ = await engine.execute(peek)
        assert isinstance(decision, RateDecision)
        charged = RATE_LIMIT - decision.remaining
        if not acked <= charged <= acked + ledger.rates_unknown[worker]:
            missing.append(f"rate key w{worker} was charged {charged} times; {acked} charges acked")
    return missing


async def test_acknowledged_ops_survive_kill9_of_the_store(valkey: EmbeddedValkey, engines: Engines) -> None:
    engine = await engines.start(engines.config(commit_timeout_ms=2000))
    ledger = Ledger()
    clients: set[asyncio.Task[object]] = {
        asyncio.create_task(client(engine, worker, ledger)) for worker in range(WORKERS)
    }
    await eventually(lambda: ledger.acks >= ACKS_BEFORE_KILL or bool(ledger.wrong), timeout_s=30, what="enough acks")
    assert not ledger.wrong
    valkey.kill()  # kill -9, mid-stream

    stuck = await finished_within(clients, 20)
    assert not ledger.wrong, ledger.wrong
    assert all(isinstance(error, OutcomeUnknown | Unavailable) for error in ledger.errors), ledger.errors
    assert len(ledger.errors) + len(stuck) == WORKERS, "every client's last op must have failed"

    with restarted(valkey):
        # The engine that lived through the outage reloads its shards by itself.
        await settle(engine)
        await engines.stop(engine)
        fresh = await engines.start()
        missing = await missing_effects(fresh, ledger)
        await engines.stop(fresh)

    assert ledger.acks >= ACKS_BEFORE_KILL and ledger.locks and ledger.shared_acked
    assert not missing, f"{len(missing)} acknowledged effects lost, e.g. {missing[:5]}"
    assert not stuck, (
        f"{len(stuck)} callers got neither an answer nor a retryable error within 20 s after the store died"
    )


async def test_engine_serves_again_after_the_store_restarts(valkey: EmbeddedValkey, engines: Engines) -> None:
    """The engine that lived through a store outage reloads its shards and resumes on its own."""
    engine = await engines.start(engines.config(commit_timeout_ms=2000))
    add = CounterAdd(namespace=NAMESPACE, name="survivor", delta=1, request_id="add-1")
    assert (await engine.execute(add))[0] == CounterValue(value=1)
    valkey.kill()
    with contextlib.suppress(RetryableError):
        await engine.execute(CounterAdd(namespace=NAMESPACE, name="survivor", delta=1, request_id="add-2"))

    with restarted(valkey):
        retry = CounterAdd(namespace=NAMESPACE, name="survivor", delta=1, request_id="add-2")
        answer = await execute_until_served(engine, retry, timeout_s=20)
        # The retry of the op whose outcome was unknown counts once, whatever happened to it.
        assert answer == CounterValue(value=2)
        assert (await engine.execute(CounterGet(namespace=NAMESPACE, name="survivor")))[0] == CounterValue(value=2)
        await settle(engine)
        await engines.stop(engine)


CHILD_ENGINE = textwrap.dedent(
    """
    import asyncio
    import sys

    from lockgate_server.core.ops import Acquire, CounterAdd
    from lockgate_server.engine.node import Engine, EngineConfig, new_lease_id
    from lockgate_server.storage.log import RedisLog


    async def main(url, shard_count):
        engine = Engine(RedisLog(url), EngineConfig(shard_count=shard_count))
        await engine.start()
        out = sys.stdout

        async def worker(index):
            step = 0
            while True:
                if step % 2 == 0:
                    result, _ = await engine.execute(CounterAdd(namespace="crash", name=f"w{index}", delta=1))
                    out.write(f"add w{index} {result.value}\\n")
                else:
                    name, lease_id = f"w{index}-{step}", new_lease_id()
                    acquire = Acquire(kind="lock", namespace="crash", name=name, lease_id=lease_id, ttl_ms=120000)
                    result, _ = await engine.execute(acquire)
                    out.write(f"lock {name} {lease_id} {result.token}\\n")
                out.flush()  # the line is in the pipe: it survives our kill -9
                step += 1

        await asyncio.gather(*(worker(index) for index in range(8)))


    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)


async def test_acknowledged_ops_survive_kill9_of_the_engine(
    valkey: EmbeddedValkey, engines: Engines, tmp_path: Path
) -> None:
    script = tmp_path / "child_engine.py"
    script.write_text(CHILD_ENGINE)
    with (tmp_path / "child_engine.err").open("wb") as stderr:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            valkey.url,
            str(engines.default_config.shard_count),
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
    assert child.stdout is not None
    output = b""
    try:
        async with asyncio.timeout(60):
            while output.count(b"\n") < 1500:
                line = await child.stdout.readline()
                assert line, f"the child engine exited early: {(tmp_path / 'child_engine.err').read_text()}"
                output += line
            child.kill()  # SIGKILL, mid-stream
            output += await child.stdout.read()  # whatever it had acknowledged before dying
            await child.wait()
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    assert child.returncode == -signal.SIGKILL

    counters: dict[str, int] = {}
    locks: dict[str, tuple[str, int]] = {}
    for line in output.decode().split("\n")[:-1]:  # the last piece may be a half-written line
        words = line.split()
        if words[0] == "add":
            counters[words[1]] = max(counters.get(words[1], 0), int(words[2]))
        elif words[0] == "lock":
            locks[words[1]] = (words[2], int(words[3]))
    assert len(counters) == 8 and locks

    fresh = await engines.start()
    missing: list[str] = []
    for name, acked in counters.items():
        result, _ = await fresh.execute(CounterGet(namespace="crash", name=name))
        assert isinstance(result, CounterValue)
        # One add per worker may have been in flight: done or not, but never more than one.
        if not acked <= result.value <= acked + 1:
            missing.append(f"counter {name} is {result.value}, acked up to {acked}")
    for name, (lease_id, token) in locks.items():
        info, _ = await fresh.execute(Inspect(kind="lock", namespace="crash", name=name))
        assert isinstance(info, LeaseInfo)
        if not (info.held and info.token == token):
            missing.append(f"lock {name} (lease {lease_id}, token {token}) reads {info!r}")
    assert not missing, f"{len(missing)} acknowledged effects lost, e.g. {missing[:5]}"
