"""A coarse timing wheel: keys to revisit once their time has surely passed.

Rate-limit keys only need dropping some time after they are full again, so they wait in
one-second buckets (a list slot per key, sharing the key string) instead of a heap entry
each: a million idle keys cost megabytes, not a hundred.
"""

from __future__ import annotations

import heapq
from typing import Final

BUCKET_MS: Final = 1000


def bucket_complete(at_ms: int, until_ms: int) -> bool:
    """Is every time in at_ms's bucket at or before until_ms?"""
    return (at_ms // BUCKET_MS + 1) * BUCKET_MS - 1 <= until_ms


class ExpiryWheel:
    __slots__ = ("_buckets", "_order")

    def __init__(self) -> None:
        self._buckets: dict[int, list[str]] = {}
        self._order: list[int] = []  # heap of bucket numbers

    def add(self, at_ms: int, key: str) -> None:
        bucket = at_ms // BUCKET_MS
        keys = self._buckets.get(bucket)
        if keys is None:
            keys = self._buckets[bucket] = []
            heapq.heappush(self._order, bucket)
        keys.append(key)

    def next_due_ms(self) -> int | None:
        """When the earliest bucket is complete."""
        return (self._order[0] + 1) * BUCKET_MS - 1 if self._order else None

    def pop_complete(self, until_ms: int) -> list[str]:
        """Keys of every bucket lying wholly at or before until_ms."""
        due: list[str] = []
        while self._order and (self._order[0] + 1) * BUCKET_MS - 1 <= until_ms:
            due.extend(self._buckets.pop(heapq.heappop(self._order)))
        return due
