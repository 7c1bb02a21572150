"""The one clock. The sequencer reads it; nothing in the core does."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int: ...


class WallClock:
    """Wall time read once, then advanced by the monotonic clock.

    Wall time, so a shard taken over by another node continues on about the same time line.
    Read once, so a step of the system clock while we serve (NTP, a resumed VM) neither
    ends leases early, which would grant a lock to a second holder, nor holds them past
    their TTL.
    """

    def __init__(self) -> None:
        self._wall_at_start_ns = time.time_ns()
        self._monotonic_at_start_ns = time.monotonic_ns()

    def now_ms(self) -> int:
        return (self._wall_at_start_ns + time.monotonic_ns() - self._monotonic_at_start_ns) // 1_000_000


class ManualClock:
    """A clock tests move by hand."""

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self._now_ms = start_ms

    def now_ms(self) -> int:
        return self._now_ms

    def advance(self, delta_ms: int) -> None:
        self._now_ms += delta_ms
