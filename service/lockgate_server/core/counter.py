"""Counters: exact 64-bit signed integers. A missing counter reads as 0."""

from __future__ import annotations

from ..limits import INT64_MAX, INT64_MIN
from .ops import CasOutcome, CounterAdd, CounterCompareAndSet, CounterSet, CounterValue, Failure, Result

Command = CounterAdd | CounterSet | CounterCompareAndSet


def apply(value: int, cmd: Command) -> tuple[int, Result]:
    """Return the new value and the answer. A refused add leaves the value as it was."""
    match cmd:
        case CounterAdd(delta=delta, minimum=minimum, maximum=maximum):
            low = INT64_MIN if minimum is None else max(minimum, INT64_MIN)
            high = INT64_MAX if maximum is None else min(maximum, INT64_MAX)
            total = value + delta
            if not low <= total <= high:
                return value, Failure(code="out_of_range", detail=f"{value} + {delta} is outside [{low}, {high}]")
            return total, CounterValue(value=total)
        case CounterSet(value=new_value):
            assert INT64_MIN <= new_value <= INT64_MAX
            return new_value, CounterValue(value=new_value)
        case CounterCompareAndSet(expected=expected, value=new_value):
            assert INT64_MIN <= new_value <= INT64_MAX
            if value != expected:
                return value, CasOutcome(swapped=False, value=value)
            return new_value, CasOutcome(swapped=True, value=new_value)
    raise AssertionError(f"not a counter command: {cmd!r}")
