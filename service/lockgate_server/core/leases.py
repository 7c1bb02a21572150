"""A pool of permits handed out as leases to a FIFO line of acquirers.

A lock is a pool with one permit; a semaphore is a pool with `limit` permits. The head
of the line is always served first, so a large request is never starved by small ones
that arrive after it.
"""

from __future__ import annotations

import msgspec

from ..limits import WAITERS_PER_OBJECT_MAX
from .context import Context
from .ops import (
    Acquire,
    CancelWait,
    Done,
    Failure,
    FenceAnswer,
    ForceRelease,
    Granted,
    LeaseInfo,
    Queued,
    Release,
    Released,
    Renew,
    Renewed,
    Result,
)


class Lease(msgspec.Struct, array_like=True, gc=False):
    token: int
    permits: int
    expires_at_ms: int
    ttl_ms: int
    holder: str | None


class Waiter(msgspec.Struct, array_like=True, gc=False):
    lease_id: str
    permits: int
    ttl_ms: int
    deadline_ms: int
    holder: str | None
    request_id: str | None


class LeasePool(msgspec.Struct, array_like=True):
    limit: int
    used: int = 0
    leases: dict[str, Lease] = msgspec.field(default_factory=dict)
    waiters: list[Waiter] = msgspec.field(default_factory=list)


def is_idle(pool: LeasePool) -> bool:
    """An idle pool carries no information and is dropped."""
    return not pool.leases and not pool.waiters


def next_deadline_ms(pool: LeasePool) -> int | None:
    times = [lease.expires_at_ms for lease in pool.leases.values()]
    times.extend(waiter.deadline_ms for waiter in pool.waiters)
    return min(times) if times else None


def settle(pool: LeasePool, ctx: Context) -> None:
    """End leases and waits that are due at ctx.now_ms, then serve the line."""
    now = ctx.now_ms
    due = [lease_id for lease_id, lease in pool.leases.items() if lease.expires_at_ms <= now]
    for lease_id in due:
        pool.used -= pool.leases.pop(lease_id).permits
    if any(waiter.deadline_ms <= now for waiter in pool.waiters):
        waiting = []
        for waiter in pool.waiters:
            if waiter.deadline_ms <= now:
                timeout = Failure(code="timeout", detail="not granted within wait_ms")
                ctx.notify(waiter.lease_id, waiter.request_id, timeout)
            else:
                waiting.append(waiter)
        pool.waiters = waiting
    _serve_line(pool, ctx)


def _grant(pool: LeasePool, ctx: Context, lease_id: str, permits: int, ttl_ms: int, holder: str | None) -> Granted:
    token = ctx.next_token()
    expires_at_ms = ctx.now_ms + ttl_ms
    pool.leases[lease_id] = Lease(token, permits, expires_at_ms, ttl_ms, holder)
    pool.used += permits
    ctx.deadline(expires_at_ms)
    return Granted(lease_id=lease_id, token=token, ttl_ms=ttl_ms, permits=permits)


def _serve_line(pool: LeasePool, ctx: Context) -> None:
    while pool.waiters and pool.waiters[0].permits <= pool.limit - pool.used:
        head = pool.waiters.pop(0)
        granted = _grant(pool, ctx, head.lease_id, head.permits, head.ttl_ms, head.holder)
        ctx.notify(head.lease_id, head.request_id, granted)


def _retry_hint_ms(pool: LeasePool, now_ms: int) -> int:
    expiries = [lease.expires_at_ms for lease in pool.leases.values()]
    return max(1, min(expiries) - now_ms) if expiries else 1


def acquire(pool: LeasePool, cmd: Acquire, ctx: Context) -> Result:
    settle(pool, ctx)
    if is_idle(pool):
        pool.limit = cmd.limit  # nobody holds or waits: the limit is the newcomer's to set
    if cmd.limit != pool.limit:
        return Failure(code="conflict", detail=f"this {cmd.kind} has limit {pool.limit}, not {cmd.limit}")
    if cmd.permits > pool.limit:
        return Failure(code="conflict", detail=f"{cmd.permits} permits exceed the limit {pool.limit}")
    if not pool.waiters and pool.used + cmd.permits <= pool.limit:
        return _grant(pool, ctx, cmd.lease_id, cmd.permits, cmd.ttl_ms, cmd.holder)
    if cmd.wait_ms <= 0:
        return Failure(code="held", detail=f"the {cmd.kind} is taken", retry_after_ms=_retry_hint_ms(pool, ctx.now_ms))
    if len(pool.waiters) >= WAITERS_PER_OBJECT_MAX:
        return Failure(code="too_many_waiters", detail=f"{WAITERS_PER_OBJECT_MAX} acquires already wait here")
    deadline_ms = ctx.now_ms + cmd.wait_ms
    pool.waiters.append(Waiter(cmd.lease_id, cmd.permits, cmd.ttl_ms, deadline_ms, cmd.holder, cmd.request_id))
    ctx.deadline(deadline_ms)
    return Queued(lease_id=cmd.lease_id)


def _not_owner(lease_id: str) -> Failure:
    return Failure(code="not_owner", detail=f"lease {lease_id} is not held (released, expired or never granted)")


def release(pool: LeasePool, cmd: Release, ctx: Context) -> Result:
    settle(pool, ctx)
    lease = pool.leases.pop(cmd.lease_id, None)
    if lease is None:
        return _not_owner(cmd.lease_id)
    pool.used -= lease.permits
    _serve_line(pool, ctx)
    return Released()


def renew(pool: LeasePool, cmd: Renew, ctx: Context) -> Result:
    settle(pool, ctx)
    lease = pool.leases.get(cmd.lease_id)
    if lease is None:
        return _not_owner(cmd.lease_id)
    lease.expires_at_ms = ctx.now_ms + cmd.ttl_ms
    lease.ttl_ms = cmd.ttl_ms
    ctx.deadline(lease.expires_at_ms)
    return Renewed(lease_id=cmd.lease_id, token=lease.token, ttl_ms=cmd.ttl_ms)


def cancel_wait(pool: LeasePool, cmd: CancelWait, ctx: Context) -> Result:
    """Take a departed caller out of line; if it was granted meanwhile, give the grant back."""
    settle(pool, ctx)
    for index, waiter in enumerate(pool.waiters):
        if waiter.lease_id == cmd.lease_id:
            del pool.waiters[index]
            ctx.notify(waiter.lease_id, waiter.request_id, Failure(code="cancelled", detail="the caller left"))
            _serve_line(pool, ctx)
            return Done()
    lease = pool.leases.pop(cmd.lease_id, None)
    if lease is not None:
        pool.used -= lease.permits
        ctx.notify(cmd.lease_id, cmd.request_id, Failure(code="cancelled", detail="given back: the caller left"))
        _serve_line(pool, ctx)
        return Released()
    return Done()


def force_release(pool: LeasePool, cmd: ForceRelease, ctx: Context) -> Result:
    settle(pool, ctx)
    pool.leases.clear()
    pool.used = 0
    _serve_line(pool, ctx)
    return Released()


def shift_for_outage(pool: LeasePool, outage_ms: int) -> list[Waiter]:
    """Give every live lease back the time our outage took; return the dropped waiters."""
    if outage_ms > 0:
        for lease in pool.leases.values():
            lease.expires_at_ms += outage_ms
    dropped, pool.waiters = pool.waiters, []
    return dropped


def _live_leases(pool: LeasePool, now_ms: int) -> list[Lease]:
    return [lease for lease in pool.leases.values() if lease.expires_at_ms > now_ms]


def inspect(pool: LeasePool | None, now_ms: int, *, default_limit: int) -> LeaseInfo:
    """A read: what the pool looks like at now_ms, without settling it."""
    if pool is None:
        return LeaseInfo(held=False, limit=default_limit, permits_used=0, waiters=0)
    live = _live_leases(pool, now_ms)
    waiting = sum(1 for waiter in pool.waiters if waiter.deadline_ms > now_ms)
    if not live:
        return LeaseInfo(held=False, limit=pool.limit, permits_used=0, waiters=waiting)
    newest = max(live, key=lambda lease: lease.token)
    return LeaseInfo(
        held=True,
        limit=pool.limit,
        permits_used=sum(lease.permits for lease in live),
        waiters=waiting,
        holder=newest.holder,
        token=newest.token,
        remaining_ms=newest.expires_at_ms - now_ms,
    )


def fence_check(pool: LeasePool | None, token: int, now_ms: int) -> FenceAnswer:
    if pool is None:
        return FenceAnswer(current=False)
    return FenceAnswer(current=any(lease.token == token for lease in _live_leases(pool, now_ms)))


LeaseCommand = Acquire | Release | Renew | CancelWait | ForceRelease


def apply(pool: LeasePool, cmd: LeaseCommand, ctx: Context) -> Result:
    match cmd:
        case Acquire():
            return acquire(pool, cmd, ctx)
        case Release():
            return release(pool, cmd, ctx)
        case Renew():
            return renew(pool, cmd, ctx)
        case CancelWait():
            return cancel_wait(pool, cmd, ctx)
        case ForceRelease():
            return force_release(pool, cmd, ctx)
    raise AssertionError(f"not a lease command: {cmd!r}")
