"""The one table from domain errors to RFC 9457 problem details.

The `type` URIs are stable: clients (and our SDK) dispatch on them.
"""

from __future__ import annotations

import math
from typing import Final

from .. import errors
from .schemas import Problem

PROBLEM_BASE: Final = "https://lockgate.dev/problems/"

# Most specific first: the first class the error is an instance of wins.
PROBLEM_TABLE: Final[list[tuple[type[errors.LockgateError], int, str, str]]] = [
    (errors.LockHeld, 409, "held", "Not granted"),
    (errors.NotOwner, 409, "not-owner", "Lease not held"),
    (errors.QuotaExceeded, 409, "quota-exceeded", "Namespace object limit reached"),
    (errors.Conflict, 409, "conflict", "Conflict with the object's state"),
    (errors.InvalidRequest, 422, "invalid-request", "Invalid request"),
    (errors.NotFound, 404, "not-found", "Not found"),
    (errors.MethodNotAllowed, 405, "method-not-allowed", "Method not allowed"),
    (errors.Unauthorized, 401, "unauthorized", "Missing or unknown API key"),
    (errors.Forbidden, 403, "forbidden", "Not allowed for this API key"),
    (errors.PayloadTooLarge, 413, "too-large", "Request body too large"),
    (errors.OutcomeUnknown, 503, "outcome-unknown", "Outcome unknown; retry with the same request_id"),
    (errors.Unavailable, 503, "unavailable", "Temporarily unavailable"),
]
MALFORMED: Final = (400, "malformed", "Malformed request body")


def problem_for(error: errors.LockgateError) -> Problem:
    for error_type, status, slug, title in PROBLEM_TABLE:
        if isinstance(error, error_type):
            return Problem(
                type=PROBLEM_BASE + slug,
                title=title,
                status=status,
                detail=error.detail,
                retry_after_ms=error.retry_after_ms,
            )
    raise AssertionError(f"no problem type for {type(error).__name__}")


def malformed(detail: str) -> Problem:
    status, slug, title = MALFORMED
    return Problem(type=PROBLEM_BASE + slug, title=title, status=status, detail=detail)


def retry_after_header(problem: Problem) -> str | None:
    """Retry-After is in whole seconds; we round up so a client never retries too early."""
    if problem.retry_after_ms is None or problem.status not in (409, 429, 503):
        return None
    return str(max(1, math.ceil(problem.retry_after_ms / 1000)))
