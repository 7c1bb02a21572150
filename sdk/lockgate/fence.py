"""FenceGuard: what a resource owner uses to refuse writes from a stale lease holder.

    guard = FenceGuard()

    def write(key, data, fencing_token):
        with guard.admitted(key, fencing_token):  # raises StaleToken if a newer holder already wrote
            storage[key] = data  # no other write to `key` through the guard runs meanwhile

A paused or partitioned client whose lease expired still carries its old token; once the
new holder (with a larger token) has written, the old one is refused.

The check and the write must be one step: with `guard.admit(key, token)` followed by the
write, an old holder admitted just before a newer one, then paused (a GC pause, the
scheduler), writes last and its stale data wins. `admitted` holds a lock of the key's own
from the check to the end of the write; `admit` alone is for a single writer thread.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import LockgateError


class StaleToken(LockgateError):
    """A write carried a fencing token lower than one already seen for that resource."""


class FenceGuard:
    """Remembers the highest fencing token seen per resource and refuses older ones.

    Thread-safe and in memory: keep it next to the resource it guards (or store the highest
    token with the resource itself, the same way, when it must survive restarts). Write
    through `admitted` when several threads write; it keeps a lock per resource, as many as
    the tokens it remembers.
    """

    def __init__(self) -> None:
        self._highest: dict[str, int] = {}
        self._mutex = threading.Lock()
        # One per resource, held from the check through the write. Reentrant: a write that
        # admits again (the same holder writing twice) does not deadlock on itself.
        self._resource_locks: dict[str, threading.RLock] = {}

    def _resource_lock(self, resource: str) -> threading.RLock:
        with self._mutex:
            lock = self._resource_locks.get(resource)
            if lock is None:
                lock = self._resource_locks[resource] = threading.RLock()
            return lock

    @contextmanager
    def admitted(self, resource: str, token: int) -> Iterator[None]:
        """`with guard.admitted(resource, token):` write inside; raises StaleToken instead.

        Admits `token` as `admit` does and holds `resource`'s lock until the block ends, so a
        newer holder's write (through `admitted` or `admit`) waits for this one to finish and
        always lands after it. Writes to other resources are not held up.
        """
        with self._resource_lock(resource):
            self._admit(resource, token)
            yield

    def admit(self, resource: str, token: int) -> None:
        """Accept `token` for `resource` (and remember it) or raise StaleToken.

        The write that follows is not covered: between the two, a newer holder may be
        admitted and write first. Use it where one thread writes; with several, `admitted`.
        It waits for a write in progress in an `admitted` block on the same resource.
        """
        with self._resource_lock(resource):
            self._admit(resource, token)

    def _admit(self, resource: str, token: int) -> None:
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
