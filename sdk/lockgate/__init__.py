"""Lockgate client: durable locks, semaphores, counters and rate limits.

    from lockgate import Client
    lg = Client("http://127.0.0.1:8420", namespace="billing")
    with lg.lock("invoice-42", ttl=10) as lease:
        write_to_storage(data, fencing_token=lease.token)

`AsyncClient` offers the same with `async with` / `await`, and batches concurrent calls.
"""

from ._async import AsyncClient, AsyncCounter, AsyncLeaseContext
from ._core import CompareAndSet, Lease, LockStatus, RateLimitDecision, RetryPolicy, Timeouts
from ._sync import Client, Counter, LeaseContext
from .errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    LeaseLost,
    LockgateError,
    LockHeld,
    MethodNotAllowed,
    NotFound,
    NotOwner,
    OutcomeUnknown,
    PayloadTooLarge,
    QuotaExceeded,
    Timeout,
    TransportError,
    Unauthorized,
    Unavailable,
    UnexpectedResponse,
)
from .fence import FenceGuard, StaleToken

__all__ = [
    "AsyncClient",
    "AsyncCounter",
    "AsyncLeaseContext",
    "Client",
    "CompareAndSet",
    "Conflict",
    "Counter",
    "FenceGuard",
    "Forbidden",
    "InvalidRequest",
    "Lease",
    "LeaseContext",
    "LeaseLost",
    "LockHeld",
    "LockStatus",
    "LockgateError",
    "MethodNotAllowed",
    "NotFound",
    "NotOwner",
    "OutcomeUnknown",
    "PayloadTooLarge",
    "QuotaExceeded",
    "RateLimitDecision",
    "RetryPolicy",
    "StaleToken",
    "Timeout",
    "Timeouts",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "UnexpectedResponse",
]
