"""A repeat of an acquire or renew (same request_id) is answered from memory only while the
lease it reported still stands.

Before, the first answer came back however the lease had ended since: a client retrying
after a lost answer was told Granted for a lease that had expired (or been force-released)
while another client held the lock with a larger token, and a retried renew of an expired
lease was told Renewed. A live lease's repeat also reported the full TTL, not what is left.
"""

from __future__ import annotations

from lockgate_server.core.ops import Acquire, Failure, ForceRelease, Granted, Inspect, LeaseInfo, Renew, Renewed
from lockgate_server.core.shard_state import ShardState
from lockgate_server.limits import IDEMPOTENCY_WINDOW_MS

NS = "repeat"
TTL_MS = 1_000


def acquire(lease_id: str, request_id: str | None = None, ttl_ms: int = TTL_MS) -> Acquire:
    return Acquire(namespace=NS, name="x", kind="lock", lease_id=lease_id, ttl_ms=ttl_ms, request_id=request_id)


def renew(request_id: str) -> Renew:
    return Renew(namespace=NS, name="x", kind="lock", lease_id="a", ttl_ms=TTL_MS, request_id=request_id)


def holder_token(state: ShardState, now_ms: int) -> int | None:
    info = state.apply(Inspect(namespace=NS, name="x", kind="lock"), now_ms).result
    assert isinstance(info, LeaseInfo)
    return info.token


def test_a_repeated_acquire_after_expiry_is_not_told_it_holds_the_lock() -> None:
    state = ShardState(0)
    first = state.apply(acquire("a", "req-a"), 0).result
    assert isinstance(first, Granted)
    taken = state.apply(acquire("b"), 2 * TTL_MS).result  # a expired at 1000
    assert isinstance(taken, Granted) and taken.token > first.token
    repeat = state.apply(acquire("a-again", "req-a"), 2 * TTL_MS + 100)
    assert isinstance(repeat.result, Failure), repeat.result  # held by b: the truth, not a's old grant
    assert repeat.logged
    assert holder_token(state, 2 * TTL_MS + 100) == taken.token


def test_a_repeated_acquire_after_a_force_release_is_a_new_request() -> None:
    state = ShardState(0)
    first = state.apply(acquire("a", "req-a", ttl_ms=60_000), 0).result
    assert isinstance(first, Granted)
    state.apply(ForceRelease(namespace=NS, name="x", kind="lock"), 10)
    repeat = state.apply(acquire("a-again", "req-a", ttl_ms=60_000), 20).result
    assert isinstance(repeat, Granted) and repeat.lease_id == "a-again" and repeat.token > first.token


def test_a_repeated_renew_of_an_expired_lease_is_not_renewed() -> None:
    state = ShardState(0)
    state.apply(acquire("a"), 0)
    assert isinstance(state.apply(renew("req-r"), 500).result, Renewed)  # a now ends at 1500
    state.apply(acquire("b"), 3 * TTL_MS)
    repeat = state.apply(renew("req-r"), 3 * TTL_MS + 100)
    assert not isinstance(repeat.result, Renewed), repeat.result


def test_a_repeat_while_the_lease_stands_reports_the_time_left() -> None:
    state = ShardState(0)
    first = state.apply(acquire("a", "req-a"), 0).result
    assert isinstance(first, Granted)
    repeat = state.apply(acquire("a-again", "req-a"), 950)
    assert not repeat.logged
    assert repeat.result == Granted(lease_id="a", token=first.token, ttl_ms=50)


def test_a_repeat_past_the_memory_window_is_a_new_request() -> None:
    state = ShardState(0)
    state.apply(acquire("a", "req-a", ttl_ms=10 * IDEMPOTENCY_WINDOW_MS), 0)
    repeat = state.apply(acquire("a-again", "req-a", ttl_ms=10 * IDEMPOTENCY_WINDOW_MS), 2 * IDEMPOTENCY_WINDOW_MS)
    assert repeat.logged and isinstance(repeat.result, Failure)  # a still holds it; the memory is gone
