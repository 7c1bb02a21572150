"""Rate-limit response headers from a verdict.

IETF draft-ietf-httpapi-ratelimit-headers (08 and later) structured fields, one list item
per enforced limit the request matched:

    RateLimit-Policy: "key2";q=20;w=60, "per-ip";q=100;w=1
    RateLimit: "key2";r=19;t=42, "per-ip";r=99;t=1

plus the widespread X-RateLimit-Limit / -Remaining / -Reset of the most restrictive one,
and Retry-After (seconds, rounded up, at least 1) on a denial. Shadow and unlimited limits
are not announced: they never decide.
"""

from __future__ import annotations

from typing import Final

from .decision import DescriptorStatus, Verdict

FAILURE_HEADER: Final = "X-Lockgate-Failure"
"""Set when the store did not decide: "timeout" or "store-unavailable" (the domain's failure_mode
decided instead), or "quota-exceeded" (no room for a new key: denied, see decision.py)."""
POLICY_HEADER: Final = "RateLimit-Policy"
RATE_LIMIT_HEADER: Final = "RateLimit"
LIMIT_HEADER: Final = "X-RateLimit-Limit"
REMAINING_HEADER: Final = "X-RateLimit-Remaining"
RESET_HEADER: Final = "X-RateLimit-Reset"
RETRY_AFTER_HEADER: Final = "Retry-After"
FAILURE_RETRY_AFTER_S: Final = 1


def _seconds(ms: int) -> int:
    return -(-ms // 1000)


def rate_limit_headers(verdict: Verdict) -> list[tuple[str, str]]:
    if verdict.failure is not None:
        headers: list[tuple[str, str]] = [(FAILURE_HEADER, verdict.failure)]
        if not verdict.allowed:
            headers.append((RETRY_AFTER_HEADER, str(FAILURE_RETRY_AFTER_S)))
        return headers
    # One item per limit; a limit reached by several descriptors (one state per value)
    # is announced by its tightest state.
    by_policy: dict[str, DescriptorStatus] = {}
    retry_after_ms = 0
    for status in verdict.statuses:
        limit = status.limit
        if limit is None or not limit.enforced:
            continue
        if status.over_limit:
            retry_after_ms = max(retry_after_ms, status.retry_after_ms)
        known = by_policy.get(limit.policy_header)
        if known is None or _tighter(status, known):
            by_policy[limit.policy_header] = status
    if not by_policy:
        return []
    announced = list(by_policy.values())
    tightest = announced[0]
    for status in announced[1:]:
        if _tighter(status, tightest):
            tightest = status
    assert tightest.limit is not None
    headers = [
        (POLICY_HEADER, ", ".join(status.limit.policy_header for status in announced if status.limit)),
        (
            RATE_LIMIT_HEADER,
            ", ".join(
                f"{status.limit.quoted_name};r={status.remaining};t={_seconds(status.reset_after_ms)}"
                for status in announced
                if status.limit
            ),
        ),
        (LIMIT_HEADER, str(tightest.limit.requests)),
        (REMAINING_HEADER, str(tightest.remaining)),
        (RESET_HEADER, str(_seconds(tightest.reset_after_ms))),
    ]
    if not verdict.allowed:
        headers.append((RETRY_AFTER_HEADER, str(max(1, _seconds(retry_after_ms)))))
    return headers


def _tighter(status: DescriptorStatus, other: DescriptorStatus) -> bool:
    """Fewer requests left, or as few for longer."""
    return (status.remaining, -status.reset_after_ms) < (other.remaining, -other.reset_after_ms)
