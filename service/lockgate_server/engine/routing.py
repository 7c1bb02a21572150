"""Which shard an object lives on: a stable hash of (kind, namespace, name)."""

from __future__ import annotations

import zlib

from ..core.ops import Command, CounterAdd, CounterCompareAndSet, CounterGet, CounterSet, ObjectCommand

_COUNTER_COMMANDS = (CounterAdd, CounterSet, CounterCompareAndSet, CounterGet)


def object_kind(cmd: ObjectCommand) -> str:
    kind = getattr(cmd, "kind", None)
    if kind is not None:
        return str(kind)
    return "counter" if isinstance(cmd, _COUNTER_COMMANDS) else "ratelimit"


def shard_for(kind: str, namespace: str, name: str, shard_count: int) -> int:
    """crc32, not hash(): it must give the same shard in every process, forever."""
    return zlib.crc32(f"{kind}\x00{namespace}\x00{name}".encode()) % shard_count


def shard_of(cmd: Command, shard_count: int) -> int:
    assert isinstance(cmd, ObjectCommand), "shard-level commands are addressed by shard"
    return shard_for(object_kind(cmd), cmd.namespace, cmd.name, shard_count)
