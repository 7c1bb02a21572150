"""Background snapshots that do not stop the shard.

Encoding a shard of a million objects takes far longer than a request may wait, so by
default the node forks, as Redis does for BGSAVE: the child holds a copy-on-write view of
the state at one LSN, encodes it and writes it with the fenced SNAPSHOT script, while the
parent goes on serving. The parent's only pause is the fork itself, which grows with the
whole process, not with the shard: small states (a few thousand items) are cheaper to
encode in-process, and so is everything where fork is not available (or for tests).

A snapshot is taken only at a commit boundary (state LSN == sealed LSN), so the log
records it trims are exactly the ones it covers.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from ..core.shard_state import ShardState
from ..limits import SNAPSHOT_INLINE_ITEMS_MAX
from ..storage.embedded import let_go_of_folders_in_child
from ..storage.log import RedisLog, write_snapshot_blocking

log = logging.getLogger("lockgate.snapshots")

FORK_RETRY_S = 1.0
"""After fork fails (no memory or processes left), wait this long before the next snapshot."""

SnapshotMode = Literal["fork", "inline"]


@dataclass(frozen=True, slots=True)
class SnapshotJob:
    shard: int
    epoch: int
    lsn: int
    state: ShardState


@dataclass
class SnapshotStats:
    taken: int = 0
    failed: int = 0
    longest_pause_ms: float = 0.0  # what a snapshot cost the serving loop, at most
    last_bytes: int = 0


class Snapshotter:
    def __init__(self, store: RedisLog, mode: SnapshotMode, inline_items_max: int = SNAPSHOT_INLINE_ITEMS_MAX) -> None:
        self._store = store
        self._mode: SnapshotMode = mode if hasattr(os, "fork") else "inline"
        self._inline_items_max = inline_items_max
        self._running: asyncio.Task[None] | None = None
        self._not_before = 0.0  # monotonic: after a fork failed, when to try again
        self.stats = SnapshotStats()

    @property
    def busy(self) -> bool:
        running = self._running is not None and not self._running.done()
        return running or time.monotonic() < self._not_before

    def take(self, jobs: Iterable[SnapshotJob]) -> bool:
        """Start snapshots of the given states; False if one is still running (try later)."""
        jobs = list(jobs)
        if not jobs or self.busy:
            return False
        started = time.perf_counter()
        # A fork pauses the loop for as long as it takes to copy the page tables of the whole
        # process, however small the shard: a hot shard with a few objects (one contended
        # lock) would pay that every few seconds. Small states are cheaper to encode here.
        small = sum(job.state.snapshot_items() for job in jobs) <= self._inline_items_max
        if self._mode == "fork" and not small:
            try:
                pid = _fork_writer(self._store.url, jobs)
            except OSError as error:
                # Out of memory or processes: serving goes on, the log just grows until a later
                # try (the commit loop and the sweeper call this, and must not die of it).
                self.stats.failed += 1
                self._not_before = time.monotonic() + FORK_RETRY_S
                log.warning("could not fork a snapshot writer (%r); trying again in %.0f s", error, FORK_RETRY_S)
                return False
            self._note_pause(started)
            self._running = asyncio.ensure_future(self._reap(pid, len(jobs)))
        else:
            try:
                blobs = [(job, job.state.snapshot()) for job in jobs]
            except Exception:  # a state that cannot be encoded is a bug; the node must outlive it
                self.stats.failed += 1
                self._not_before = time.monotonic() + FORK_RETRY_S
                log.exception("could not encode a snapshot; trying again in %.0f s", FORK_RETRY_S)
                return False
            self._note_pause(started)
            self.stats.last_bytes = sum(len(blob) for _, blob in blobs)
            self._running = asyncio.ensure_future(self._write_inline(blobs))
        return True

    def _note_pause(self, started: float) -> None:
        self.stats.longest_pause_ms = max(self.stats.longest_pause_ms, (time.perf_counter() - started) * 1000)

    async def _reap(self, pid: int, shards: int) -> None:
        _, status = await asyncio.get_running_loop().run_in_executor(None, os.waitpid, pid, 0)
        if os.waitstatus_to_exitcode(status) == 0:
            self.stats.taken += shards
        else:
            self.stats.failed += 1
            log.warning("snapshot writer %d failed with status %d", pid, status)

    async def _write_inline(self, blobs: list[tuple[SnapshotJob, bytes]]) -> None:
        for job, blob in blobs:
            try:
                answer = await self._store.write_snapshot(job.shard, job.epoch, job.lsn, blob)
            except Exception as error:  # a failed snapshot only means a longer replay next time
                answer = repr(error)
            if answer == "ok":
                self.stats.taken += 1
            elif answer != "stale":
                self.stats.failed += 1
                log.warning("snapshot of shard %d at LSN %d not stored: %s", job.shard, job.lsn, answer)

    async def wait(self) -> None:
        if self._running is not None:
            await asyncio.shield(self._running)


def _fork_writer(url: str, jobs: list[SnapshotJob]) -> int:
    # No gc.freeze()/unfreeze() around the fork: unfreeze would undo heap.freeze_startup_heap,
    # and the child never collects anyway (it disables the collector before anything else).
    pid = os.fork()
    if pid != 0:
        return pid
    # The child: never returns, never runs the parent's loop, handlers or atexit hooks.
    code = 1
    try:
        gc.disable()  # so the collector never touches (and copies) the parent's pages
        let_go_of_folders_in_child()
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)
        failures = 0
        for job in jobs:
            answer = write_snapshot_blocking(url, job.shard, job.epoch, job.lsn, job.state.snapshot())
            failures += answer not in ("ok", "stale")
        code = 0 if failures == 0 else 2
    finally:
        os._exit(code)
