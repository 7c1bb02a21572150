"""Every /v1 route, declared once: path, right, body, response, the command it sequences
and how its result is rendered.

The ASGI dispatcher serves requests from this table, the OpenAPI document is generated
from it, and /v1/batch runs its operations through the very same command/render pairs.
Splitting "build the command" from "render the result" lets a batch sequence all its
commands first and then wait once for the commit that covers them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgspec

from .. import limits
from ..core import ops
from ..core.ratelimit import burst_window_fits
from ..engine.node import Engine, new_lease_id
from ..errors import InvalidRequest, error_for
from ..settings import Settings
from . import schemas
from .auth import Right


class Call(NamedTuple):
    """What a route gets: the engine, settings, and the addressed object (one per op, so a
    tuple: a frozen dataclass's __init__ showed in the batch profile)."""

    engine: Engine
    settings: Settings
    namespace: str
    name: str


CommandFor = Callable[[Call, Any], ops.Command]
Render = Callable[[ops.Result, int], msgspec.Struct]
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
    summary: str
    command: CommandFor | None = None  # one engine command per request ...
    render: Render | None = None
    custom: Handler | None = None  # ... or a handler of its own (listings)
    may_block: bool = False  # watches the connection: a caller that leaves gives up its place

    async def handle(self, call: Call, argument: Any) -> msgspec.Struct:
        if self.custom is not None:
            return await self.custom(call, argument)
        assert self.command is not None and self.render is not None
        return self.render(*await call.engine.execute(self.command(call, argument)))


def _ok(result: ops.Result) -> ops.Result:
    if isinstance(result, ops.Failure):
        raise error_for(result)
    return result


# --- locks and semaphores ---------------------------------------------------------------------
def _lease(result: ops.Result, lsn: int) -> schemas.Lease:
    granted = _ok(result)
    assert isinstance(granted, ops.Granted)
    return schemas.Lease(
        lease_id=granted.lease_id, token=granted.token, ttl_ms=granted.ttl_ms, permits=granted.permits, lsn=lsn
    )


def _renewed(result: ops.Result, lsn: int) -> schemas.Lease:
    renewed = _ok(result)
    assert isinstance(renewed, ops.Renewed)
    return schemas.Lease(lease_id=renewed.lease_id, token=renewed.token, ttl_ms=renewed.ttl_ms, permits=0, lsn=lsn)


def _released(result: ops.Result, lsn: int) -> schemas.LeaseReleased:
    _ok(result)
    return schemas.LeaseReleased(released=True, lsn=lsn)


def _status(result: ops.Result, lsn: int) -> schemas.LeaseStatus:
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


def _acquire_lock(call: Call, body: schemas.LockAcquire) -> ops.Command:
    return ops.Acquire(
        kind="lock",
        namespace=call.namespace,
        name=call.name,
        lease_id=new_lease_id(),
        ttl_ms=body.ttl_ms,
        wait_ms=min(body.wait_ms, call.settings.max_wait_ms),
        holder=body.holder,
        request_id=body.request_id,
    )


def _acquire_semaphore(call: Call, body: schemas.SemaphoreAcquire) -> ops.Command:
    if body.permits > body.limit:
        raise InvalidRequest(f"permits ({body.permits}) must be at most limit ({body.limit})")
    return ops.Acquire(
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


def _lease_routes(kind: ops.LeaseKind, collection: str) -> list[Route]:
    base = f"/v1/namespaces/{{namespace}}/{collection}/{{name}}"

    def release(call: Call, body: schemas.LeaseRelease) -> ops.Command:
        return ops.Release(
            kind=kind, namespace=call.namespace, name=call.name, lease_id=body.lease_id, request_id=body.request_id
        )

    def renew(call: Call, body: schemas.LeaseRenew) -> ops.Command:
        return ops.Renew(
            kind=kind,
            namespace=call.namespace,
            name=call.name,
            lease_id=body.lease_id,
            ttl_ms=body.ttl_ms,
            request_id=body.request_id,
        )

    def inspect(call: Call, _: None) -> ops.Command:
        return ops.Inspect(kind=kind, namespace=call.namespace, name=call.name)

    def force_release(call: Call, _: None) -> ops.Command:
        return ops.ForceRelease(kind=kind, namespace=call.namespace, name=call.name)

    acquire: CommandFor = _acquire_lock if kind == "lock" else _acquire_semaphore
    acquire_body = schemas.LockAcquire if kind == "lock" else schemas.SemaphoreAcquire
    return [
        Route(f"{collection}.acquire", "POST", f"{base}/acquire", "write", acquire_body, None, schemas.Lease,
              f"Acquire the {kind} (waits up to wait_ms in FIFO order); 409 if not granted",
              acquire, _lease, may_block=True),
        Route(f"{collection}.release", "POST", f"{base}/release", "write", schemas.LeaseRelease, None,
              schemas.LeaseReleased, f"Release a {kind} lease", release, _released),
        Route(f"{collection}.renew", "POST", f"{base}/renew", "write", schemas.LeaseRenew, None, schemas.Lease,
              f"Extend a {kind} lease to ttl_ms from now", renew, _renewed),
        Route(f"{collection}.get", "GET", base, "read", None, None, schemas.LeaseStatus,
              f"Inspect the {kind}: holder, token, remaining ttl, waiters", inspect, _status),
        Route(f"{collection}.force_release", "POST", f"{base}/force-release", "admin", None, None,
              schemas.LeaseReleased, f"Admin: end every lease on the {kind}", force_release, _released),
    ]  # fmt: skip


# --- counters -------------------------------------------------------------------------------
def _value(result: ops.Result, lsn: int) -> schemas.CounterValue:
    value = _ok(result)
    assert isinstance(value, ops.CounterValue)
    return schemas.CounterValue(value=value.value, lsn=lsn)


def _swapped(result: ops.Result, lsn: int) -> schemas.CompareAndSetResult:
    outcome = _ok(result)
    assert isinstance(outcome, ops.CasOutcome)
    return schemas.CompareAndSetResult(swapped=outcome.swapped, value=outcome.value, lsn=lsn)


def _counter_get(call: Call, _: None) -> ops.Command:
    return ops.CounterGet(namespace=call.namespace, name=call.name)


def _counter_add(call: Call, body: schemas.CounterAdd) -> ops.Command:
    if body.min is not None and body.max is not None and body.min > body.max:
        raise InvalidRequest(f"min ({body.min}) must be at most max ({body.max})")
    return ops.CounterAdd(
        namespace=call.namespace,
        name=call.name,
        delta=body.delta,
        minimum=body.min,
        maximum=body.max,
        request_id=body.request_id,
    )


def _counter_set(call: Call, body: schemas.CounterSet) -> ops.Command:
    return ops.CounterSet(namespace=call.namespace, name=call.name, value=body.value, request_id=body.request_id)


def _counter_compare_and_set(call: Call, body: schemas.CounterCompareAndSet) -> ops.Command:
    return ops.CounterCompareAndSet(
        namespace=call.namespace, name=call.name, expected=body.expected, value=body.value, request_id=body.request_id
    )


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


def _rate_check(call: Call, body: schemas.RateCheck) -> ops.Command:
    _refuse_long_bursts(body)
    most = body.burst if body.algorithm == "gcra" and body.burst is not None else body.limit
    if body.cost > most:
        # It would be denied for good, each time with a retry_after_ms that is never enough.
        bound = "limit" if most == body.limit else "burst"
        raise InvalidRequest(f"cost ({body.cost}) must be at most {bound} ({most})")
    return ops.RateCheck(
        namespace=call.namespace,
        name=call.name,
        limit=body.limit,
        period_ms=body.period_ms,
        burst=body.burst,
        cost=body.cost,
        algorithm=body.algorithm,
        request_id=body.request_id if body.cost else None,
    )


def _rate_peek(call: Call, query: schemas.RatePeek) -> ops.Command:
    _refuse_long_bursts(query)
    return ops.RateCheck(
        namespace=call.namespace,
        name=call.name,
        limit=query.limit,
        period_ms=query.period_ms,
        burst=query.burst,
        cost=0,
        algorithm=query.algorithm,
    )


def _refuse_long_bursts(spec: schemas.RateCheck | schemas.RatePeek) -> None:
    if not burst_window_fits(spec.algorithm, spec.limit, spec.period_ms, spec.burst):
        raise InvalidRequest(
            f"burst x period_ms / limit must be at most {limits.RATE_PERIOD_MAX_MS} ms (the longest period)"
        )


def _rate_reset(call: Call, body: schemas.RateReset | None) -> ops.Command:
    request_id = body.request_id if body is not None else None
    return ops.RateReset(namespace=call.namespace, name=call.name, request_id=request_id)


def _done(_: ops.Result, lsn: int) -> schemas.Done:
    return schemas.Done(lsn=lsn)


def _fence_check(call: Call, body: schemas.FenceCheck) -> ops.Command:
    return ops.FenceCheck(kind=body.kind, namespace=call.namespace, name=body.name, token=body.token)


def _fence_answer(result: ops.Result, lsn: int) -> schemas.FenceAnswer:
    assert isinstance(result, ops.FenceAnswer)
    return schemas.FenceAnswer(current=result.current, lsn=lsn)


async def _held_objects(call: Call, _: None) -> schemas.HeldObjects:
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
    Route("counters.get", "GET", _COUNTER, "read", None, None, schemas.CounterValue,
          "Read a counter (0 if never set)", _counter_get, _value),
    Route("counters.add", "POST", f"{_COUNTER}/add", "write", schemas.CounterAdd, None, schemas.CounterValue,
          "Add delta; refused with 409 if it would cross min/max or the int64 range", _counter_add, _value),
    Route("counters.set", "PUT", _COUNTER, "write", schemas.CounterSet, None, schemas.CounterValue,
          "Set the counter", _counter_set, _value),
    Route("counters.compare_and_set", "POST", f"{_COUNTER}/compare-and-set", "write", schemas.CounterCompareAndSet,
          None, schemas.CompareAndSetResult, "Set to value if the counter equals expected",
          _counter_compare_and_set, _swapped),
    Route("ratelimits.check", "POST", f"{_RATE}/check", "write", schemas.RateCheck, None, schemas.RateDecision,
          "Check and consume cost; a denial is a normal 200 answer", _rate_check, _decision),
    Route("ratelimits.peek", "GET", _RATE, "read", None, schemas.RatePeek, schemas.RateDecision,
          "What a check would answer, without charging", _rate_peek, _decision),
    Route("ratelimits.reset", "POST", f"{_RATE}/reset", "write", schemas.RateReset, None, schemas.Done,
          "Forget the key's state (back to full)", _rate_reset, _done),
    Route("fence.check", "POST", f"{_NS}/fence/check", "read", schemas.FenceCheck, None, schemas.FenceAnswer,
          "Is this token the current one for the object?", _fence_check, _fence_answer),
    Route("held.list", "GET", f"{_NS}/held", "admin", None, None, schemas.HeldObjects,
          "Admin: locks and semaphores currently held in the namespace", custom=_held_objects),
]  # fmt: skip

BY_OPERATION: dict[str, Route] = {route.operation: route for route in ROUTES}
