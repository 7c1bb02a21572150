"""The per-shard and per-commit bookkeeping of a node."""

from __future__ import annotations

import asyncio
import collections
import enum
import functools
import os
import time

from ..core.context import Notice
from ..core.ops import AnyCommand
from ..core.shard_state import ShardState


class SlotStatus(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    STANDBY = "standby"  # another node owns it; claimed once that node stops renewing it


class GateFuture(asyncio.Future[None]):
    """A commit shared by many callers: one caller leaving must not cancel it for all."""

    def cancel(self, msg: object = None) -> bool:
        return False


def new_gate() -> GateFuture:
    gate = GateFuture()
    # Failures are delivered to every awaiting caller; nobody awaiting is not an error.
    gate.add_done_callback(lambda done: done.exception())
    return gate


async def wait_gate(gate: GateFuture, timeout_s: float) -> None:
    """Wait for `gate` (its failure raised here too), or TimeoutError once `timeout_s` passed
    while the commit itself goes on for everyone else.

    A plain future that the gate or a timer completes: no task per caller, which a gateway
    check paid for on every request when its timeout wrapped the whole execute.
    """
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    wake = functools.partial(_wake, waiter)
    gate.add_done_callback(wake)
    timer = loop.call_later(timeout_s, _wake, waiter, None)
    try:
        await waiter
    finally:
        timer.cancel()
        gate.remove_done_callback(wake)
    if not gate.done():
        raise TimeoutError(f"the store did not answer within {round(timeout_s * 1000)} ms")
    gate.result()


def _wake(waiter: asyncio.Future[None], _: object) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Slot:
    """One shard as this node holds it."""

    __slots__ = (
        "_count",
        "_status",
        "covering",
        "entries",
        "entries_since_snapshot",
        "epoch",
        "generation",
        "last_snapshot_ms",
        "owned_until",
        "sealed_lsn",
        "shard",
        "state",
    )

    def __init__(self, shard: int, tally: dict[str, int], count: collections.Counter[SlotStatus]) -> None:
        self.shard = shard
        self.state = ShardState(shard, tally)
        self._count = count  # slots per status, over the node: "any standing by?" without a scan
        self._status = SlotStatus.LOADING
        count[self._status] += 1
        self.epoch = 0
        self.generation = 0  # bumped whenever speculative state is thrown away
        self.sealed_lsn = 0  # last LSN handed to a commit
        self.entries: list[tuple[int, AnyCommand]] = []  # applied, not yet sealed
        self.covering: GateFuture | None = None  # the commit that holds our latest entry
        self.entries_since_snapshot = 0
        self.last_snapshot_ms = 0
        self.owned_until = 0.0  # monotonic: serve nothing after this unless the lease is renewed

    @property
    def status(self) -> SlotStatus:
        return self._status

    @status.setter
    def status(self, status: SlotStatus) -> None:
        self._count[self._status] -= 1
        self._count[status] += 1
        self._status = status

    def serving(self) -> bool:
        return self._status is SlotStatus.READY and time.monotonic() < self.owned_until


class PendingCommit:
    __slots__ = ("gate", "notices", "op_count", "slots", "wanted")

    def __init__(self) -> None:
        self.gate = new_gate()
        self.slots: dict[int, Slot] = {}
        self.notices: list[tuple[Slot, int, Notice]] = []  # (slot, its generation then, notice)
        self.op_count = 0
        # Sealed only once someone waits on its gate, it carries answers for queued callers,
        # or the sweeper finds it waiting: a queued acquire alone answers nobody yet, so it
        # rides along with the next commit instead of paying for one of its own.
        self.wanted = False


class LeaseIds:
    """Unguessable lease ids (a lease id is the right to release), cheaply.

    One urandom read per 340 ids instead of a syscall per acquire, which profiling put
    at 3% of a node's CPU.
    """

    ID_BYTES = 12

    def __init__(self) -> None:
        self._pool = b""
        self._offset = 0

    def __call__(self) -> str:
        if self._offset + self.ID_BYTES > len(self._pool):
            self._pool = os.urandom(4080)
            self._offset = 0
        start, self._offset = self._offset, self._offset + self.ID_BYTES
        return self._pool[start : self._offset].hex()


new_lease_id = LeaseIds()
