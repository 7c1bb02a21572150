"""A renewal by hand (`renew(lease, ttl=...)`) moves the background renewer's schedule.

Before, the keeper kept its own expiry and next renewal: inside lock(ttl=30), renew(lease,
ttl=1) left the renewer asleep for 10 s, the server let the lease expire after 1 s and
another client took the lock while ours still said lost=False.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest
from lockgate import AsyncClient, Client, Lease, LeaseLost, LockHeld, NotOwner, TransportError
from lockgate import _core as core

SHORT_S = 1.0
PAST_IT_S = 1.6


async def test_async_a_shorter_ttl_by_hand_is_renewed_on_its_schedule(base_url: str, namespace: str) -> None:
    async with AsyncClient(base_url, namespace=namespace) as lg, AsyncClient(base_url, namespace=namespace) as other:
        async with lg.lock("job", ttl=30, cancel_on_loss=True) as lease:
            await lg.renew(lease, ttl=SHORT_S)
            assert lease.ttl == SHORT_S
            await asyncio.sleep(PAST_IT_S)
            with pytest.raises(LockHeld):
                await other.lock("job", ttl=30, wait=0).acquire()
            status = await other.lock_status("job")
            assert status.held and status.token == lease.token
            assert status.remaining is not None and status.remaining <= SHORT_S  # renewed on the new TTL
            assert not lease.lost
        assert lease.released


def test_sync_a_shorter_ttl_by_hand_is_renewed_on_its_schedule(base_url: str, namespace: str) -> None:
    with Client(base_url, namespace=namespace) as lg, Client(base_url, namespace=namespace) as other:
        with lg.lock("job", ttl=30) as lease:
            lg.renew(lease, ttl=SHORT_S)
            time.sleep(PAST_IT_S)
            with pytest.raises(LockHeld):
                other.lock("job", ttl=30, wait=0).acquire()
            status = other.lock_status("job")
            assert status.held and status.token == lease.token
            assert status.remaining is not None and status.remaining <= SHORT_S
            assert not lease.lost
        assert lease.released


async def test_async_a_refusal_by_hand_is_the_lease_s_loss(base_url: str, namespace: str) -> None:
    async with AsyncClient(base_url, namespace=namespace) as lg:
        with pytest.raises(LeaseLost):
            async with lg.lock("job", ttl=30, cancel_on_loss=True) as lease:
                assert await lg.release(dataclasses.replace(lease))  # behind the context's back
                with pytest.raises(NotOwner):
                    await lg.renew(lease)
                assert lease.lost
                await asyncio.sleep(5)  # the renewer wakes, sees the loss and cancels this block
                pytest.fail("the guarded block was not cancelled")


def test_sync_a_refusal_by_hand_is_the_lease_s_loss(base_url: str, namespace: str) -> None:
    lost: list[Lease] = []
    with Client(base_url, namespace=namespace) as lg:
        context = lg.lock("job", ttl=30, on_lost=lost.append)
        lease = context.acquire()
        assert lg.release(dataclasses.replace(lease))  # released behind the context's back
        with pytest.raises(NotOwner):
            lg.renew(lease)
        assert lease.lost and lost == [lease]
        context.release()


# --- the keeper's schedule (core) ---------------------------------------------------------------------
TIMEOUTS = core.Timeouts(connect=1.0, read=5.0, total=10.0)


def _keeper(ttl: float = 30.0) -> core.LeaseKeeper:
    lease = core.Lease(namespace="ns", kind="lock", name="job", lease_id="l", token=1, ttl=ttl)
    return core.LeaseKeeper(lease, sent_at=100.0, answered_at=100.1, timeouts=TIMEOUTS)


def test_a_renewal_by_hand_sets_the_bound_and_the_next_renewal() -> None:
    keeper = _keeper()
    keeper.renewed_by_hand(sent_at=101.0, ttl=1.0, now=101.1)
    assert keeper.expires_by == 102.0 and keeper.lease.ttl == 1.0
    assert keeper.next(101.1) == core.Wait(pytest.approx(1.0 / 3 - 0.1))
    renew = keeper.next(101.4)
    assert isinstance(renew, core.Renew) and renew.timeouts.total == pytest.approx(0.6)
    keeper.renewed(1.0, 101.5)
    assert keeper.expires_by == pytest.approx(102.4)


def test_a_longer_ttl_by_hand_extends_the_bound() -> None:
    keeper = _keeper(ttl=3.0)
    keeper.renewed_by_hand(sent_at=101.0, ttl=60.0, now=101.1)
    assert keeper.expires_by == 161.0
    assert keeper.next(101.1) == core.Wait(pytest.approx(19.9))


def test_two_renewals_in_flight_together_keep_the_earlier_bound() -> None:
    keeper = _keeper()
    assert isinstance(keeper.next(110.0), core.Renew)  # ours, for 30 s, sent at 110
    keeper.renewed_by_hand(sent_at=110.5, ttl=1.0, now=111.0)  # by hand, for 1 s, answered first
    keeper.renewed(30.0, 111.2)  # ours answers last, but the server may have applied it first
    assert keeper.expires_by == 111.5
    assert isinstance(keeper.next(110.9), core.Renew)  # due at 110.5 + 1/3

    keeper = _keeper()
    keeper.next(110.0)
    keeper.renewed(30.0, 110.2)
    keeper.renewed_by_hand(sent_at=110.1, ttl=1.0, now=110.3)  # sent before ours answered
    assert keeper.expires_by == 111.1
    keeper.renewed_by_hand(sent_at=110.4, ttl=30.0, now=110.5)  # sent after both answers: applied last
    assert keeper.expires_by == 140.4


def test_a_failed_renewal_by_hand() -> None:
    keeper = _keeper()
    keeper.renewal_by_hand_failed(TransportError("no answer"), sent_at=101.0, ttl=1.0)  # may have been applied
    assert keeper.expires_by == 102.0 and not keeper.lease.lost
    keeper.renewal_by_hand_failed(NotOwner("gone"), sent_at=101.5, ttl=1.0)
    assert keeper.lease.lost and keeper.next(101.6) == core.Stop(lost=True)

    keeper = _keeper()
    keeper.lease.releasing = True
    keeper.renewal_by_hand_failed(NotOwner("released"), sent_at=101.0, ttl=1.0)
    assert not keeper.lease.lost
