"""Every command the log can carry is handled by the shard: a new command type that is left
out of the dispatch tables would otherwise fail only when it is first applied."""

from __future__ import annotations

from lockgate_server.core import ops
from lockgate_server.core.shard_state import _MUTATORS, _READERS


def _concrete_commands() -> set[type]:
    found: set[type] = set()
    pending = [ops.Command]
    while pending:
        cls = pending.pop()
        pending += cls.__subclasses__()
        if not cls.__subclasses__():  # the bases (Command, ObjectCommand) are never applied
            found.add(cls)
    return found


def test_every_command_is_read_or_applied() -> None:
    commands = _concrete_commands()
    assert commands, "no commands found"
    assert commands - set(_READERS) - set(_MUTATORS) == set()
    # A read that turns out to change state (a rate check with a cost) must have a mutator too.
    assert {ops.RateCheck, ops.RateCheckAll} <= set(_MUTATORS)
