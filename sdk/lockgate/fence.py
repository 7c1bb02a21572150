"""FenceGuard: what a resource owner uses to refuse writes from a stale lease holder.

    guard = FenceGuard()

    def write(key, data, fencing_token):
        guard.admit(key, fencing_token)   # raises StaleToken if a newer holder already wrote
        storage[key] = data

A paused or partitioned client whose lease expired still carries its old token; once the
new holder (with a larger token) has written, the old one is refused.
"""

from __future__ import annotations

import threading

from .errors import LockgateError


class StaleToken(LockgateError):
    """A write carried a fencing token lower than one already seen for that resource."""


class FenceGuard:
    """Remembers the highest fencing token seen per resource and refuses older ones.

    Thread-safe and in memory: keep it next to the resource it guards (or store the highest
    token with the resource itself, the same way, when it must survive restarts).
    """

    def __init__(self) -> None:
        self._highest: dict[str, int] = {}
        self._mutex = threading.Lock()

    def admit(self, resource: str, token: int) -> None:
        """Accept `token` for `resource` (and remember it) or raise StaleToken."""
        with self._mutex:
            highest = self._highest.get(resource, -1)
            if token < highest:
                raise StaleToken(f"token {token} is older than {highest} already seen for {resource!r}")
            self._highest[resource] = token

    def is_current(self, resource: str, token: int) -> bool:
        """Would `token` be admitted for `resource` now? (Remembers nothing.)"""
        with self._mutex:
            return token >= self._highest.get(resource, -1)

    def highest(self, resource: str) -> int | None:
        """The highest token admitted for `resource`, or None before the first."""
        with self._mutex:
            return self._highest.get(resource)
