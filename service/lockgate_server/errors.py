"""One exception hierarchy. Domain errors carry no HTTP status: the edge maps them."""

from __future__ import annotations

from .core.ops import Failure


class LockgateError(Exception):
    """Base of every error Lockgate raises on purpose."""

    retry_after_ms: int | None = None

    def __init__(self, detail: str, *, retry_after_ms: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if retry_after_ms is not None:
            self.retry_after_ms = retry_after_ms


class RequestError(LockgateError):
    """The request cannot succeed as it is; retrying it unchanged does not help."""


class InvalidRequest(RequestError):
    pass


class NotFound(RequestError):
    pass


class MethodNotAllowed(RequestError):
    pass


class Unauthorized(RequestError):
    pass


class Forbidden(RequestError):
    pass


class PayloadTooLarge(RequestError):
    pass


class NotOwner(RequestError):
    """Release or renew with a lease that is not held (released, expired, never granted)."""


class Conflict(RequestError):
    """The object's state refuses the request: taken, out of range, limit mismatch."""


class QuotaExceeded(Conflict):
    """The namespace holds as many objects as it may; existing objects still work."""


class LockHeld(Conflict):
    """Not granted within wait_ms."""


class RetryableError(LockgateError):
    """Try again later with the same request_id."""

    retry_after_ms: int | None = 100


class Unavailable(RetryableError):
    """The shard cannot serve now (loading, moved, Redis down, overloaded)."""


class OutcomeUnknown(RetryableError):
    """The write may or may not have happened; a retry with the same request_id tells."""


_FAILURES: dict[str, type[LockgateError]] = {
    "not_owner": NotOwner,
    "held": LockHeld,
    "timeout": LockHeld,
    "conflict": Conflict,
    "out_of_range": Conflict,
    "too_many_waiters": Unavailable,
    "cancelled": Unavailable,
}


def error_for(failure: Failure) -> LockgateError:
    return _FAILURES[failure.code](failure.detail, retry_after_ms=failure.retry_after_ms)
