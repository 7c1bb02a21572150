"""Typed errors, one per problem type the server answers with, under one base class."""

from __future__ import annotations


class LockgateError(Exception):
    """Base of every error this client raises."""

    retryable = False

    def __init__(self, detail: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.retry_after = retry_after  # seconds the server suggested waiting


class InvalidRequest(LockgateError):
    """400/422: the request is malformed or out of bounds; nothing changed."""


class MethodNotAllowed(InvalidRequest):
    """405: no such method on that route (an SDK older or newer than the server, say)."""


class Unauthorized(LockgateError):
    """401: missing or unknown API key."""


class Forbidden(LockgateError):
    """403: the key may not do this in that namespace."""


class NotFound(LockgateError):
    """404: no such route."""


class PayloadTooLarge(LockgateError):
    """413."""


class Conflict(LockgateError):
    """409: the object's state refuses the request (limit mismatch, counter bound...)."""


class QuotaExceeded(Conflict):
    """409: the namespace holds as many objects as it may; existing objects still work."""


class LockHeld(Conflict):
    """409: not granted within the wait."""


Timeout = LockHeld


class NotOwner(Conflict):
    """409: the lease is not held any more (released, expired or never granted)."""


class UnexpectedResponse(LockgateError):
    """An answer that is not the server's: not msgpack (an HTML error page from a proxy) or
    not in the shape the call expects; or the server's own failure (a 500). Not retried; a
    502/503/504 is `Unavailable`."""


class LeaseLost(LockgateError):
    """The lease could not be renewed and may now belong to someone else."""


class Unavailable(LockgateError):
    """503: try again later; retried automatically with the same request_id."""

    retryable = True


class OutcomeUnknown(Unavailable):
    """503: the write may or may not have happened; a retry with the same request_id tells."""


class TransportError(Unavailable):
    """The connection failed or timed out before an answer arrived."""
