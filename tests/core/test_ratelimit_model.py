"""Rate limits: ShardState decisions against independent reference models.

GCRA: a model in exact rationals (fractions.Fraction), TAT in milliseconds: emission
interval e = period/limit, tolerance = burst*e; a request of `cost` is allowed iff
max(tat, now) + cost*e - now <= tolerance, and only an allowed request moves the TAT.
Fixed window: a count per window index. Sliding window: the weighted two-window count in
rationals, plus properties (a denial charges nothing, no fixed window ever admits more
than the limit). For all three, retry_after_ms is the exact wait: after it the same
request is allowed, one millisecond earlier it is not. A peek (cost 0) is a read that tells
whether (or when) a request of cost 1 would be allowed.
Keys full again are dropped by an Expire once the whole wheel bucket (BUCKET_MS) of the
moment they became full lies at or before until_ms, never earlier.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from fractions import Fraction

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from lockgate_server.core.ops import (
    Expire,
    RateCheck,
    RateCheckAll,
    RateDecision,
    RateDecisions,
    RateItem,
    RateReset,
)
from lockgate_server.core.shard_state import ShardState
from lockgate_server.core.wheel import BUCKET_MS

from .modeling import NAMESPACE, START_MS

KEY = f"{NAMESPACE}/k"

# One step of a history: (what, time advance in ms, cost).
STEP_KINDS = st.sampled_from(["check"] * 6 + ["peek", "expire", "reset"])


def steps_strategy(period_ms: int, max_cost: int) -> st.SearchStrategy[list[tuple[str, int, int]]]:
    advance = st.one_of(st.just(0), st.integers(0, max(1, period_ms // 10)), st.integers(0, 2 * period_ms + 1500))
    return st.lists(st.tuples(STEP_KINDS, advance, st.integers(1, max_cost)), min_size=1, max_size=40)


def check_cmd(algorithm: str, limit: int, period_ms: int, burst: int | None, cost: int) -> RateCheck:
    return RateCheck(
        namespace=NAMESPACE,
        name="k",
        limit=limit,
        period_ms=period_ms,
        burst=burst,
        cost=cost,
        algorithm=algorithm,  # type: ignore[arg-type]
    )


def assert_retry_is_exact(core: ShardState, cmd: RateCheck, now_ms: int, decision: RateDecision) -> None:
    """Waiting retry_after_ms makes the same request allowed; waiting 1 ms less does not."""
    wait_ms = decision.retry_after_ms
    assert wait_ms >= 1, f"denied with retry_after_ms={wait_ms}"
    later = ShardState.restore(core.snapshot()).apply(cmd, now_ms + wait_ms).result
    assert isinstance(later, RateDecision) and later.allowed, f"{cmd!r} at {now_ms}+{wait_ms}: still {later!r}"
    earlier = ShardState.restore(core.snapshot()).apply(cmd, now_ms + wait_ms - 1).result
    assert isinstance(earlier, RateDecision) and not earlier.allowed, (
        f"{cmd!r}: retry_after_ms={wait_ms} but already allowed after {wait_ms - 1} ms: {earlier!r}"
    )


def bucket_complete_by(at_ms: int, until_ms: int) -> bool:
    return (at_ms // BUCKET_MS + 1) * BUCKET_MS - 1 <= until_ms


def apply_expire(core: ShardState, now_ms: int, reset_at_ms: int | None) -> bool:
    """Expire(until_ms=now) and check the key was dropped exactly when its full-again second is over."""
    before = core.rates.get(KEY)
    applied = core.apply(Expire(until_ms=now_ms), now_ms)
    assert applied.logged
    dropped = before is not None and KEY not in core.rates
    if before is not None:
        assert reset_at_ms is not None
        if dropped:
            assert reset_at_ms <= now_ms, f"dropped at {now_ms} a key that is full only at {reset_at_ms}"
        assert dropped == bucket_complete_by(reset_at_ms, now_ms), (reset_at_ms, now_ms, dropped)
    return dropped


def as_peek(left: RateDecision, next_one: RateDecision) -> RateDecision:
    """A peek says what is left now, and whether (or when) a request of cost 1 is allowed."""
    return msgspec.structs.replace(left, allowed=next_one.allowed, retry_after_ms=next_one.retry_after_ms)


def assert_peek_is_a_read(core: ShardState, cmd: RateCheck, now_ms: int) -> RateDecision:
    before = core.snapshot()
    applied = core.apply(cmd, now_ms)
    assert not applied.logged and applied.notices == []
    assert core.snapshot() == before
    assert isinstance(applied.result, RateDecision)
    return applied.result


# --- GCRA ---------------------------------------------------------------------------------------
@dataclass
class GcraModel:
    limit: int
    period_ms: int
    burst: int
    tat: Fraction | None = None  # theoretical arrival time, ms

    @property
    def emission(self) -> Fraction:
        return Fraction(self.period_ms, self.limit)

    @property
    def tolerance(self) -> Fraction:
        return self.burst * self.emission

    def decide(self, now_ms: int, cost: int) -> tuple[RateDecision, Fraction | None]:
        """The decision and, if it charges, the new TAT."""
        now = Fraction(now_ms)
        base = max(self.tat, now) if self.tat is not None else now
        new_tat = base + cost * self.emission
        if new_tat - now <= self.tolerance:
            decision = RateDecision(
                allowed=True,
                limit=self.limit,
                remaining=(self.tolerance - (new_tat - now)) // self.emission,
                reset_after_ms=math.ceil(new_tat - now),
                retry_after_ms=0,
            )
            return decision, (new_tat if cost > 0 else None)
        decision = RateDecision(
            allowed=False,
            limit=self.limit,
            remaining=max(0, (self.tolerance - (base - now)) // self.emission),
            reset_after_ms=math.ceil(base - now),
            retry_after_ms=math.ceil(new_tat - now - self.tolerance),
        )
        return decision, None


@settings(max_examples=250, deadline=None)
@given(data=st.data(), limit=st.integers(1, 20), period_ms=st.integers(1, 5000), burst=st.none() | st.integers(1, 30))
def test_gcra_matches_rational_model(data: st.DataObject, limit: int, period_ms: int, burst: int | None) -> None:
    model = GcraModel(limit, period_ms, burst if burst is not None else limit)
    steps = data.draw(steps_strategy(period_ms, max_cost=model.burst + 2), label="steps")
    core = ShardState(shard=0)
    now = START_MS
    for kind, advance_ms, cost in steps:
        now += advance_ms
        if kind == "peek":
            decision = assert_peek_is_a_read(core, check_cmd("gcra", limit, period_ms, burst, 0), now)
            assert decision == as_peek(model.decide(now, 0)[0], model.decide(now, 1)[0])
        elif kind == "expire":
            reset_at = math.ceil(model.tat) if model.tat is not None else None
            if apply_expire(core, now, reset_at):
                model.tat = None
        elif kind == "reset":
            assert core.apply(RateReset(namespace=NAMESPACE, name="k"), now).logged
            assert KEY not in core.rates
            model.tat = None
        else:
            cmd = check_cmd("gcra", limit, period_ms, burst, cost)
            before = core.rates.get(KEY)
            applied = core.apply(cmd, now)
            expected, new_tat = model.decide(now, cost)
            assert applied.logged
            assert applied.result == expected, f"{cmd!r} at {now} (tat {model.tat}): {applied.result!r}"
            if new_tat is not None:
                model.tat = new_tat
            else:
                assert core.rates.get(KEY) == before, "a denied request was charged"
                if cost <= model.burst:
                    assert_retry_is_exact(core, cmd, now, expected)


# --- fixed window ---------------------------------------------------------------------------------
@dataclass
class FixedWindowModel:
    limit: int
    period_ms: int
    counts: dict[int, int] = field(default_factory=dict)  # window index -> admitted cost

    def decide(self, now_ms: int, cost: int) -> RateDecision:
        window = now_ms // self.period_ms
        count = self.counts.get(window, 0)
        until_next_ms = (window + 1) * self.period_ms - now_ms
        allowed = count + cost <= self.limit
        if allowed and cost:
            self.counts[window] = count + cost
        used = self.counts.get(window, 0)
        return RateDecision(
            allowed=allowed,
            limit=self.limit,
            remaining=max(0, self.limit - used),
            reset_after_ms=until_next_ms,  # the window's end, used or not (as envoyproxy/ratelimit)
            retry_after_ms=0 if allowed else until_next_ms,
        )

    def reset_at_ms(self) -> int | None:
        return (max(self.counts) + 1) * self.period_ms if self.counts else None


@settings(max_examples=200, deadline=None)
@given(data=st.data(), limit=st.integers(1, 10), period_ms=st.integers(1, 3000))
def test_fixed_window_matches_count_model(data: st.DataObject, limit: int, period_ms: int) -> None:
    model = FixedWindowModel(limit, period_ms)
    core = ShardState(shard=0)
    now = START_MS
    for kind, advance_ms, cost in data.draw(steps_strategy(period_ms, max_cost=limit + 1), label="steps"):
        now += advance_ms
        if kind == "peek":
            decision = assert_peek_is_a_read(core, check_cmd("fixed_window", limit, period_ms, None, 0), now)
            assert decision == as_peek(model.decide(now, 0), copy.deepcopy(model).decide(now, 1))
        elif kind == "expire":
            if apply_expire(core, now, model.reset_at_ms()):
                model.counts.clear()
        elif kind == "reset":
            core.apply(RateReset(namespace=NAMESPACE, name="k"), now)
            model.counts.clear()
        else:
            cmd = check_cmd("fixed_window", limit, period_ms, None, cost)
            before = core.rates.get(KEY)
            applied = core.apply(cmd, now)
            expected = model.decide(now, cost)
            assert applied.result == expected, f"{cmd!r} at {now}: {applied.result!r} != {expected!r}"
            if not expected.allowed:
                assert core.rates.get(KEY) == before, "a denied request was charged"
                if cost <= limit:
                    assert_retry_is_exact(core, cmd, now, expected)


# --- sliding window ---------------------------------------------------------------------------------
@settings(max_examples=250, deadline=None)
@given(data=st.data(), limit=st.integers(1, 10), period_ms=st.integers(1, 3000))
def test_sliding_window_properties(data: st.DataObject, limit: int, period_ms: int) -> None:
    """Decisions match the weighted two-window count (in rationals); a denial charges nothing;
    no fixed window ever admits more than `limit`; retry_after_ms is the exact wait."""
    core = ShardState(shard=0)
    admitted: dict[int, int] = {}  # window index -> cost admitted in it
    now = START_MS
    for kind, advance_ms, cost in data.draw(steps_strategy(period_ms, max_cost=limit + 1), label="steps"):
        now += advance_ms
        if kind == "expire":
            core.apply(Expire(until_ms=now), now)
            if KEY not in core.rates:
                admitted.clear()  # dropped only when nothing admitted still weighs
            continue
        if kind == "reset":
            core.apply(RateReset(namespace=NAMESPACE, name="k"), now)
            admitted.clear()
            continue
        window, elapsed = divmod(now, period_ms)
        weighted = Fraction(admitted.get(window - 1, 0) * (period_ms - elapsed), period_ms) + admitted.get(window, 0)
        if kind == "peek":
            decision = assert_peek_is_a_read(core, check_cmd("sliding_window", limit, period_ms, None, 0), now)
            assert decision.allowed == (weighted + 1 <= limit)
            continue
        cmd = check_cmd("sliding_window", limit, period_ms, None, cost)
        before = core.rates.get(KEY)
        applied = core.apply(cmd, now)
        decision = applied.result
        assert isinstance(decision, RateDecision)
        assert decision.allowed == (weighted + cost <= limit), f"{cmd!r} at {now}: weighted {weighted}: {decision!r}"
        if decision.allowed:
            assert decision.remaining == math.floor(limit - weighted - cost)
            admitted[window] = admitted.get(window, 0) + cost
            assert admitted[window] <= limit, f"window {window} admitted {admitted[window]} > {limit}"
        else:
            assert decision.remaining == max(0, math.floor(limit - weighted))
            assert core.rates.get(KEY) == before, "a denied request was charged"
            if cost <= limit:
                assert_retry_is_exact(core, cmd, now, decision)


# --- several limits at once -------------------------------------------------------------------------
ITEM_KEYS = ("k1", "k2", "k3")
ALGORITHMS = ("gcra", "fixed_window", "sliding_window")


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_check_all_is_all_or_nothing(data: st.DataObject) -> None:
    """Each item decides as a lone RateCheck on its key would; if any enforced item denies,
    nothing is charged; otherwise every allowed item is charged, exactly as its lone check."""
    specs = {
        key: (
            data.draw(st.sampled_from(ALGORITHMS), label=f"{key} algorithm"),
            data.draw(st.integers(1, 4), label=f"{key} limit"),
            data.draw(st.integers(10, 2000), label=f"{key} period"),
        )
        for key in ITEM_KEYS
    }
    core = ShardState(shard=0)
    now = START_MS
    for _ in range(data.draw(st.integers(1, 25), label="ops")):
        now += data.draw(st.integers(0, 700), label="advance")
        keys = data.draw(st.lists(st.sampled_from(ITEM_KEYS), min_size=1, max_size=3, unique=True), label="keys")
        items = [
            RateItem(
                key=key,
                limit=specs[key][1],
                period_ms=specs[key][2],
                cost=data.draw(st.integers(1, 3), label="cost"),
                algorithm=specs[key][0],  # type: ignore[arg-type]
                shadow=data.draw(st.booleans(), label="shadow"),
            )
            for key in keys
        ]
        # The reference: each item as a lone RateCheck, on a copy of the state.
        reference = ShardState.restore(core.snapshot())
        lone = []
        for item in items:
            cmd = RateCheck(
                namespace=NAMESPACE,
                name=item.key,
                limit=item.limit,
                period_ms=item.period_ms,
                cost=item.cost,
                algorithm=item.algorithm,
            )
            lone.append(reference.apply(cmd, now).result)
        before = dict(core.rates)
        applied = core.apply(RateCheckAll(namespace=NAMESPACE, name="route", items=items), now)
        assert applied.logged
        result = applied.result
        assert isinstance(result, RateDecisions)
        assert result.decisions == lone
        enforced_ok = all(d.allowed or item.shadow for item, d in zip(items, lone, strict=True))  # type: ignore[union-attr]
        assert result.allowed == enforced_ok
        if enforced_ok:
            assert core.rates == reference.rates
        else:
            assert core.rates == before, "a refused multi-limit check charged something"
        if data.draw(st.booleans(), label="expire"):
            core.apply(Expire(until_ms=now), now)


def test_peek_of_several_limits_is_a_read() -> None:
    core = ShardState(shard=0)
    item = RateItem(key="k1", limit=2, period_ms=1000, cost=1)
    core.apply(RateCheckAll(namespace=NAMESPACE, name="route", items=[item]), START_MS)
    before = core.snapshot()
    peek = core.apply(
        RateCheckAll(namespace=NAMESPACE, name="route", items=[RateItem(key="k1", limit=2, period_ms=1000, cost=0)]),
        START_MS,
    )
    assert not peek.logged
    assert core.snapshot() == before


def test_key_full_again_is_dropped_by_expire_not_before() -> None:
    core = ShardState(shard=0)
    now = 10 * BUCKET_MS + 17
    core.apply(check_cmd("gcra", 1, 100, None, 1), now)  # full again at now + 100
    core.apply(Expire(until_ms=now + 99), now + 99)
    assert KEY in core.rates
    end_of_bucket = ((now + 100) // BUCKET_MS + 1) * BUCKET_MS - 1
    core.apply(Expire(until_ms=end_of_bucket - 1), end_of_bucket - 1)
    assert KEY in core.rates  # full, but its bucket is not over yet: may stay
    core.apply(Expire(until_ms=end_of_bucket), end_of_bucket)
    assert KEY not in core.rates


def test_expire_never_drops_a_key_that_is_not_full_at_now() -> None:
    """An Expire whose until_ms runs ahead of its own now_ms must not drop a key that is still
    charged at now_ms: that forgets admitted requests and lets more through. (Lease pools are
    settled at now_ms whatever until_ms says; rate keys are dropped by until_ms alone.)"""
    core = ShardState(shard=0)
    now = 10 * BUCKET_MS
    cmd = check_cmd("fixed_window", 1, 60_000, None, 1)
    assert core.apply(cmd, now).result.allowed  # type: ignore[attr-defined]
    core.apply(Expire(until_ms=now + 120_000), now + 1)
    assert KEY in core.rates, "a key still charged at now_ms was dropped"
    again = core.apply(cmd, now + 2).result
    assert isinstance(again, RateDecision) and not again.allowed
