"""Locks: an exclusive lease, a lease pool of exactly one permit."""

from __future__ import annotations

from . import leases
from .context import Context
from .leases import LeaseCommand, LeasePool
from .ops import Acquire, Result


def new_state(cmd: LeaseCommand) -> LeasePool:
    return LeasePool(limit=1)


def apply(state: LeasePool, cmd: LeaseCommand, ctx: Context) -> Result:
    assert not isinstance(cmd, Acquire) or (cmd.limit == 1 and cmd.permits == 1), "a lock has one permit"
    return leases.apply(state, cmd, ctx)
