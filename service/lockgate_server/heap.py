"""Keep the garbage collector's full passes off the start-up heap.

A node starts with about 80,000 objects the collector tracks (modules, classes, functions of
Litestar, msgspec, protobuf, redis-py, ...), none of which ever becomes garbage. Each full
collection walked them all: 50 to 70 ms on this project's machine, during which the event loop,
and so every request and every shard of the node, stood still. Under load a full collection
comes every few seconds (objects alive across an await outlive two young collections), so the
stalls were a large part of the tail latency. Frozen after start-up, they are never walked
again: the same full collection then takes well under a millisecond (tests/test_heap.py).

Objects stay freed by reference counting when frozen; only a reference cycle among them would
outlive its use, and start-up objects are not made garbage.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> int:
    """Collect what start-up left behind, then freeze the rest; the number of objects frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
