"""Semaphores: `limit` permits per object, each acquire a lease of n permits."""

from __future__ import annotations

from . import leases
from .context import Context
from .leases import LeaseCommand, LeasePool
from .ops import Acquire, Result


def new_state(cmd: LeaseCommand) -> LeasePool:
    """The first acquire fixes the limit; it holds until the semaphore is idle again."""
    return LeasePool(limit=cmd.limit if isinstance(cmd, Acquire) else 1)


def apply(state: LeasePool, cmd: LeaseCommand, ctx: Context) -> Result:
    return leases.apply(state, cmd, ctx)
