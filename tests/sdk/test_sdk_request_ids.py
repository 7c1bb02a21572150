"""Request ids are idempotency keys: two calls, threads or forked processes never share one."""

from __future__ import annotations

import os
import threading

from lockgate._core import new_request_id

PER_SOURCE = 2_000


def test_ids_from_threads_are_unique() -> None:
    found: list[list[str]] = [[] for _ in range(4)]

    def draw(into: list[str]) -> None:
        into.extend(new_request_id() for _ in range(PER_SOURCE))

    threads = [threading.Thread(target=draw, args=(into,)) for into in found]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [request_id for ids in found for request_id in ids]
    assert len(set(every)) == len(every) == 4 * PER_SOURCE


def test_a_forked_child_does_not_repeat_the_parent() -> None:
    new_request_id()  # the parent has started its sequence before the fork
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.close(read_end)
        with os.fdopen(write_end, "w") as out:
            out.write("\n".join(new_request_id() for _ in range(PER_SOURCE)))
        os._exit(0)
    os.close(write_end)
    parent_ids = {new_request_id() for _ in range(PER_SOURCE)}
    with os.fdopen(read_end) as received:
        child_ids = set(received.read().split("\n"))
    os.waitpid(child, 0)
    assert len(child_ids) == PER_SOURCE
    assert parent_ids.isdisjoint(child_ids)
