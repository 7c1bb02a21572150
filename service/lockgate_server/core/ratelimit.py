"""Rate limits: GCRA (the default), sliding window and fixed window.

All arithmetic is on integers, so decisions are exact and replay is bit-for-bit.
GCRA keeps its theoretical arrival time (TAT) in units of 1/limit ms: one request
then costs exactly `period_ms` units and nothing is rounded.
A rejected request is never charged.
"""

from __future__ import annotations

from typing import Any, Protocol, cast

import msgspec

from ..limits import RATE_PERIOD_MAX_MS
from .ops import RateDecision


class RateSpec(Protocol):
    """What a check needs to know: RateCheck and RateItem both carry it."""

    @property
    def limit(self) -> int: ...
    @property
    def period_ms(self) -> int: ...
    @property
    def burst(self) -> int | None: ...
    @property
    def cost(self) -> int: ...
    @property
    def algorithm(self) -> str: ...


class GcraState(msgspec.Struct, array_like=True, gc=False, tag="h"):
    """The TAT is `tat_ms * scale + tat_fraction` in 1/scale ms.

    Kept split because a snapshot is msgpack, whose integers stop at 2**64: one number in
    1/limit ms passes that from a limit of about ten million on today's wall clock.
    """

    tat_ms: int
    tat_fraction: int  # 0 <= tat_fraction < scale
    scale: int  # the limit the TAT was scaled by

    @property
    def tat_scaled(self) -> int:
        return self.tat_ms * self.scale + self.tat_fraction


class GcraStateV1(msgspec.Struct, array_like=True, gc=False, tag="g"):
    """The TAT as one number, as snapshots before the split hold it; read, never written."""

    tat_scaled: int
    scale: int

    def upgraded(self) -> GcraState:
        return _gcra_state(self.tat_scaled, self.scale)


class WindowState(msgspec.Struct, array_like=True, gc=False, tag="w"):
    algorithm: str
    period_ms: int
    window: int  # index of the current window: now_ms // period_ms
    previous: int
    current: int


RateState = GcraState | WindowState
StoredRateState = RateState | GcraStateV1


def burst_window_fits(algorithm: str, limit: int, period_ms: int, burst: int | None) -> bool:
    """A GCRA key reaches back burst x period / limit ms; at most the longest period.

    Past that, the arrival time a check stores can pass msgpack's 2**64 (one check with a
    year-long period, a 2**32 burst and a large cost did): the shard could not be
    snapshotted. The API refuses such a check; `_gcra` clamps whatever else reaches it.
    """
    burst = burst if burst is not None else limit
    return algorithm != "gcra" or burst * period_ms <= RATE_PERIOD_MAX_MS * limit


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def check(state: RateState | None, cmd: RateSpec, now_ms: int) -> tuple[RateState | None, RateDecision]:
    """Decide (and, if allowed and cost > 0, charge) one request. cost 0 peeks."""
    if cmd.algorithm == "gcra":
        return _gcra(state if isinstance(state, GcraState) else None, cmd, now_ms)
    window = state if isinstance(state, WindowState) and state.algorithm == cmd.algorithm else None
    if window is not None and window.period_ms != cmd.period_ms:
        window = None
    if cmd.algorithm == "fixed_window":
        return _fixed(window, cmd, now_ms)
    return _sliding(window, cmd, now_ms)


def peek(state: RateState | None, cmd: RateSpec, now_ms: int) -> RateDecision:
    """What a check would answer now, charging nothing: whether a request of cost 1 would be
    allowed (and if not, when it would be), with what is left now. A cost of 0 alone always
    fits, so it cannot tell an exhausted key from a full one."""
    left = check(state, cmd, now_ms)[1]
    next_one = check(state, msgspec.structs.replace(cast(Any, cmd), cost=1), now_ms)[1]
    return msgspec.structs.replace(left, allowed=next_one.allowed, retry_after_ms=next_one.retry_after_ms)


def reset_at_ms(state: RateState) -> int:
    """When the key returns to full if nothing more is charged."""
    if isinstance(state, GcraState):
        return state.tat_ms + (1 if state.tat_fraction else 0)
    if state.algorithm == "fixed_window":
        return (state.window + 1) * state.period_ms if state.current else 0
    if state.current:
        return (state.window + 2) * state.period_ms
    return (state.window + 1) * state.period_ms if state.previous else 0


def _gcra(state: GcraState | None, cmd: RateSpec, now_ms: int) -> tuple[GcraState | None, RateDecision]:
    limit, period = cmd.limit, cmd.period_ms
    burst = cmd.burst if cmd.burst is not None else limit
    now_scaled = now_ms * limit
    tolerance = min(burst * period, RATE_PERIOD_MAX_MS * limit)  # see burst_window_fits
    tat = now_scaled
    if state is not None:
        tat = state.tat_scaled if state.scale == limit else _ceil_div(state.tat_scaled * limit, state.scale)
    base = max(tat, now_scaled)
    new_tat = base + cmd.cost * period
    if new_tat - now_scaled <= tolerance:
        decision = RateDecision(
            allowed=True,
            limit=limit,
            remaining=(tolerance - (new_tat - now_scaled)) // period,
            reset_after_ms=_ceil_div(new_tat - now_scaled, limit),
            retry_after_ms=0,
        )
        if cmd.cost == 0:
            return state, decision
        return _gcra_state(new_tat, limit), decision
    decision = RateDecision(
        allowed=False,
        limit=limit,
        remaining=max(0, (tolerance - (base - now_scaled)) // period),
        reset_after_ms=_ceil_div(base - now_scaled, limit),
        retry_after_ms=_ceil_div(new_tat - now_scaled - tolerance, limit),
    )
    return state, decision


def _gcra_state(tat_scaled: int, scale: int) -> GcraState:
    tat_ms, fraction = divmod(tat_scaled, scale)
    return GcraState(tat_ms, fraction, scale)


def _fixed(state: WindowState | None, cmd: RateSpec, now_ms: int) -> tuple[WindowState | None, RateDecision]:
    period, limit = cmd.period_ms, cmd.limit
    window = now_ms // period
    count = state.current if state is not None and state.window == window else 0
    until_next_ms = (window + 1) * period - now_ms
    allowed = count + cmd.cost <= limit
    used = count + cmd.cost if allowed else count
    decision = RateDecision(
        allowed=allowed,
        limit=limit,
        remaining=max(0, limit - used),
        # The window's end even with nothing used in it (envoyproxy/ratelimit reports the same):
        # a peek at an unused key then says when a count would start over, never "0 s".
        reset_after_ms=until_next_ms,
        retry_after_ms=0 if allowed else until_next_ms,
    )
    if not allowed or cmd.cost == 0:
        return state, decision
    return WindowState("fixed_window", period, window, 0, used), decision


def _sliding(state: WindowState | None, cmd: RateSpec, now_ms: int) -> tuple[WindowState | None, RateDecision]:
    """Two fixed windows, the previous one weighted by how much of it still overlaps."""
    period, limit, cost = cmd.period_ms, cmd.limit, cmd.cost
    window = now_ms // period
    previous = current = 0
    if state is not None and state.window == window:
        previous, current = state.previous, state.current
    elif state is not None and state.window == window - 1:
        previous = state.current
    elapsed = now_ms - window * period
    # Everything below is scaled by `period` to stay in integers.
    weighted = previous * (period - elapsed) + current * period
    allowed = weighted + cost * period <= limit * period
    if allowed:
        after = weighted + cost * period
        decision = RateDecision(
            allowed=True,
            limit=limit,
            remaining=(limit * period - after) // period,
            reset_after_ms=_sliding_reset_ms(previous, current + cost, period, elapsed),
            retry_after_ms=0,
        )
        if cost == 0:
            return state, decision
        return WindowState("sliding_window", period, window, previous, current + cost), decision
    decision = RateDecision(
        allowed=False,
        limit=limit,
        remaining=max(0, (limit * period - weighted) // period),
        reset_after_ms=_sliding_reset_ms(previous, current, period, elapsed),
        retry_after_ms=_sliding_retry_ms(previous, current, cost, limit, period, elapsed),
    )
    return state, decision


def _sliding_reset_ms(previous: int, current: int, period: int, elapsed: int) -> int:
    if current:
        return 2 * period - elapsed
    return period - elapsed if previous else 0


def _sliding_retry_ms(previous: int, current: int, cost: int, limit: int, period: int, elapsed: int) -> int:
    """Earliest wait after which the same request would be allowed."""
    room = (limit - current - cost) * period  # what the previous window's weight must fall to
    if room >= 0 and previous > 0:
        # previous * (period - e) <= room  <=>  e >= period - room / previous
        needed = period - room // previous
        if needed < period:
            return max(1, needed - elapsed)
    # Not in this window: in the next one, `current` becomes the weighted previous.
    room_next = (limit - cost) * period
    if room_next < 0:
        return (2 * period) - elapsed  # cost above the limit never fits; report a full cycle
    needed_next = 0 if current == 0 else max(0, period - room_next // current)
    return (period - elapsed) + needed_next
