"""Counters: ShardState run side by side with a Python int per name.

The model: a missing counter is 0; add is refused (not clamped) when the total would leave
[minimum, maximum] or the signed 64-bit range, and then the value is unchanged; set and
compare-and-set are exact. A counter back at 0 carries no information and is dropped.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from lockgate_server.core.ops import (
    CasOutcome,
    Command,
    CounterAdd,
    CounterCompareAndSet,
    CounterGet,
    CounterSet,
    CounterValue,
    Failure,
    Result,
)
from lockgate_server.core.shard_state import ShardState
from lockgate_server.limits import IDEMPOTENCY_WINDOW_MS

from .modeling import NAMESPACE, START_MS, key_of

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
NAMES = ("c1", "c2")

EDGES = [INT64_MIN, INT64_MIN + 1, -1, 0, 1, INT64_MAX - 1, INT64_MAX]
int64s = st.one_of(st.integers(-5, 5), st.sampled_from(EDGES), st.integers(INT64_MIN, INT64_MAX))


def near(value: int) -> st.SearchStrategy[int]:
    """Values close to `value` (clamped to int64), so bounds and CAS expectations often matter."""
    low, high = clamp(value - 3), clamp(value + 3)
    return st.integers(low, high)


def clamp(value: int) -> int:
    return max(INT64_MIN, min(INT64_MAX, value))


def model_add(value: int, delta: int, minimum: int | None, maximum: int | None) -> tuple[int, Result]:
    total = value + delta
    fits = INT64_MIN <= total <= INT64_MAX
    fits = fits and (minimum is None or total >= minimum) and (maximum is None or total <= maximum)
    if not fits:
        return value, Failure(code="out_of_range", detail="")
    return total, CounterValue(value=total)


def same(result: Result, expected: Result) -> bool:
    if isinstance(expected, Failure):
        return isinstance(result, Failure) and result.code == expected.code
    return result == expected


class CounterMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.core = ShardState(shard=0)
        self.clock_ms = START_MS
        self.values: dict[str, int] = dict.fromkeys(NAMES, 0)
        self.remembered: dict[str, Result] = {}
        self.requests: dict[str, Command] = {}
        self.ids = 0

    def request_id(self, wanted: bool) -> str | None:
        if not wanted:
            return None
        self.ids += 1
        return f"r{self.ids}"

    def run(self, cmd: Command, value: int, expected: Result, name: str) -> None:
        applied = self.core.apply(cmd, self.clock_ms)
        assert applied.logged and applied.notices == []
        assert same(applied.result, expected), f"{cmd!r} on {self.values[name]}: {applied.result!r} != {expected!r}"
        self.values[name] = value
        request_id = getattr(cmd, "request_id", None)
        if request_id is not None:
            self.requests[request_id] = cmd
            self.remembered[request_id] = applied.result

    @rule(delta_ms=st.integers(0, 5000))
    def advance_time(self, delta_ms: int) -> None:
        self.clock_ms += delta_ms
        assert self.clock_ms - START_MS < IDEMPOTENCY_WINDOW_MS

    @rule(data=st.data(), name=st.sampled_from(NAMES), with_request_id=st.booleans())
    def add(self, data: st.DataObject, name: str, with_request_id: bool) -> None:
        value = self.values[name]
        in_range = st.integers(clamp(INT64_MIN - value), clamp(INT64_MAX - value))
        crossing = st.one_of(near(INT64_MAX - value), near(INT64_MIN - value))  # just inside or just past int64
        delta = data.draw(st.one_of(int64s, in_range, crossing), label="delta")
        bound = st.one_of(st.none(), near(value), near(value + delta), int64s)
        minimum = data.draw(bound, label="minimum")
        maximum = data.draw(bound, label="maximum")
        cmd = CounterAdd(
            namespace=NAMESPACE,
            name=name,
            delta=delta,
            minimum=minimum,
            maximum=maximum,
            request_id=self.request_id(with_request_id),
        )
        new_value, expected = model_add(value, delta, minimum, maximum)
        self.run(cmd, new_value, expected, name)

    @rule(name=st.sampled_from(NAMES), value=int64s, with_request_id=st.booleans())
    def set(self, name: str, value: int, with_request_id: bool) -> None:
        cmd = CounterSet(namespace=NAMESPACE, name=name, value=value, request_id=self.request_id(with_request_id))
        self.run(cmd, value, CounterValue(value=value), name)

    @rule(data=st.data(), name=st.sampled_from(NAMES), value=int64s, with_request_id=st.booleans())
    def compare_and_set(self, data: st.DataObject, name: str, value: int, with_request_id: bool) -> None:
        current = self.values[name]
        expected_value = data.draw(st.one_of(st.just(current), near(current), int64s), label="expected")
        cmd = CounterCompareAndSet(
            namespace=NAMESPACE,
            name=name,
            expected=expected_value,
            value=value,
            request_id=self.request_id(with_request_id),
        )
        if current == expected_value:
            self.run(cmd, value, CasOutcome(swapped=True, value=value), name)
        else:
            self.run(cmd, current, CasOutcome(swapped=False, value=current), name)

    @precondition(lambda self: self.requests)
    @rule(data=st.data())
    def repeat(self, data: st.DataObject) -> None:
        """A repeat gets the first answer, even if the counter moved since, and changes nothing."""
        request_id = data.draw(st.sampled_from(sorted(self.requests)), label="request_id")
        before = self.core.snapshot()
        applied = self.core.apply(self.requests[request_id], self.clock_ms)
        assert not applied.logged
        assert applied.result == self.remembered[request_id]
        assert self.core.snapshot() == before

    @rule(name=st.sampled_from((*NAMES, "never-touched")))
    def get_is_a_read(self, name: str) -> None:
        before = self.core.snapshot()
        applied = self.core.apply(CounterGet(namespace=NAMESPACE, name=name), self.clock_ms)
        assert not applied.logged
        assert applied.result == CounterValue(value=self.values.get(name, 0))
        assert self.core.snapshot() == before

    @invariant()
    def counters_are_exact_and_zero_is_dropped(self) -> None:
        assert self.core.counters == {key_of(name): value for name, value in self.values.items() if value != 0}
        for name in NAMES:
            applied = self.core.apply(CounterGet(namespace=NAMESPACE, name=name), self.clock_ms)
            assert applied.result == CounterValue(value=self.values[name])
            assert INT64_MIN <= self.values[name] <= INT64_MAX


CounterMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestCounterModel = CounterMachine.TestCase


# --- targeted cases ---------------------------------------------------------------------------
def _add(delta: int, *, minimum: int | None = None, maximum: int | None = None) -> CounterAdd:
    return CounterAdd(namespace=NAMESPACE, name="n", delta=delta, minimum=minimum, maximum=maximum)


def _value(core: ShardState) -> int:
    result = core.apply(CounterGet(namespace=NAMESPACE, name="n"), 0).result
    assert isinstance(result, CounterValue)
    return result.value


def test_add_crossing_int64_is_refused_and_leaves_the_value() -> None:
    core = ShardState(shard=0)
    core.apply(CounterSet(namespace=NAMESPACE, name="n", value=INT64_MAX - 1), 0)
    assert core.apply(_add(1), 0).result == CounterValue(value=INT64_MAX)
    refused = core.apply(_add(1), 0)
    assert refused.logged and isinstance(refused.result, Failure) and refused.result.code == "out_of_range"
    assert _value(core) == INT64_MAX
    core.apply(CounterSet(namespace=NAMESPACE, name="n", value=INT64_MIN), 0)
    refused = core.apply(_add(-1), 0)
    assert isinstance(refused.result, Failure) and refused.result.code == "out_of_range"
    assert _value(core) == INT64_MIN
    assert core.apply(_add(INT64_MAX), 0).result == CounterValue(value=-1)


def test_bounds_refuse_rather_than_clamp() -> None:
    core = ShardState(shard=0)
    core.apply(_add(5), 0)
    refused = core.apply(_add(3, maximum=7), 0)
    assert isinstance(refused.result, Failure) and refused.result.code == "out_of_range"
    assert _value(core) == 5  # not clamped to 7
    assert core.apply(_add(2, maximum=7), 0).result == CounterValue(value=7)  # the bound itself is allowed
    refused = core.apply(_add(-8, minimum=0), 0)
    assert isinstance(refused.result, Failure)
    assert _value(core) == 7
    assert core.apply(_add(-7, minimum=0), 0).result == CounterValue(value=0)
    assert core.counters == {}  # back at 0: dropped


@settings(max_examples=300, deadline=None)
@given(value=int64s, delta=int64s, minimum=st.none() | int64s, maximum=st.none() | int64s)
def test_single_add_matches_python_ints(value: int, delta: int, minimum: int | None, maximum: int | None) -> None:
    core = ShardState(shard=0)
    core.apply(CounterSet(namespace=NAMESPACE, name="n", value=value), 0)
    new_value, expected = model_add(value, delta, minimum, maximum)
    applied = core.apply(_add(delta, minimum=minimum, maximum=maximum), 0)
    assert same(applied.result, expected), f"{value} + {delta} in [{minimum}, {maximum}]: {applied.result!r}"
    assert _value(core) == new_value
