"""Request and response bodies of the HTTP API. Bounds live on the fields themselves."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from .. import limits

TtlMs = Annotated[int, Meta(ge=limits.TTL_MIN_MS, le=limits.TTL_MAX_MS, description="Lease time to live in ms")]
WaitMs = Annotated[int, Meta(ge=0, le=limits.WAIT_MAX_MS, description="How long to wait in line, in ms")]
RequestId = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=limits.REQUEST_ID_MAX_LENGTH,
        description="Idempotency key: a retry with the same id gets the first answer",
    ),
]
Holder = Annotated[str, Meta(max_length=limits.HOLDER_MAX_LENGTH, description="Free label shown by inspect")]
LeaseId = Annotated[str, Meta(min_length=1, max_length=64)]
Int64 = Annotated[int, Meta(ge=limits.INT64_MIN, le=limits.INT64_MAX)]
Permits = Annotated[int, Meta(ge=1, le=limits.PERMITS_MAX)]
Name = Annotated[str, Meta(pattern=limits.NAME_PATTERN, max_length=limits.NAME_MAX_LENGTH)]
Kind = Literal["lock", "semaphore"]


class LockAcquire(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    ttl_ms: TtlMs
    wait_ms: WaitMs = 0
    holder: Holder | None = None
    request_id: RequestId | None = None


class SemaphoreAcquire(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    limit: Permits
    ttl_ms: TtlMs
    permits: Permits = 1
    wait_ms: WaitMs = 0
    holder: Holder | None = None
    request_id: RequestId | None = None


class LeaseRelease(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    lease_id: LeaseId
    request_id: RequestId | None = None


class LeaseRenew(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    lease_id: LeaseId
    ttl_ms: TtlMs
    request_id: RequestId | None = None


class CounterAdd(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    delta: Int64
    min: Int64 | None = None
    max: Int64 | None = None
    request_id: RequestId | None = None


class CounterSet(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    value: Int64
    request_id: RequestId | None = None


class CounterCompareAndSet(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    expected: Int64
    value: Int64
    request_id: RequestId | None = None


RateLimit = Annotated[int, Meta(ge=1, le=limits.RATE_LIMIT_MAX, description="Requests allowed per period")]
PeriodMs = Annotated[int, Meta(ge=limits.RATE_PERIOD_MIN_MS, le=limits.RATE_PERIOD_MAX_MS)]
Burst = Annotated[int, Meta(ge=1, le=limits.RATE_LIMIT_MAX, description="Largest burst; default: limit")]
Algorithm = Literal["gcra", "sliding_window", "fixed_window"]


class RateCheck(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    limit: RateLimit
    period_ms: PeriodMs
    burst: Burst | None = None
    cost: Annotated[int, Meta(ge=0, le=limits.RATE_COST_MAX, description="0 peeks without charging")] = 1
    algorithm: Algorithm = "gcra"
    request_id: RequestId | None = None


class RatePeek(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Query of GET .../ratelimits/{key}: the policy of a check, charging nothing."""

    limit: RateLimit
    period_ms: PeriodMs
    burst: Burst | None = None
    algorithm: Algorithm = "gcra"


class RateReset(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    request_id: RequestId | None = None


class BatchOp(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # namespace and name are plain strings here, not patterned types: decoding checks the
    # whole request at once, so one op's bad name would refuse every op with it. The dispatcher
    # checks them per op (as it does a route's path), and a bad one fails only its own op.
    op: Annotated[str, Meta(description="A route's operation name, e.g. locks.acquire, ratelimits.check")]
    namespace: Annotated[str, Meta(description="Checked per op: " + limits.NAMESPACE_PATTERN)]
    name: Annotated[str, Meta(description="Checked per op: " + limits.NAME_PATTERN)] | None = None
    args: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)


class BatchRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    ops: list[BatchOp]


class FenceCheck(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    kind: Kind
    name: Name
    token: Annotated[int, Meta(ge=0, le=limits.INT64_MAX)]


# --- responses -------------------------------------------------------------------------------
class Lease(msgspec.Struct, kw_only=True):
    lease_id: str
    token: int
    ttl_ms: int
    permits: int
    lsn: int


class LeaseReleased(msgspec.Struct, kw_only=True):
    released: bool
    lsn: int


class LeaseStatus(msgspec.Struct, kw_only=True):
    held: bool
    limit: int
    permits_used: int
    waiters: int
    holder: str | None
    token: int | None
    remaining_ms: int | None
    lsn: int


class CounterValue(msgspec.Struct, kw_only=True):
    value: int
    lsn: int


class CompareAndSetResult(msgspec.Struct, kw_only=True):
    swapped: bool
    value: int
    lsn: int


class RateDecision(msgspec.Struct, kw_only=True):
    allowed: bool
    limit: int
    remaining: int
    reset_after_ms: int
    retry_after_ms: int
    lsn: int


class Done(msgspec.Struct, kw_only=True):
    lsn: int


class FenceAnswer(msgspec.Struct, kw_only=True):
    current: bool
    lsn: int


class HeldObject(msgspec.Struct, kw_only=True):
    kind: Kind
    name: str
    permits_used: int
    waiters: int


class HeldObjects(msgspec.Struct, kw_only=True):
    objects: list[HeldObject]


class BatchItem(msgspec.Struct, kw_only=True, omit_defaults=True):
    status: int
    body: Any = None
    problem: Problem | None = None


class BatchResponse(msgspec.Struct, kw_only=True):
    results: list[BatchItem]


class Problem(msgspec.Struct, kw_only=True, omit_defaults=True):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str = ""
    retry_after_ms: int | None = None
    errors: list[str] | None = None
