"""What the model tests of every kind share: the namespace, the start of time, and how a
core result is compared with the reference model's."""

from __future__ import annotations

from lockgate_server.core.ops import Failure, Granted, Result

NAMESPACE = "ns"
START_MS = 1_000_000


def key_of(name: str) -> str:
    return f"{NAMESPACE}/{name}"


def summary(result: Result) -> object:
    """What must match between core and model: failures by code and hint, grants without token."""
    if isinstance(result, Failure):
        return ("failure", result.code, result.retry_after_ms)
    if isinstance(result, Granted):
        return ("granted", result.lease_id, result.ttl_ms, result.permits)
    return result
