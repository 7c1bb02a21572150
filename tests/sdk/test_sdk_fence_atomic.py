"""FenceGuard.admitted: the check and the write are one step, across threads.

With `guard.admit(key, token); storage[key] = data` an old holder admitted just before a
newer one, then paused between its check and its write, wrote last: its stale data won.
`with guard.admitted(key, token):` holds the key's lock through the write.
"""

from __future__ import annotations

import threading
import time

import pytest
from lockgate import FenceGuard, StaleToken

PAUSE_S = 0.2


def test_an_old_holder_paused_inside_its_write_never_writes_last() -> None:
    guard, storage = FenceGuard(), {}
    inside = threading.Event()

    def old_holder() -> None:
        with guard.admitted("k", 5):
            inside.set()
            time.sleep(PAUSE_S)  # a GC pause, the scheduler: between the check and the write
            storage["k"] = "old (token 5)"

    writer = threading.Thread(target=old_holder)
    writer.start()
    assert inside.wait(5)
    with guard.admitted("k", 6):  # waits for the old write to finish, then lands after it
        storage["k"] = "new (token 6)"
    writer.join()
    assert storage["k"] == "new (token 6)" and guard.highest("k") == 6
    with pytest.raises(StaleToken), guard.admitted("k", 5):
        pytest.fail("a stale holder's block ran")


def test_admit_waits_for_a_write_in_progress() -> None:
    guard = FenceGuard()
    inside, order = threading.Event(), []

    def old_holder() -> None:
        with guard.admitted("k", 5):
            inside.set()
            time.sleep(PAUSE_S)
            order.append("old wrote")

    writer = threading.Thread(target=old_holder)
    writer.start()
    assert inside.wait(5)
    guard.admit("k", 6)
    order.append("new admitted")
    writer.join()
    assert order == ["old wrote", "new admitted"]


def test_other_resources_and_the_same_holder_are_not_held_up() -> None:
    guard = FenceGuard()
    inside, release = threading.Event(), threading.Event()

    def slow_writer() -> None:
        with guard.admitted("k", 5):
            inside.set()
            release.wait(5)

    writer = threading.Thread(target=slow_writer)
    writer.start()
    assert inside.wait(5)
    started = time.monotonic()
    with guard.admitted("other", 1):  # another resource: no wait
        pass
    assert time.monotonic() - started < PAUSE_S
    assert guard.is_current("k", 5) and guard.highest("k") == 5  # reads do not wait either
    release.set()
    writer.join()

    with guard.admitted("k", 7), guard.admitted("k", 7):  # the same holder, nested: no deadlock
        pass


def test_many_writers_end_with_the_highest_token() -> None:
    guard, storage = FenceGuard(), {}
    barrier = threading.Barrier(8)

    def write(token: int) -> None:
        barrier.wait()
        try:
            with guard.admitted("k", token):
                time.sleep(0.001 * (8 - token))  # older tokens dawdle longer
                storage["k"] = token
        except StaleToken:
            pass

    threads = [threading.Thread(target=write, args=(token,)) for token in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert storage["k"] == 7 == guard.highest("k")
