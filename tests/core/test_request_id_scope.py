"""A request_id names one request: reused by another operation, it is a new request.

Only a repeat of the same operation (and, for a release or renew, the same lease) gets the
first answer back. Before, the memory was keyed by object and request_id alone, so a
release reusing its acquire's id was answered "released" while the lock stayed held.
"""

from __future__ import annotations

from lockgate_server.core.ops import (
    Acquire,
    CasOutcome,
    CounterAdd,
    CounterCompareAndSet,
    CounterValue,
    Granted,
    Inspect,
    LeaseInfo,
    LeaseKind,
    RateCheck,
    RateDecision,
    RateReset,
    Release,
    Released,
)
from lockgate_server.core.shard_state import ShardState

NS = "ids"
NOW = 1_000_000


def acquire(state: ShardState, lease_id: str, request_id: str, kind: LeaseKind = "lock", limit: int = 1) -> Granted:
    cmd = Acquire(
        namespace=NS, name="x", kind=kind, lease_id=lease_id, ttl_ms=60_000, limit=limit, request_id=request_id
    )
    result = state.apply(cmd, NOW).result
    assert isinstance(result, Granted), result
    return result


def held(state: ShardState, kind: LeaseKind = "lock") -> int:
    info = state.apply(Inspect(namespace=NS, name="x", kind=kind), NOW).result
    assert isinstance(info, LeaseInfo)
    return info.permits_used


def test_release_reusing_the_acquire_id_releases() -> None:
    state = ShardState(0)
    acquire(state, "lease-1", "r1")
    applied = state.apply(Release(namespace=NS, name="x", kind="lock", lease_id="lease-1", request_id="r1"), NOW)
    assert applied.logged and isinstance(applied.result, Released)
    assert held(state) == 0


def test_releases_of_two_leases_with_one_id_release_both() -> None:
    state = ShardState(0)
    acquire(state, "a", "acq-a", kind="semaphore", limit=2)
    acquire(state, "b", "acq-b", kind="semaphore", limit=2)
    for lease_id in ("a", "b"):
        release = Release(namespace=NS, name="x", kind="semaphore", lease_id=lease_id, request_id="same")
        assert isinstance(state.apply(release, NOW).result, Released)
    assert held(state, "semaphore") == 0


def test_a_repeated_release_still_gets_its_first_answer() -> None:
    state = ShardState(0)
    acquire(state, "lease-1", "r1")
    release = Release(namespace=NS, name="x", kind="lock", lease_id="lease-1", request_id="rel-1")
    first = state.apply(release, NOW).result
    again = state.apply(release, NOW)
    assert not again.logged and again.result == first


def test_counter_operations_do_not_share_an_id() -> None:
    state = ShardState(0)
    assert state.apply(CounterAdd(namespace=NS, name="c", delta=5, request_id="k"), NOW).result == CounterValue(value=5)
    swapped = state.apply(CounterCompareAndSet(namespace=NS, name="c", expected=5, value=9, request_id="k"), NOW)
    assert swapped.result == CasOutcome(swapped=True, value=9)


def test_a_reset_reusing_a_check_id_resets() -> None:
    state = ShardState(0)
    check = RateCheck(namespace=NS, name="q", limit=1, period_ms=60_000, algorithm="fixed_window", request_id="q")
    assert isinstance(state.apply(check, NOW).result, RateDecision)
    state.apply(RateReset(namespace=NS, name="q", request_id="q"), NOW)
    fresh = RateCheck(namespace=NS, name="q", limit=1, period_ms=60_000, algorithm="fixed_window")
    decision = state.apply(fresh, NOW).result
    assert isinstance(decision, RateDecision) and decision.allowed
