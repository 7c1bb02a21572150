"""Rate-limit state survives a snapshot at any allowed limit, on the wall clock's time line.

GCRA keeps its TAT in 1/limit ms. As one integer that passes 2**64 (msgpack's largest) from
a limit of about ten million at today's epoch milliseconds, so a snapshot of such a key
could not be written. The state is split into whole ms and a fraction; snapshots written
before the split (the TAT as one integer) still restore.
"""

from __future__ import annotations

import msgspec
import pytest

from lockgate_server.core.ops import RateCheck, RateDecision
from lockgate_server.core.ratelimit import GcraState, GcraStateV1, burst_window_fits
from lockgate_server.core.shard_state import SNAPSHOT_FORMAT_VERSION, ShardState, Snapshot
from lockgate_server.limits import RATE_LIMIT_MAX, RATE_PERIOD_MAX_MS

WALL_CLOCK_MS = 1_795_000_000_000  # late 2026
NAMESPACE = "rates"


def check(limit: int, cost: int = 1, burst: int | None = None) -> RateCheck:
    return RateCheck(namespace=NAMESPACE, name=f"k{limit}", limit=limit, period_ms=1000, burst=burst, cost=cost)


@pytest.mark.parametrize("limit", [7, 10_000_000, 1_000_000_000, RATE_LIMIT_MAX])
def test_a_gcra_key_at_any_limit_snapshots_and_decides_the_same_after_restore(limit: int) -> None:
    served = ShardState(shard=0)
    now = WALL_CLOCK_MS
    for step in range(5):
        now += 3
        served.apply(check(limit, cost=limit // 3 + step), now)
    restored = ShardState.restore(served.snapshot())
    assert restored.rates == served.rates
    for step in range(5):
        now += 1
        cmd = check(limit, cost=limit // 4 + step)
        assert restored.apply(cmd, now).result == served.apply(cmd, now).result


def test_a_snapshot_with_the_tat_as_one_integer_still_restores() -> None:
    served = ShardState(shard=0)
    served.apply(check(7, cost=3), WALL_CLOCK_MS)
    (key, state), *_ = served.rates.items()
    assert isinstance(state, GcraState)
    older = Snapshot(
        version=SNAPSHOT_FORMAT_VERSION,
        shard=0,
        lsn=served.lsn,
        last_now_ms=served.last_now_ms,
        locks={},
        semaphores={},
        counters={},
        rates={key: GcraStateV1(state.tat_scaled, state.scale)},
        remembered={},
    )
    restored = ShardState.restore(msgspec.msgpack.encode(older))
    assert restored.rates == served.rates
    cmd = check(7, cost=4)
    assert restored.apply(cmd, WALL_CLOCK_MS + 100).result == served.apply(cmd, WALL_CLOCK_MS + 100).result


def test_a_burst_reaching_past_the_longest_period_is_clamped_and_still_snapshots() -> None:
    """The API refuses such a check (burst_window_fits); anything else that reaches the core
    (a gateway policy, an old log record) is clamped, so no stored arrival time passes 2**64."""
    longest = RATE_PERIOD_MAX_MS
    cmd = RateCheck(namespace=NAMESPACE, name="far", limit=1, period_ms=longest, burst=RATE_LIMIT_MAX, cost=10**9)
    assert not burst_window_fits(cmd.algorithm, cmd.limit, cmd.period_ms, cmd.burst)
    served = ShardState(shard=0)
    decision = served.apply(cmd, WALL_CLOCK_MS).result
    assert isinstance(decision, RateDecision) and not decision.allowed  # a cost that cannot fit the window
    one = RateCheck(namespace=NAMESPACE, name="far", limit=1, period_ms=longest, burst=RATE_LIMIT_MAX)
    allowed = served.apply(one, WALL_CLOCK_MS).result
    assert isinstance(allowed, RateDecision) and allowed.allowed and allowed.reset_after_ms <= longest
    restored = ShardState.restore(served.snapshot())
    assert restored.rates == served.rates
