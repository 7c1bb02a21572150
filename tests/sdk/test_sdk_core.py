"""The SDK's I/O-free core on its own: the retry and renewal policy both shells drive.

No server, no sockets, no clock: `now` is an argument, as it is for the shells.
"""

from __future__ import annotations

import ast
import logging
import random
from pathlib import Path

import pytest
from lockgate import LockHeld, NotOwner, OutcomeUnknown, RetryPolicy, Timeouts, TransportError
from lockgate import _core as core

CORE = Path(core.__file__)
TIMEOUTS = Timeouts(connect=1.0, read=2.0, total=10.0)
POLICY = RetryPolicy(attempts=3, base_delay=0.1, max_delay=0.5)


def test_the_core_does_no_io() -> None:
    imported = set()
    for node in ast.walk(ast.parse(CORE.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"asyncio", "threading", "time", "socket", "http", "select", "selectors"}


def _attempts(wait: float = 0.0, now: float = 100.0) -> core.Attempts[int]:
    call = core.counter_get_call("ns", "n")
    if wait:
        call = core.acquire_call("ns", "lock", "job", ttl=5, wait=wait)  # type: ignore[assignment]
    return core.Attempts(call, POLICY, TIMEOUTS, random.Random(1), now)


def _problem(status: int, slug: str) -> core.Response:
    return core.Response(status, {"type": f"https://lockgate.dev/problems/{slug}", "status": status})


def test_attempts_send_within_the_deadline() -> None:
    attempts = _attempts()
    assert attempts.send(100.0) == core.Send(attempts.call, 2.0, 1.0)
    assert attempts.send(109.5) == core.Send(attempts.call, 0.5, 0.5)  # never past the total
    with pytest.raises(TransportError):
        attempts.send(110.0)


def test_a_waiting_call_gets_its_wait_on_top_of_read_and_total() -> None:
    attempts = _attempts(wait=60.0)
    assert attempts.deadline == 100.0 + 10.0 + 60.0
    assert attempts.send(100.0).timeout == 62.0


def test_attempts_retry_retryable_answers_then_give_up() -> None:
    attempts = _attempts()
    first = attempts.answered(_problem(503, "outcome-unknown"), 100.0)
    assert isinstance(first, core.Sleep) and 0 <= first.seconds <= POLICY.max_delay
    assert isinstance(attempts.failed(TransportError("dropped"), 101.0), core.Sleep)
    with pytest.raises(OutcomeUnknown):
        attempts.answered(_problem(503, "outcome-unknown"), 102.0)  # the third attempt was the last


def test_attempts_never_retry_a_refusal_and_return_results() -> None:
    with pytest.raises(LockHeld):
        _attempts().answered(_problem(409, "held"), 100.0)
    assert _attempts().answered(core.Response(200, {"value": 7}), 100.0) == core.Done(7)


def test_a_backoff_that_would_end_past_the_deadline_gives_up_at_once() -> None:
    slow = RetryPolicy(base_delay=5, max_delay=5)
    attempts = core.Attempts(core.counter_get_call("ns", "n"), slow, TIMEOUTS, random.Random(1), 100.0)
    assert isinstance(attempts.failed(TransportError("dropped", retry_after=5.0), 100.0), core.Sleep)
    with pytest.raises(TransportError, match="dropped"):
        attempts.failed(TransportError("dropped", retry_after=5.0), 105.1)  # 5 s more would pass 110


# --- the renewal policy -------------------------------------------------------------------------------
def _keeper(sent_at: float, answered_at: float, ttl: float = 3.0) -> core.LeaseKeeper:
    lease = core.Lease(namespace="ns", kind="lock", name="job", lease_id="l", token=1, ttl=ttl)
    return core.LeaseKeeper(lease, sent_at=sent_at, answered_at=answered_at, timeouts=TIMEOUTS)


def test_a_prompt_grant_is_renewed_at_a_third_of_its_ttl() -> None:
    keeper = _keeper(sent_at=100.0, answered_at=100.1)
    assert keeper.next(100.1) == core.Wait(pytest.approx(0.9))
    renew = keeper.next(101.0)
    assert isinstance(renew, core.Renew) and renew.timeouts.total == pytest.approx(2.0)  # until the bound
    keeper.renewed(3.0)
    assert keeper.expires_by == 104.0  # the renewal's send time + ttl
    assert keeper.next(101.2) == core.Wait(pytest.approx(0.8))


def test_a_grant_after_a_long_wait_is_renewed_at_once_and_kept() -> None:
    keeper = _keeper(sent_at=100.0, answered_at=120.0)  # waited 20 s for a 3 s lease
    renew = keeper.next(120.0)
    assert isinstance(renew, core.Renew) and renew.timeouts.total == 3.0  # a budget of its own
    keeper.renewed(3.0)
    assert not keeper.lease.lost and keeper.expires_by == 123.0
    assert keeper.next(120.0) == core.Wait(pytest.approx(1.0))


def test_a_late_grant_whose_first_renewal_fails_is_lost_there_is_no_sound_bound() -> None:
    keeper = _keeper(sent_at=100.0, answered_at=120.0)
    assert isinstance(keeper.next(120.0), core.Renew)
    keeper.renewal_failed(TransportError("timed out"), 121.0)
    assert keeper.lease.lost and keeper.next(121.0) == core.Stop(lost=True)


def test_a_transient_failure_is_retried_until_the_bound() -> None:
    keeper = _keeper(sent_at=100.0, answered_at=100.0)
    assert isinstance(keeper.next(101.0), core.Renew)
    keeper.renewal_failed(TransportError("timed out"), 102.0)
    assert not keeper.lease.lost
    assert isinstance(keeper.next(102.2), core.Renew)
    keeper.renewal_failed(TransportError("timed out"), 103.0)  # the lease's bound: 100 + 3
    assert keeper.lease.lost


def test_a_refused_renewal_is_a_loss_unless_we_released() -> None:
    keeper = _keeper(sent_at=100.0, answered_at=100.0)
    keeper.next(101.0)
    keeper.renewal_failed(NotOwner("gone"), 101.1)
    assert keeper.lease.lost

    keeper = _keeper(sent_at=100.0, answered_at=100.0)
    keeper.next(101.0)
    keeper.lease.releasing = True
    keeper.renewal_failed(NotOwner("released by us"), 101.1)
    assert not keeper.lease.lost and keeper.next(101.1) == core.Stop(lost=False)


def test_an_on_lost_callback_that_raises_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    keeper = _keeper(sent_at=100.0, answered_at=100.0)
    keeper.on_lost = lambda lease: 1 / 0  # type: ignore[assignment,func-returns-value]
    with caplog.at_level(logging.ERROR, logger="lockgate"):
        keeper.mark_lost()
    assert keeper.lease.lost and "ZeroDivisionError" in caplog.text
