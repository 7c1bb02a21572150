"""Every /v1 route, declared once: path, right, body, response, and the call into the engine.

The ASGI dispatcher serves requests from this table, the OpenAPI document is generated
from it, and /v1/batch runs its operations through the very same handlers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from ..core import ops
from ..engine.node import Engine, new_lease_id
from ..errors import error_for
from ..settings import Settings
from . import schemas
from .auth import Right


@dataclass(frozen=True, slots=True)
class Call:
    """What a handler gets: the engine, settings, and the addressed object."""

    engine: Engine
    settings: Settings
    namespace: str
    name: str


Handler = Callable[[Call, Any], Awaitable[msgspec.Struct]]


@dataclass(frozen=True, slots=True)
class Route:
    operation: str  # "locks.acquire": the metric label and the batch op name
    method: str
    path: str
    right: Right
    body: type[msgspec.Struct] | None
    query: type[msgspec.Struct] | None
    response: type[msgspec.Struct]
    handler: Handler
    summary: str
    may_block: bool = False  # watches the connection: a caller that leaves gives up its place


def _ok(result: ops.Result) -> ops.Result:
    if isinstance(result, ops.Failure):
        raise error_for(result)
    return result


def _lease(result: ops.Result, lsn: int) -> schemas.Lease:
    granted = _ok(result)
    assert isinstance(granted, ops.Granted)
    return schemas.Lease(
        lease_id=granted.lease_id, token=granted.token, ttl_ms=granted.ttl_ms, permits=granted.permits, lsn=lsn
    )


# --- locks and semaphores ---------------------------------------------------------------------
async def lock_acquire(call: Call, body: schemas.LockAcquire) -> schemas.Lease:
    command = ops.Acquire(
        kind="lock",
        namespace=call.namespace,
        name=call.name,
        lease_id=new_lease_id(),
        ttl_ms=body.ttl_ms,
        wait_ms=min(body.wait_ms, call.settings.max_wait_ms),
        holder=body.holder,
        request_id=body.request_id,
    )
    return _lease(*await call.engine.execute(command))


async def semaphore_acquire(call: Call, body: schemas.SemaphoreAcquire) -> schemas.Lease:
    command = ops.Acquire(
        kind="semaphore",
        namespace=call.namespace,
        name=call.name,
        lease_id=new_lease_id(),
        ttl_ms=body.ttl_ms,
        wait_ms=min(body.wait_ms, call.settings.max_wait_ms),
        limit=body.limit,
        permits=body.permits,
        holder=body.holder,
        request_id=body.request_id,
    )
    return _lease(*await call.engine.execute(command))


def _lease_routes(kind: ops.LeaseKind, collection: str) -> list[Route]:
    base = f"/v1/namespaces/{{namespace}}/{collection}/{{name}}"

    async def release(call: Call, body: schemas.LeaseRelease) -> schemas.LeaseReleased:
        command = ops.Release(
            kind=kind, namespace=call.namespace, name=call.name, lease_id=body.lease_id, request_id=body.request_id
        )
        result, lsn = await call.engine.execute(command)
        _ok(result)
        return schemas.LeaseReleased(released=True, lsn=lsn)

    async def renew(call: Call, body: schemas.LeaseRenew) -> schemas.Lease:
        command = ops.Renew(
            kind=kind,
            namespace=call.namespace,
            name=call.name,
            lease_id=body.lease_id,
            ttl_ms=body.ttl_ms,
            request_id=body.request_id,
        )
        result, lsn = await call.engine.execute(command)
        renewed = _ok(result)
        assert isinstance(renewed, ops.Renewed)
        return schemas.Lease(lease_id=renewed.lease_id, token=renewed.token, ttl_ms=renewed.ttl_ms, permits=0, lsn=lsn)

    async def inspect(call: Call, _: None) -> schemas.LeaseStatus:
        result, lsn = await call.engine.execute(ops.Inspect(kind=kind, namespace=call.namespace, name=call.name))
        assert isinstance(result, ops.LeaseInfo)
        return schemas.LeaseStatus(
            held=result.held,
            limit=result.limit,
            permits_used=result.permits_used,
            waiters=result.waiters,
            holder=result.holder,
            token=result.token,
            remaining_ms=result.remaining_ms,
            lsn=lsn,
        )

    async def force_release(call: Call, _: None) -> schemas.LeaseReleased:
        result, lsn = await call.engine.execute(ops.ForceRelease(kind=kind, namespace=call.namespace, name=call.name))
        _ok(result)
        return schemas.LeaseReleased(released=True, lsn=lsn)

    acquire: Handler = lock_acquire if kind == "lock" else semaphore_acquire
    acquire_body = schemas.LockAcquire if kind == "lock" else schemas.SemaphoreAcquire
    return [
        Route(f"{collection}.acquire", "POST", f"{base}/acquire", "write", acquire_body, None, schemas.Lease, acquire,
              f"Acquire the {kind} (waits up to wait_ms in FIFO order); 409 if not granted", may_block=True),
        Route(f"{collection}.release", "POST", f"{base}/release", "write", schemas.LeaseRelease, None,
              schemas.LeaseReleased, release, f"Release a {kind} lease"),
        Route(f"{collection}.renew", "POST", f"{base}/renew", "write", schemas.LeaseRenew, None, schemas.Lease,
              renew, f"Extend a {kind} lease to ttl_ms from now"),
        Route(f"{collection}.get", "GET", base, "read", None, None, schemas.LeaseStatus, inspect,
              f"Inspect the {kind}: holder, token, remaining ttl, waiters"),
        Route(f"{collection}.force_release", "POST", f"{base}/force-release", "admin", None, None,
              schemas.LeaseReleased, force_release, f"Admin: end every lease on the {kind}"),
    ]  # fmt: skip


# --- counters -------------------------------------------------------------------------------
async def counter_get(call: Call, _: None) -> schemas.CounterValue:
    result, lsn = await call.engine.execute(ops.CounterGet(namespace=call.namespace, name=call.name))
    assert isinstance(result, ops.CounterValue)
    return schemas.CounterValue(value=result.value, lsn=lsn)


async def counter_add(call: Call, body: schemas.CounterAdd) -> schemas.CounterValue:
    command = ops.CounterAdd(
        namespace=call.namespace,
        name=call.name,
        delta=body.delta,
        minimum=body.min,
        maximum=body.max,
        request_id=body.request_id,
    )
    result, lsn = await call.engine.execute(command)
    value = _ok(result)
    assert isinstance(value, ops.CounterValue)
    return schemas.CounterValue(value=value.value, lsn=lsn)


async def counter_set(call: Call, body: schemas.CounterSet) -> schemas.CounterValue:
    command = ops.CounterSet(namespace=call.namespace, name=call.name, value=body.value, request_id=body.request_id)
    result, lsn = await call.engine.execute(command)
    value = _ok(result)
    assert isinstance(value, ops.CounterValue)
    return schemas.CounterValue(value=value.value, lsn=lsn)


async def counter_compare_and_set(call: Call, body: schemas.CounterCompareAndSet) -> schemas.CompareAndSetResult:
    command = ops.CounterCompareAndSet(
        namespace=call.namespace, name=call.name, expected=body.expected, value=body.value, request_id=body.request_id
    )
    result, lsn = await call.engine.execute(command)
    outcome = _ok(result)
    assert isinstance(outcome, ops.CasOutcome)
    return schemas.CompareAndSetResult(swapped=outcome.swapped, value=outcome.value, lsn=lsn)


# --- rate limits ----------------------------------------------------------------------------
def _decision(result: ops.Result, lsn: int) -> schemas.RateDecision:
    assert isinstance(result, ops.RateDecision)
    return schemas.RateDecision(
        allowed=result.allowed,
        limit=result.limit,
        remaining=result.remaining,
        reset_after_ms=result.reset_after_ms,
        retry_after_ms=result.retry_after_ms,
        lsn=lsn,
    )


async def rate_check(call: Call, body: schemas.RateCheck) -> schemas.RateDecision:
    command = ops.RateCheck(
        namespace=call.namespace,
        name=call.name,
        limit=body.limit,
        period_ms=body.period_ms,
        burst=body.burst,
        cost=body.cost,
        algorithm=body.algorithm,
        request_id=body.request_id if body.cost else None,
    )
    return _decision(*await call.engine.execute(command))


async def rate_peek(call: Call, query: schemas.RatePeek) -> schemas.RateDecision:
    command = ops.RateCheck(
        namespace=call.namespace,
        name=call.name,
        limit=query.limit,
        period_ms=query.period_ms,
        burst=query.burst,
        cost=0,
        algorithm=query.algorithm,
    )
    return _decision(*await call.engine.execute(command))


async def rate_reset(call: Call, body: schemas.RateReset | None) -> schemas.Done:
    request_id = body.request_id if body is not None else None
    _, lsn = await call.engine.execute(ops.RateReset(namespace=call.namespace, name=call.name, request_id=request_id))
    return schemas.Done(lsn=lsn)


async def fence_check(call: Call, body: schemas.FenceCheck) -> schemas.FenceAnswer:
    command = ops.FenceCheck(kind=body.kind, namespace=call.namespace, name=body.name, token=body.token)
    result, lsn = await call.engine.execute(command)
    assert isinstance(result, ops.FenceAnswer)
    return schemas.FenceAnswer(current=result.current, lsn=lsn)


async def held_objects(call: Call, _: None) -> schemas.HeldObjects:
    held = await call.engine.held_objects(call.namespace)
    return schemas.HeldObjects(
        objects=[
            schemas.HeldObject(kind=kind, name=name, permits_used=used, waiters=waiters)
            for kind, name, used, waiters in held
        ]
    )


_NS = "/v1/namespaces/{namespace}"
_COUNTER = f"{_NS}/counters/{{name}}"
_RATE = f"{_NS}/ratelimits/{{name}}"

ROUTES: list[Route] = [
    *_lease_routes("lock", "locks"),
    *_lease_routes("semaphore", "semaphores"),
    Route("counters.get", "GET", _COUNTER, "read", None, None, schemas.CounterValue, counter_get,
          "Read a counter (0 if never set)"),
    Route("counters.add", "POST", f"{_COUNTER}/add", "write", schemas.CounterAdd, None, schemas.CounterValue,
          counter_add, "Add delta; refused with 409 if it would cross min/max or the int64 range"),
    Route("counters.set", "PUT", _COUNTER, "write", schemas.CounterSet, None, schemas.CounterValue, counter_set,
          "Set the counter"),
    Route("counters.compare_and_set", "POST", f"{_COUNTER}/compare-and-set", "write", schemas.CounterCompareAndSet,
          None, schemas.CompareAndSetResult, counter_compare_and_set,
          "Set to value if the counter equals expected"),
    Route("ratelimits.check", "POST", f"{_RATE}/check", "write", schemas.RateCheck, None, schemas.RateDecision,
          rate_check, "Check and consume cost; a denial is a normal 200 answer"),
    Route("ratelimits.peek", "GET", _RATE, "read", None, schemas.RatePeek, schemas.RateDecision, rate_peek,
          "What a check would answer, without charging"),
    Route("ratelimits.reset", "POST", f"{_RATE}/reset", "write", schemas.RateReset, None, schemas.Done, rate_reset,
          "Forget the key's state (back to full)"),
    Route("fence.check", "POST", f"{_NS}/fence/check", "read", schemas.FenceCheck, None, schemas.FenceAnswer,
          fence_check, "Is this token the current one for the object?"),
    Route("held.list", "GET", f"{_NS}/held", "admin", None, None, schemas.HeldObjects, held_objects,
          "Admin: locks and semaphores currently held in the namespace"),
]  # fmt: skip

BY_OPERATION: dict[str, Route] = {route.operation: route for route in ROUTES}
