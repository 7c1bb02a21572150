"""wait_gate: a caller's own bounded wait on a commit that many callers share."""

from __future__ import annotations

import asyncio

import pytest

from lockgate_server.engine.slots import new_gate, wait_gate
from lockgate_server.errors import OutcomeUnknown


async def test_returns_once_the_gate_opens() -> None:
    gate = new_gate()
    asyncio.get_running_loop().call_later(0.01, gate.set_result, None)
    await wait_gate(gate, 5.0)
    assert gate.done()


async def test_the_commits_failure_reaches_the_caller() -> None:
    gate = new_gate()
    asyncio.get_running_loop().call_later(0.01, gate.set_exception, OutcomeUnknown("store gone"))
    with pytest.raises(OutcomeUnknown, match="store gone"):
        await wait_gate(gate, 5.0)


async def test_a_timeout_leaves_the_commit_to_everyone_else() -> None:
    gate = new_gate()
    patient = asyncio.ensure_future(gate)  # another caller, waiting without a bound
    with pytest.raises(TimeoutError, match="within 20 ms"):
        await wait_gate(gate, 0.02)
    assert not gate.done() and not patient.done()
    gate.set_result(None)
    await patient  # the commit went on and the other caller got its answer


async def test_a_cancelled_caller_does_not_cancel_the_gate() -> None:
    gate = new_gate()
    caller = asyncio.ensure_future(wait_gate(gate, 5.0))
    await asyncio.sleep(0)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert not gate.cancelled()
    gate.set_result(None)
    assert gate.result() is None
