"""Commands the shard sequences and the results it answers with.

Commands are what goes into the log, so they carry everything `apply` needs (lease ids
are chosen at the edge, never inside the core) and nothing it must not depend on.
Every struct is tagged and array-like: one prebuilt decoder reads any of them and the log
stays compact.
"""

from __future__ import annotations

from typing import Literal

import msgspec

LeaseKind = Literal["lock", "semaphore"]
Algorithm = Literal["gcra", "sliding_window", "fixed_window"]


class Command(msgspec.Struct, frozen=True, kw_only=True, array_like=True, tag_field="t"):
    """Base of everything a shard sequences."""


class ObjectCommand(Command, frozen=True, kw_only=True, array_like=True, tag_field="t"):
    namespace: str
    name: str


# --- locks and semaphores (one lease pool, a lock is a pool of one) ------------
class Acquire(ObjectCommand, frozen=True, kw_only=True, array_like=True, tag="acq"):
    kind: LeaseKind
    lease_id: str
    ttl_ms: int
    wait_ms: int = 0
    limit: int = 1
    permits: int = 1
    holder: str | None = None
    request_id: str | None = None


class Release(ObjectCommand, frozen=True, kw_only=True, array_like=True, tag="rel"):
    kind: LeaseKind
    lease_id: str
    request_id: str | None = None


class Renew(ObjectCommand, frozen=True, kw_only=True, array_like=True, tag="ren"):
    kind: LeaseKind
    lease_id: str
    ttl_ms: int
    request_id: str | None = None


class CancelWait(ObjectCommand, frozen=True, kw_only=True, array_like=True, tag="cw"):
    """The caller of a queued acquire went away; it must never be granted."""

    kind: LeaseKind
    lease_id: str
    request_id: str | None = None  # the acquire's, so a repeat cannot return a given-back grant


class ForceRelease(ObjectCommand, frozen=True, kw_only=True, array_like=True, tag="frel"):
    """Admin: drop every lease on the object (waiters then get their turn)."""

    kind: LeaseKind


class Inspect(ObjectCommand, frozen=True, kw_only=True, array_like=True, tag="ins"):
    kind: LeaseKind


class FenceCheck(ObjectCommand, frozen=True, kw_only=True, array_like=True, tag="fen"):
    kind: LeaseKind
    token: int


# --- counters -----------------------------------------------------------------
class CounterAdd(ObjectCommand, frozen=True, kw_only=True, array_like=True, tag="cadd"):
    delta: int
    minimum: int | None = None
    maximum: int | None = None
    request_id: str | None = None


class CounterSet(ObjectCommand, frozen=True, kw_only=True, array_like=True, tag="cset"):
    value: int
    request_id: str | None = None


class CounterCompareAndSet(ObjectCommand, frozen=True, kw_only=True, array_like=True, tag="ccas"):
    expected: int
    value: int
    request_id: str | None = None


class CounterGet(ObjectCommand, frozen=True, kw_only=True, array_like=True, tag="cget"):
    pass


# --- rate limits --------------------------------------------------------------
class RateCheck(ObjectCommand, frozen=True, kw_only=True, array_like=True, tag="rchk"):
    """Consume `cost` if the limit allows it; cost 0 is a peek and is never logged."""

    limit: int
    period_ms: int
    burst: int | None = None
    cost: int = 1
    algorithm: Algorithm = "gcra"
    request_id: str | None = None


class RateReset(ObjectCommand, frozen=True, kw_only=True, array_like=True, tag="rrst"):
    request_id: str | None = None


class RateItem(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """One limit of a multi-limit check; `key` names its state within the namespace."""

    key: str
    limit: int
    period_ms: int
    burst: int | None = None
    cost: int = 1
    algorithm: Algorithm = "gcra"
    shadow: bool = False  # decide and charge, but never deny


class RateCheckAll(ObjectCommand, frozen=True, kw_only=True, array_like=True, tag="rall"):
    """Several limits checked all-or-nothing: if any enforced one denies, none is charged.

    `name` only routes the command (all its items live on that name's shard), so a
    gateway domain's limits can be decided atomically by one shard.
    """

    items: list[RateItem]
    request_id: str | None = None


class RateResetAll(ObjectCommand, frozen=True, kw_only=True, array_like=True, tag="rrall"):
    """Forget the state of `keys` (items of RateCheckAll routed by the same `name`)."""

    keys: list[str]


# --- shard-level operations ---------------------------------------------------
class Expire(Command, frozen=True, kw_only=True, array_like=True, tag="exp"):
    """Timer-driven: settle every object with a deadline at or before `until_ms`.

    Ending due leases, handing off to waiters, timing out waiters and dropping rate-limit
    keys that are full again. The bound keeps one op short and, being part of the op,
    makes the set of objects it touches the same on replay.
    """

    until_ms: int


class Recover(Command, frozen=True, kw_only=True, array_like=True, tag="rec"):
    """First op of every new owner: extend live leases by the outage, drop waiters.

    Waiters' callers were connected to the previous owner, so none of them can
    receive a grant any more; their clients retry with the same request_id.
    `last_alive_ms` is the previous owner's last heartbeat: the outage began then.
    """

    last_alive_ms: int = 0


READ_COMMANDS = (Inspect, FenceCheck, CounterGet)


def is_read(command: Command) -> bool:
    """Reads never change state and are never logged."""
    if isinstance(command, RateCheck):
        return command.cost == 0
    if isinstance(command, RateCheckAll):
        return all(item.cost == 0 for item in command.items)
    return isinstance(command, READ_COMMANDS)


# --- results --------------------------------------------------------------------
class Result(msgspec.Struct, frozen=True, kw_only=True, array_like=True, tag_field="t"):
    pass


class Granted(Result, frozen=True, kw_only=True, array_like=True, tag="g"):
    lease_id: str
    token: int
    ttl_ms: int
    permits: int = 1


class Queued(Result, frozen=True, kw_only=True, array_like=True, tag="q"):
    """Internal: the acquire waits in line; a later op grants it or times it out."""

    lease_id: str


class Released(Result, frozen=True, kw_only=True, array_like=True, tag="r"):
    pass


class Renewed(Result, frozen=True, kw_only=True, array_like=True, tag="rn"):
    lease_id: str
    token: int
    ttl_ms: int


class LeaseInfo(Result, frozen=True, kw_only=True, array_like=True, tag="li"):
    held: bool
    limit: int
    permits_used: int
    waiters: int
    holder: str | None = None
    token: int | None = None
    remaining_ms: int | None = None


class FenceAnswer(Result, frozen=True, kw_only=True, array_like=True, tag="fa"):
    current: bool


class CounterValue(Result, frozen=True, kw_only=True, array_like=True, tag="cv"):
    value: int


class CasOutcome(Result, frozen=True, kw_only=True, array_like=True, tag="cas"):
    swapped: bool
    value: int


class RateDecision(Result, frozen=True, kw_only=True, array_like=True, tag="rd"):
    allowed: bool
    limit: int
    remaining: int
    reset_after_ms: int
    retry_after_ms: int


class RateDecisions(Result, frozen=True, kw_only=True, array_like=True, tag="rds"):
    allowed: bool  # False if any enforced (non-shadow) limit denied; then nothing was charged
    decisions: list[RateDecision]


class Done(Result, frozen=True, kw_only=True, array_like=True, tag="ok"):
    pass


FailureCode = Literal[
    "not_owner",  # release/renew with a lease that is not (or no longer) held
    "held",  # acquire with wait 0 while the object is taken
    "timeout",  # a queued acquire reached its wait deadline
    "cancelled",  # a queued acquire whose caller left
    "conflict",  # the request does not fit the object (semaphore limit differs)
    "out_of_range",  # counter bound or 64-bit range would be crossed
    "too_many_waiters",
]


class Failure(Result, frozen=True, kw_only=True, array_like=True, tag="f"):
    """A refused op. It is still sequenced and logged: refusal is part of history."""

    code: FailureCode
    detail: str
    retry_after_ms: int | None = None


AnyCommand = (
    Acquire
    | Release
    | Renew
    | CancelWait
    | ForceRelease
    | Inspect
    | FenceCheck
    | CounterAdd
    | CounterSet
    | CounterCompareAndSet
    | CounterGet
    | RateCheck
    | RateReset
    | RateCheckAll
    | RateResetAll
    | Expire
    | Recover
)
AnyResult = (
    Granted
    | Queued
    | Released
    | Renewed
    | LeaseInfo
    | FenceAnswer
    | CounterValue
    | CasOutcome
    | RateDecision
    | RateDecisions
    | Done
    | Failure
)
