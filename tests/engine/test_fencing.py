"""Fencing of owners: a node that took the shards fences off the node that had them.

Taking a shard increments its epoch; the old owner's next append is refused by the store,
it answers with a retryable error and stands by: it serves that shard again only once it
claims it back, after the new owner stops renewing it.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import pytest

from lockgate_server.core.ops import (
    Acquire,
    Command,
    CounterAdd,
    CounterGet,
    CounterValue,
    FenceAnswer,
    FenceCheck,
    Granted,
    Inspect,
    LeaseInfo,
    Release,
    Released,
    Renew,
    Renewed,
)
from lockgate_server.engine.node import Engine, PendingCommit, SlotStatus, new_lease_id
from lockgate_server.errors import OutcomeUnknown, RetryableError, Unavailable
from lockgate_server.storage.embedded import EmbeddedValkey
from lockgate_server.storage.log import (
    COMMIT_SCRIPT,
    LOG_FORMAT_VERSION,
    Claimed,
    LogRecord,
    RedisLog,
    ShardHistory,
    record_encoder,
    shard_keys,
)

from .support import admin_client, eventually, execute_until_served, one_name_per_shard, shard_epochs

if TYPE_CHECKING:
    from conftest import Engines

NAMESPACE = "fence"
TTL_MS = 60_000


async def test_new_owner_fences_the_old_one(engines: Engines) -> None:
    old = await engines.start()
    counters = one_name_per_shard(old, "counter", NAMESPACE, "c")
    locks = one_name_per_shard(old, "lock", NAMESPACE, "l")
    handed_out: dict[str, list[int]] = {name: [] for name in locks.values()}  # every token the old owner gave
    leases: dict[str, str] = {}
    for name in counters.values():
        for _ in range(3):
            await old.execute(CounterAdd(namespace=NAMESPACE, name=name, delta=1))
    for name in locks.values():
        for _ in range(2):  # grant, release, grant again: two tokens per lock
            lease_id = new_lease_id()
            granted, _ = await old.execute(
                Acquire(kind="lock", namespace=NAMESPACE, name=name, lease_id=lease_id, ttl_ms=TTL_MS)
            )
            assert isinstance(granted, Granted)
            handed_out[name].append(granted.token)
            leases[name] = lease_id
            if len(handed_out[name]) == 1:
                await old.execute(Release(kind="lock", namespace=NAMESPACE, name=name, lease_id=lease_id))
        renewed, _ = await old.execute(
            Renew(kind="lock", namespace=NAMESPACE, name=name, lease_id=leases[name], ttl_ms=TTL_MS)
        )
        assert isinstance(renewed, Renewed)

    new = await engines.start(
        engines.config(take_over=True)
    )  # takes every shard from the live node: their epochs go up

    # The new owner sees everything the old one acknowledged.
    for name in counters.values():
        assert (await new.execute(CounterGet(namespace=NAMESPACE, name=name)))[0] == CounterValue(value=3)
    for name, tokens in handed_out.items():
        info, _ = await new.execute(Inspect(kind="lock", namespace=NAMESPACE, name=name))
        assert isinstance(info, LeaseInfo) and info.held and info.token == tokens[-1]

    # The old owner's next write to each shard is refused: a retryable error, and it lets the shard go.
    for shard, name in counters.items():
        with pytest.raises(Unavailable):
            await old.execute(CounterAdd(namespace=NAMESPACE, name=name, delta=100))
        assert old.slot_statuses()[shard] is SlotStatus.STANDBY
        # ...and it answers nothing more for that shard, writes or reads.
        lock_name = locks[shard]
        for cmd in (
            CounterAdd(namespace=NAMESPACE, name=name, delta=100),
            CounterGet(namespace=NAMESPACE, name=name),
            Inspect(kind="lock", namespace=NAMESPACE, name=lock_name),
            Acquire(kind="lock", namespace=NAMESPACE, name=lock_name, lease_id=new_lease_id(), ttl_ms=TTL_MS),
        ):
            with pytest.raises(Unavailable):
                await old.execute(cmd)
    assert set(old.slot_statuses().values()) == {SlotStatus.STANDBY}
    assert not old.ready

    # None of the refused writes left a trace.
    for name in counters.values():
        assert (await new.execute(CounterGet(namespace=NAMESPACE, name=name)))[0] == CounterValue(value=3)

    # The next grant of each lock, through the new owner, outranks every token the old one handed out.
    for name, tokens in handed_out.items():
        released, _ = await new.execute(Release(kind="lock", namespace=NAMESPACE, name=name, lease_id=leases[name]))
        assert released == Released()
        granted, _ = await new.execute(
            Acquire(kind="lock", namespace=NAMESPACE, name=name, lease_id=new_lease_id(), ttl_ms=TTL_MS)
        )
        assert isinstance(granted, Granted)
        assert granted.token > max(tokens), f"{name}: token {granted.token} after {tokens} from the old owner"
    assert new.ready and new.stats.failed_commits == 0


async def test_fenced_node_lets_go_of_every_shard_of_a_refused_commit(valkey: EmbeddedValkey, engines: Engines) -> None:
    """One refused group commit spans many shards: the old owner must drop all of them.

    It must not reload them: reloading takes a shard (increments its epoch), which would take
    it back from the node that legitimately owns it now.
    """
    old = await engines.start()
    counters = one_name_per_shard(old, "counter", NAMESPACE, "c")
    for name in counters.values():
        await old.execute(CounterAdd(namespace=NAMESPACE, name=name, delta=1))
    new = await engines.start(engines.config(take_over=True))
    async with admin_client(valkey.url) as admin:
        epochs_of_new_owner = await shard_epochs(admin, old.config.shard_count)

        # One tick, every shard: a single commit, refused by the store.
        answers = await asyncio.gather(
            *(old.execute(CounterAdd(namespace=NAMESPACE, name=name, delta=1)) for name in counters.values()),
            return_exceptions=True,
        )
        assert all(isinstance(answer, RetryableError) for answer in answers), answers
        await eventually(
            lambda: SlotStatus.LOADING not in old.slot_statuses().values(), timeout_s=10, what="the old owner settling"
        )
        statuses = old.slot_statuses()
        epochs_now = await shard_epochs(admin, old.config.shard_count)

    # The new owner keeps serving every shard, undisturbed.
    writes = await asyncio.gather(
        *(new.execute(CounterAdd(namespace=NAMESPACE, name=name, delta=1)) for name in counters.values()),
        return_exceptions=True,
    )
    taken_back = sorted(shard for shard, status in statuses.items() if status is not SlotStatus.STANDBY)
    assert not taken_back, f"the fenced node took shards {taken_back} back from their new owner ({statuses})"
    assert epochs_now == epochs_of_new_owner
    results = [write[0] if isinstance(write, tuple) else write for write in writes]
    assert results == [CounterValue(value=2)] * len(counters), results
    assert new.stats.failed_commits == 0


async def test_deposed_owner_does_not_confirm_superseded_tokens(engines: Engines) -> None:
    """After a takeover, the old owner must not answer from state the new owner has moved past.

    A resource asking "is token T still current?" must never hear yes from a node that no
    longer owns the shard while the owner has already granted the lock to someone else.
    """
    old = await engines.start()
    first = new_lease_id()
    granted_by_old, _ = await old.execute(
        Acquire(kind="lock", namespace=NAMESPACE, name="moved", lease_id=first, ttl_ms=TTL_MS)
    )
    assert isinstance(granted_by_old, Granted)

    new = await engines.start(engines.config(take_over=True))
    await new.execute(Release(kind="lock", namespace=NAMESPACE, name="moved", lease_id=first))
    granted_by_new, _ = await new.execute(
        Acquire(kind="lock", namespace=NAMESPACE, name="moved", lease_id=new_lease_id(), ttl_ms=TTL_MS)
    )
    assert isinstance(granted_by_new, Granted)

    stale_check = FenceCheck(kind="lock", namespace=NAMESPACE, name="moved", token=granted_by_old.token)
    try:
        answer, _ = await old.execute(stale_check)
    except Unavailable:
        pass  # the old owner knows it no longer serves the shard
    else:
        assert answer == FenceAnswer(current=False), (
            f"the deposed node confirms token {granted_by_old.token} as current; "
            f"the owner has since granted token {granted_by_new.token}"
        )
    try:
        info, _ = await old.execute(Inspect(kind="lock", namespace=NAMESPACE, name="moved"))
    except Unavailable:
        pass
    else:
        assert isinstance(info, LeaseInfo) and info.token == granted_by_new.token, (
            f"the deposed node reports {info!r}; the owner has granted token {granted_by_new.token}"
        )


@pytest.mark.parametrize("fault", ["the claim's reply is lost", "the store fails right after the claim"])
async def test_a_reload_interrupted_after_its_take_keeps_the_shard(
    engines: Engines, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    """A claim that the store applied counts as ours even if we never heard of it.

    The store bumped the epoch for us; a retry of the reload must not read that as another
    node's takeover, or a single node gives up its own shard until it restarts.
    """
    engine = await engines.start()
    add = CounterAdd(namespace=NAMESPACE, name="c", delta=1)
    shard = engine.shard_of(add)
    await engine.execute(add)
    store = engine._store
    claim, read_history = store.claim, store.read_history

    async def claim_then_lose_the_reply(*args: Any, **kwargs: Any) -> Claimed:
        monkeypatch.setattr(store, "claim", claim)
        await claim(*args, **kwargs)
        raise ConnectionError("the reply was lost")

    async def fail_after_the_take(*args: Any, **kwargs: Any) -> ShardHistory:
        monkeypatch.setattr(store, "read_history", read_history)
        raise ConnectionError("the store went away")

    if fault == "the claim's reply is lost":
        monkeypatch.setattr(store, "claim", claim_then_lose_the_reply)
    else:
        monkeypatch.setattr(store, "read_history", fail_after_the_take)
    await reload_after_a_failed_commit(engine, add, monkeypatch)

    assert await execute_until_served(engine, CounterGet(namespace=NAMESPACE, name="c")) == CounterValue(value=1)
    assert engine.slot_statuses()[shard] is SlotStatus.READY
    assert store.claim == claim and store.read_history == read_history, "the fault was never injected"


async def test_a_reload_that_another_owner_writes_into_stands_by(
    engines: Engines, valkey: EmbeddedValkey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node that loses a claim race reads a shard's history while the winner writes it.

    What it read mixes two owners' writes (here the log runs past the LSN it read first):
    it must stand by for the winner, not replay that and report itself broken.
    """
    engine = await engines.start(engines.config(shard_count=1))
    add = CounterAdd(namespace=NAMESPACE, name="c", delta=1)
    await engine.execute(add)
    xrange = engine._store._other.xrange  # type: ignore[attr-defined]

    async def another_node_claims_and_writes(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(engine._store._other, "xrange", xrange)  # type: ignore[attr-defined]
        winner = RedisLog(valkey.url)
        try:
            claimed = await winner.claim([0], "the-winner", 60_000, "force")
            keys = shard_keys(0)
            async with admin_client(valkey.url) as store:
                lsn = int(await store.get(keys.lsn))
                record = LogRecord(LOG_FORMAT_VERSION, lsn + 1, lsn + 1, [(int(time.time() * 1000), add)])
                assert not await store.eval(
                    COMMIT_SCRIPT, 3, keys.epoch, keys.lsn, keys.log,
                    claimed.epochs[0], lsn, lsn + 1, record_encoder.encode(record),
                )  # fmt: skip
        finally:
            await winner.close()
        return await xrange(*args, **kwargs)

    monkeypatch.setattr(engine._store._other, "xrange", another_node_claims_and_writes)  # type: ignore[attr-defined]
    await reload_after_a_failed_commit(engine, add, monkeypatch)
    await eventually(lambda: engine.slot_statuses()[0] is SlotStatus.STANDBY, what="the shard to stand by")
    assert engine._store._other.xrange == xrange, "the fault was never injected"  # type: ignore[attr-defined]
    assert engine.broken is None


async def reload_after_a_failed_commit(engine: Engine, cmd: Command, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `cmd`'s commit fail (as any failed commit would), so its shard reloads."""
    seal = engine._seal

    def fail_once(pending: PendingCommit) -> object:
        monkeypatch.setattr(engine, "_seal", seal)
        raise RuntimeError("a commit that could not be written")

    monkeypatch.setattr(engine, "_seal", fail_once)
    with pytest.raises(OutcomeUnknown):
        await engine.execute(cmd)
