"""Snapshots carry a format version: old ones are read, unknown ones refused clearly."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from lockgate_server.core.ops import CounterGet, Inspect, LeaseInfo, RateCheck, RateDecision
from lockgate_server.core.shard_state import SNAPSHOT_FORMAT_VERSION, ShardState

FIXTURE = Path(__file__).parent.parent / "fixtures" / "snapshot-v1.msgpack"
WRITTEN_AT_MS = 1_800_000_000_002


def test_a_version_1_snapshot_still_loads_with_its_state() -> None:
    state = ShardState.restore(FIXTURE.read_bytes())

    assert state.shard == 3
    assert state.lsn == 3
    lock = state.apply(Inspect(kind="lock", namespace="fx", name="held"), WRITTEN_AT_MS + 1000).result
    assert isinstance(lock, LeaseInfo)
    assert (lock.held, lock.holder, lock.token, lock.remaining_ms) == (True, "fixture", 1, 58_998)
    assert state.apply(CounterGet(namespace="fx", name="count"), WRITTEN_AT_MS).result.value == 42  # type: ignore[attr-defined]
    peek = state.apply(RateCheck(namespace="fx", name="key", limit=10, period_ms=60_000, cost=0), WRITTEN_AT_MS)
    assert isinstance(peek.result, RateDecision)
    assert peek.result.remaining == 7


def test_a_snapshot_of_an_unknown_version_is_refused_with_a_clear_message() -> None:
    fields = msgspec.msgpack.decode(FIXTURE.read_bytes())
    fields[0] = SNAPSHOT_FORMAT_VERSION + 1
    future = msgspec.msgpack.encode(fields)

    with pytest.raises(ValueError, match=f"snapshot format {SNAPSHOT_FORMAT_VERSION + 1} is not readable"):
        ShardState.restore(future)
