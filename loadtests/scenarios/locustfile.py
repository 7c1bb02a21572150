"""Locust scenarios for Lockgate that check correctness while they load the server.

One user class per scenario; name it on the command line (one process, so the checkers
below see every client):

  GatewayUser         rate-limit checks over 100,000 keys drawn Zipf-like, plus a few hot keys
                      with a tight limit (an abusive client) that is reached above 200 checks/s in all.
                      Poisson arrivals, --lg-user-rate per user.
  JobWorker           workers take locks on 300 job names (30% of picks on 10 popular ones),
                      hold them 50 ms to 1.5 s, renew every third of the 2 s TTL, release.
  SemaphoreContender  200 contenders for one semaphore of 8 permits.
  CounterClient       many clients add 1 to 8 counters; the final values are read at the end.

    python -m locust -f loadtests/scenarios/locustfile.py --headless -u 100 -r 100 -t 30s \\
        --host http://127.0.0.1:8420 JobWorker --lg-namespace jobs-1 --lg-verdict verdict.json

What is checked, with the client's own clock as the only shared reference (soundly: a client's
view of its hold, from reading the grant to sending the release, lies inside the server's):

  locks       each holder writes (lease, token, valid-until) to a shared record per lock when it
              reads its grant; valid-until is when it *sent* the acquire or its last successful
              renew plus the TTL (the server's lease cannot end sooner). A grant read while another
              live holder is recorded is an overlap; a token not larger than the last recorded one
              is a fencing violation; a renew or release refused as not-owner although sent before
              valid-until means the server dropped a live lease.
  semaphores  the same records, per lease: more than 8 live holders at once is an over-grant;
              tokens are unique.
  counters    every acknowledged add (delta 1) returns a distinct value; at the end each counter
              equals its acknowledged adds (retries reuse the request_id, so a retried add is
              counted once; adds left without an answer are resolved the same way at the end).
  rate limits every allowed answer of a fixed window leaves a distinct `remaining` in [0, limit)
              (two equal ones mean the window admitted more than its limit); per key, no more
              than limit x (windows the run touched) allowed answers in all.

Any violation makes the run exit with status 1 and is written with its details to
--lg-verdict. So does a run that could not check enough to mean anything: a Python exception
in a task, more than MAX_FAILED_SHARE of the requests failed (the expected answers, a
contended 409 or a denial, are not failures), the server not ready at the end, or a scenario
whose checks had nothing to bite on (see each checker's `unchecked`).

With --processes (GatewayUser only) each worker checks what its own users saw and writes its
own verdict; the master's exit status does not see the workers' checks. Run it through
loadtests/scenarios/run.py (or loadtests/report.py), which merges the verdicts and fails the
run unless every worker checked and passed.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import random
import threading
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import msgspec
from locust import FastHttpUser, between, events, task
from locust import log as locust_log
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

JSON_HEADERS = {"Content-Type": "application/json"}
SAFETY_MARGIN_S = 0.010
"""Subtracted from every valid-until: the server stamps times in whole milliseconds."""
DETAILS_KEPT = 50
MAX_FAILED_SHARE = 0.01
"""Failed requests a run may see and still pass. Expected answers (a contended 409, a not-owner
409, a denial) are marked successes, so a failure is an error, a timeout, a 5xx or an unexpected
4xx: more than 1% means the server was down or broken for part of the run, and the checks above
only cover what it answered. 1% leaves room for a rare timeout under overload."""
MIN_CHECKS = 10
"""A scenario that checked fewer grants, adds or allowed answers than this checked nothing."""
READY_TIMEOUT_S = 5.0

# --- the gateway mix --------------------------------------------------------------------------
GATEWAY_KEYS = 100_000
ZIPF_EXPONENT = 1.0
GATEWAY_LIMIT, GATEWAY_PERIOD_MS = 600, 60_000
HOT_KEYS, HOT_SHARE = 4, 0.05
HOT_LIMIT, HOT_PERIOD_MS = 5, 2_000
"""4 hot keys take 5% of the checks under a limit small enough to be reached at the lowest load the
report offers (500 checks/s: about 12 checks per hot key per window against 5). A window that never
reaches its limit can never show two allowed answers with the same `remaining`, so the exact check
has teeth only above HOT_KEYS * HOT_LIMIT / (HOT_SHARE * period) = 200 offered checks/s; a run that
saw no denial fails (RateChecker.unchecked)."""

# --- the job-runner mix -----------------------------------------------------------------------
JOB_NAMES, POPULAR_JOBS, POPULAR_SHARE = 300, 10, 0.30
JOB_TTL_MS = 2_000
JOB_WAIT_MS = 1_000
JOB_HOLD_S = (0.05, 1.5)

# --- semaphores ---------------------------------------------------------------------------------
POOL_PERMITS = 8
POOL_NAME = "pool"
POOL_TTL_MS = 8_000
"""Longer than the longest wait, so a grant read after a full wait is still known to be live."""
POOL_WAIT_MS = 4_000
POOL_HOLD_S = (0.01, 0.1)

# --- counters -----------------------------------------------------------------------------------
COUNTERS = 8
COUNTER_ATTEMPTS = 4


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument("--lg-namespace", default="locust", help="Lockgate namespace of this run (use a new one)")
    parser.add_argument("--lg-user-rate", type=float, default=0.0, help="GatewayUser checks/s per user; 0: no pause")
    parser.add_argument("--lg-verdict", default="", help="write the correctness verdict (JSON) to this file")
    parser.add_argument("--lg-max-failed-share", type=float, default=MAX_FAILED_SHARE,
                        help=f"fail the run above this share of failed requests ({MAX_FAILED_SHARE})")  # fmt: skip


# --- the shared checkers --------------------------------------------------------------------------
class Checker:
    """Violations and figures of one scenario; every method runs under one lock."""

    def __init__(self) -> None:
        self.guard = threading.Lock()  # gevent-patched: a greenlet lock, as Locust runs users on greenlets
        self.violations = 0
        self.details: list[dict[str, object]] = []
        self.figures: Counter[str] = Counter()

    def violation(self, kind: str, **detail: object) -> None:
        self.violations += 1
        self.figures[f"violation: {kind}"] += 1
        if len(self.details) < DETAILS_KEPT:
            self.details.append({"kind": kind, "at_monotonic": round(time.monotonic(), 4), **detail})

    def finish(self, environment: Environment, seconds: float) -> dict[str, object]:
        return {}

    def unchecked(self) -> list[str]:
        """Why this run's checks had nothing to bite on (it then fails), or nothing."""
        return []


@dataclass
class LockRecord:
    holder: str | None = None
    valid_until: float = 0.0
    last_token: int = 0
    grants: int = 0


class LockChecker(Checker):
    """At most one live holder per lock, and tokens only grow in the order grants were held.

    A grant read after its valid-until is not recorded (this client cannot know it still holds
    the lock); if a later renew of it succeeds, the server vouched for the lease again and it is
    recorded from then on, with the same checks as a grant.
    """

    def __init__(self) -> None:
        super().__init__()
        self.locks: dict[str, LockRecord] = defaultdict(LockRecord)
        self.late: set[str] = set()  # leases whose grant was read too late to record

    def granted(self, name: str, lease_id: str, token: int, valid_until: float) -> None:
        with self.guard:
            self.figures["grants"] += 1
            if time.monotonic() >= valid_until:
                self.figures["grants read after their lease could have expired"] += 1
                self.late.add(lease_id)
                return
            self._record(name, lease_id, token, valid_until)

    def _record(self, name: str, lease_id: str, token: int, valid_until: float) -> None:
        now = time.monotonic()
        self.figures["grants checked"] += 1
        record = self.locks[name]
        if record.holder is not None and record.holder != lease_id and record.valid_until > now:
            self.violation(
                "two holders at once", lock=name, holder=record.holder, holder_token=record.last_token,
                holder_valid_for_s=round(record.valid_until - now, 4), new_holder=lease_id, new_token=token,
            )  # fmt: skip
        if token <= record.last_token:
            self.violation("token did not grow", lock=name, previous_token=record.last_token, token=token)
        record.holder, record.valid_until, record.last_token = lease_id, valid_until, max(token, record.last_token)
        record.grants += 1

    def renewed(self, name: str, lease_id: str, token: int, valid_until: float) -> None:
        with self.guard:
            record = self.locks[name]
            if record.holder == lease_id:
                record.valid_until = valid_until
            elif lease_id in self.late and time.monotonic() < valid_until:
                self.late.discard(lease_id)
                self.figures["late grants confirmed by a renew"] += 1
                self._record(name, lease_id, token, valid_until)

    def releasing(self, name: str, lease_id: str) -> None:
        """Called before the release is sent: from then on the next holder may be granted."""
        with self.guard:
            self.late.discard(lease_id)
            record = self.locks[name]
            if record.holder == lease_id:
                record.holder = None

    def refused_as_not_owner(self, what: str, name: str, lease_id: str, sent: float, valid_until: float) -> None:
        with self.guard:
            self.late.discard(lease_id)
            if sent < valid_until:
                self.violation(
                    f"{what} refused as not-owner before the lease could expire", lock=name, lease=lease_id,
                    sent_before_valid_until_s=round(valid_until - sent, 4),
                )  # fmt: skip
            else:
                self.figures[f"{what} after the lease could have expired (slow client)"] += 1

    def finish(self, environment: Environment, seconds: float) -> dict[str, object]:
        return {
            "locks_granted": len(self.locks),
            "locks_granted_more_than_once": self._handed_over(),
            "grants_checked": self.figures["grants checked"],
        }

    def _handed_over(self) -> int:
        return sum(1 for record in self.locks.values() if record.grants > 1)

    def unchecked(self) -> list[str]:
        reasons = []
        if self.figures["grants checked"] < MIN_CHECKS:
            reasons.append(f"only {self.figures['grants checked']} lock grants checked (fewer than {MIN_CHECKS})")
        if not self._handed_over():
            reasons.append("no lock was granted twice: overlaps and token order were never checked")
        return reasons


class SemaphoreChecker(Checker):
    """Never more live holders than permits; every grant has its own token (late grants as for locks)."""

    def __init__(self, permits: int) -> None:
        super().__init__()
        self.permits = permits
        self.holders: dict[str, float] = {}  # lease -> valid until
        self.tokens: set[int] = set()
        self.late: set[str] = set()
        self.most_held = 0

    def granted(self, lease_id: str, token: int, valid_until: float) -> None:
        with self.guard:
            self.figures["grants"] += 1
            if token in self.tokens:
                self.violation("token granted twice", token=token)
            self.tokens.add(token)
            if time.monotonic() >= valid_until:
                self.figures["grants read after their lease could have expired"] += 1
                self.late.add(lease_id)
                return
            self._record(lease_id, valid_until)

    def _record(self, lease_id: str, valid_until: float) -> None:
        now = time.monotonic()
        self.figures["grants checked"] += 1
        for lease, until in list(self.holders.items()):
            if until <= now:
                del self.holders[lease]
        self.holders[lease_id] = valid_until
        self.most_held = max(self.most_held, len(self.holders))
        if len(self.holders) > self.permits:
            self.violation("permits over-granted", live_holders=len(self.holders), permits=self.permits)

    def renewed(self, lease_id: str, valid_until: float) -> None:
        with self.guard:
            if lease_id in self.holders:
                self.holders[lease_id] = valid_until
            elif lease_id in self.late and time.monotonic() < valid_until:
                self.late.discard(lease_id)
                self.figures["late grants confirmed by a renew"] += 1
                self._record(lease_id, valid_until)

    def releasing(self, lease_id: str) -> None:
        with self.guard:
            self.late.discard(lease_id)
            self.holders.pop(lease_id, None)

    def refused_as_not_owner(self, what: str, lease_id: str, sent: float, valid_until: float) -> None:
        with self.guard:
            self.late.discard(lease_id)
            if sent < valid_until:
                self.violation(f"{what} refused as not-owner before the lease could expire", lease=lease_id)
            else:
                self.figures[f"{what} after the lease could have expired (slow client)"] += 1

    def finish(self, environment: Environment, seconds: float) -> dict[str, object]:
        return {
            "permits": self.permits,
            "most_live_holders_seen": self.most_held,
            "grants_checked": self.figures["grants checked"],
        }

    def unchecked(self) -> list[str]:
        reasons = []
        if self.figures["grants checked"] < MIN_CHECKS:
            reasons.append(f"only {self.figures['grants checked']} permit grants checked (fewer than {MIN_CHECKS})")
        if self.most_held < self.permits:
            reasons.append(
                f"never all {self.permits} permits held at once ({self.most_held} at most): an over-grant could "
                "not have been seen"
            )
        return reasons


class CounterChecker(Checker):
    """Acknowledged adds are distinct and, at the end, exactly what each counter holds.

    An add whose answer never arrived (a user stopped mid-request when the run ended, or
    retries given up) is sent once more at the end with the same request_id: the server
    answers the original result if it was applied, or applies it now, so every add is
    acknowledged exactly once and each counter must equal its acknowledged adds.
    """

    def __init__(self) -> None:
        super().__init__()
        self.acknowledged: Counter[str] = Counter()
        self.pending: dict[str, tuple[str, bytes]] = {}  # request_id -> (counter, body): no answer yet
        self.values: dict[str, set[int]] = defaultdict(set)

    def sending(self, request_id: str, name: str, body: bytes) -> None:
        with self.guard:
            self.pending[request_id] = (name, body)

    def done(self, request_id: str, value: int) -> None:
        with self.guard:
            name, _ = self.pending.pop(request_id)
            self.acknowledged[name] += 1
            if value in self.values[name]:
                self.violation("two acknowledged adds returned the same value", counter=name, value=value)
            self.values[name].add(value)

    def refused(self, request_id: str) -> None:
        """A 4xx: the add was not applied."""
        with self.guard:
            self.pending.pop(request_id)
            self.figures["adds refused (4xx)"] += 1

    def finish(self, environment: Environment, seconds: float) -> dict[str, object]:
        base = f"{environment.host}/v1/namespaces/{environment.parsed_options.lg_namespace}/counters"
        resolved = len(self.pending)
        for request_id, (name, body) in list(self.pending.items()):
            request = urllib.request.Request(f"{base}/{name}/add", data=body, headers=JSON_HEADERS, method="POST")
            with urllib.request.urlopen(request, timeout=10) as answer:
                self.done(request_id, int(json.loads(answer.read())["value"]))
        finals: dict[str, dict[str, int]] = {}
        for index in range(COUNTERS):
            name = f"counter-{index}"
            with urllib.request.urlopen(f"{base}/{name}", timeout=10) as answer:
                final = int(json.loads(answer.read())["value"])
            finals[name] = {"final": final, "acknowledged": self.acknowledged[name]}
            if final != self.acknowledged[name]:
                self.violation(
                    "counter is not its acknowledged adds", counter=name, final=final,
                    acknowledged=self.acknowledged[name],
                )  # fmt: skip
            top = max(self.values[name], default=0)
            if top != final:
                self.violation("the highest acknowledged value is not the final value", counter=name, value=top,
                               final=final)  # fmt: skip
        return {
            "counters": finals,
            "acknowledged_adds": sum(self.acknowledged.values()),
            "final_sum": sum(entry["final"] for entry in finals.values()),
            "adds_resolved_at_the_end_by_request_id": resolved,
            "all_exact": all(entry["final"] == entry["acknowledged"] for entry in finals.values()),
        }

    def unchecked(self) -> list[str]:
        adds = sum(self.acknowledged.values())
        return [f"only {adds} acknowledged adds (fewer than {MIN_CHECKS})"] if adds < MIN_CHECKS else []


@dataclass
class WindowCount:
    allowed: int = 0
    remaining_seen: set[int] = field(default_factory=set)


class RateChecker(Checker):
    """No fixed window admits more than its limit."""

    def __init__(self) -> None:
        super().__init__()
        self.windows: dict[tuple[str, int], WindowCount] = defaultdict(WindowCount)
        self.allowed_per_key: Counter[str] = Counter()
        self.policy: dict[str, tuple[int, int]] = {}
        self.exact_checks = 0

    def answered(self, key: str, limit: int, period_ms: int, answer: dict[str, Any], sent: float, read: float) -> None:
        with self.guard:
            allowed = bool(answer.get("allowed"))
            self.figures["allowed" if allowed else "denied"] += 1
            if not allowed:
                return
            self.allowed_per_key[key] += 1
            self.policy[key] = (limit, period_ms)
            remaining, reset_after_ms = answer.get("remaining"), answer.get("reset_after_ms")
            if remaining is None or reset_after_ms is None:
                self.figures["allowed without remaining (per-key bound only)"] += 1
                return  # a peer that does not say (limits): only the per-key bound applies
            if not 0 <= remaining < limit:
                self.violation("allowed with remaining out of range", key=key, remaining=remaining, limit=limit)
            if (read - sent) * 1000 >= period_ms / 2:
                self.figures["answers too slow to place in a window"] += 1
                return
            # The window ends at (window + 1) * period = the server's now + reset_after_ms, and the
            # server's now lies between our send and our read of the answer.
            window = round((read * 1000 + reset_after_ms) / period_ms) - 1
            count = self.windows[(key, window)]
            self.exact_checks += 1
            if remaining in count.remaining_seen:
                self.violation(
                    "a window admitted more than its limit", key=key, window=window, remaining=remaining,
                    allowed_so_far=count.allowed + 1, limit=limit,
                )  # fmt: skip
            count.remaining_seen.add(remaining)
            count.allowed += 1

    def finish(self, environment: Environment, seconds: float) -> dict[str, object]:
        for key, allowed in self.allowed_per_key.items():
            limit, period_ms = self.policy[key]
            bound = limit * (math.ceil(seconds * 1000 / period_ms) + 1)
            if allowed > bound:
                self.violation("a key was allowed more than its windows permit", key=key, allowed=allowed, bound=bound)
        hot = {key: count for key, count in self.allowed_per_key.items() if key.startswith("hot-")}
        return {
            "keys_allowed": len(self.allowed_per_key),
            "windows_checked_exactly": len(self.windows),
            "answers_checked_exactly": self.exact_checks,
            "hot_keys_allowed": hot,
            "workload": GATEWAY_WORKLOAD,
        }

    def unchecked(self) -> list[str]:
        reasons = []
        allowed, denied = self.figures["allowed"], self.figures["denied"]
        if allowed < MIN_CHECKS:
            reasons.append(f"only {allowed} allowed answers (fewer than {MIN_CHECKS})")
        if not denied:
            reasons.append("no check was denied: no window reached its limit, so none was checked at its limit")
        if allowed > self.figures["allowed without remaining (per-key bound only)"] and not self.exact_checks:
            reasons.append("no allowed answer could be placed in its window: none was checked exactly")
        return reasons


GATEWAY_WORKLOAD = {
    "keys": GATEWAY_KEYS, "zipf_exponent": ZIPF_EXPONENT, "limit": GATEWAY_LIMIT, "period_ms": GATEWAY_PERIOD_MS,
    "hot_keys": HOT_KEYS, "hot_share": HOT_SHARE, "hot_limit": HOT_LIMIT, "hot_period_ms": HOT_PERIOD_MS,
}  # fmt: skip
"""In the gateway verdict, so the report describes the mix that ran."""

CHECKERS: dict[str, Checker] = {
    "GatewayUser": RateChecker(),
    "JobWorker": LockChecker(),
    "SemaphoreContender": SemaphoreChecker(POOL_PERMITS),
    "CounterClient": CounterChecker(),
}
_RUN = {"started": 0.0, "stopped": 0.0}


def _decode(content: bytes | None) -> dict[str, Any]:
    try:
        answer = msgspec.json.decode(content or b"{}")
    except msgspec.DecodeError:
        return {}
    return answer if isinstance(answer, dict) else {}


def _problem(response: Any) -> str:
    return _decode(response.content).get("type", "") if response.content else ""


# --- users --------------------------------------------------------------------------------------
def _zipf_cdf(keys: int, exponent: float) -> list[float]:
    weights = [1 / rank**exponent for rank in range(1, keys + 1)]
    total, running, cdf = sum(weights), 0.0, []
    for weight in weights:
        running += weight
        cdf.append(running / total)
    return cdf


_GATEWAY_CDF = _zipf_cdf(GATEWAY_KEYS, ZIPF_EXPONENT)
_GATEWAY_BODY = msgspec.json.encode(
    {"limit": GATEWAY_LIMIT, "period_ms": GATEWAY_PERIOD_MS, "algorithm": "fixed_window"}
)
_HOT_BODY = msgspec.json.encode({"limit": HOT_LIMIT, "period_ms": HOT_PERIOD_MS, "algorithm": "fixed_window"})


def _paced(user: Any) -> float:
    """Poisson arrivals at --lg-user-rate checks/s per user (so the sum over users is Poisson too), or none.

    Each wait runs to the next scheduled start; a user that fell more than a second behind
    (the server or Locust was slow) starts afresh instead of bursting to catch up.
    """
    rate = user.environment.parsed_options.lg_user_rate
    if rate <= 0:
        return 0.0
    now = time.monotonic()
    next_at = getattr(user, "next_at", None)
    if next_at is None or now - next_at > 1.0:
        next_at = now
    user.next_at = next_at + user.rng.expovariate(rate)
    return float(max(0.0, user.next_at - now))


class LockgateUser(FastHttpUser):
    abstract = True
    network_timeout = 30.0
    connection_timeout = 10.0

    def on_start(self) -> None:
        self.rng = random.Random()
        self.base = f"/v1/namespaces/{self.environment.parsed_options.lg_namespace}"


class GatewayUser(LockgateUser):
    """A gateway asking for one decision per incoming request."""

    wait_time = _paced

    def on_start(self) -> None:
        super().on_start()
        rate = self.environment.parsed_options.lg_user_rate
        if rate > 0:
            time.sleep(self.rng.expovariate(rate))  # users spawn together: do not start in step

    @task
    def check(self) -> None:
        checker = CHECKERS["GatewayUser"]
        assert isinstance(checker, RateChecker)
        if self.rng.random() < HOT_SHARE:
            key, label = f"hot-{self.rng.randrange(HOT_KEYS)}", "check (hot key)"
            body, limit, period_ms = _HOT_BODY, HOT_LIMIT, HOT_PERIOD_MS
        else:
            rank = min(bisect.bisect_left(_GATEWAY_CDF, self.rng.random()), GATEWAY_KEYS - 1) + 1
            key, label = f"client-{rank}", "check"
            body, limit, period_ms = _GATEWAY_BODY, GATEWAY_LIMIT, GATEWAY_PERIOD_MS
        sent = time.time()
        with self.client.post(
            f"{self.base}/ratelimits/{key}/check", data=body, headers=JSON_HEADERS, name=label, catch_response=True
        ) as response:
            read = time.time()
            if response.status_code != 200:
                response.failure(f"status {response.status_code} {_problem(response)}")
                return
            checker.answered(key, limit, period_ms, _decode(response.content), sent, read)


class _LeaseHolder(LockgateUser):
    abstract = True
    kind = "locks"

    def _acquire(self, name: str, body: dict[str, object], label: str) -> tuple[dict[str, Any], float] | None:
        """The grant and when the acquire was sent, or None (not granted in time, or an error)."""
        sent = time.monotonic()
        with self.client.post(
            f"{self.base}/{self.kind}/{name}/acquire", data=msgspec.json.encode(body), headers=JSON_HEADERS,
            name=label, catch_response=True,
        ) as response:  # fmt: skip
            if response.status_code == 409:
                response.success()  # not granted within wait_ms: an ordinary answer
                self.checker.figures["acquires not granted in time"] += 1
                return None
            if response.status_code != 200:
                response.failure(f"status {response.status_code} {_problem(response)}")
                return None
            return _decode(response.content), sent

    def _renew(self, name: str, lease_id: str, ttl_ms: int, label: str) -> tuple[int, float]:
        sent = time.monotonic()
        body = msgspec.json.encode({"lease_id": lease_id, "ttl_ms": ttl_ms})
        with self.client.post(
            f"{self.base}/{self.kind}/{name}/renew", data=body, headers=JSON_HEADERS, name=label, catch_response=True
        ) as response:
            if response.status_code == 409:
                response.success()
            elif response.status_code != 200:
                response.failure(f"status {response.status_code} {_problem(response)}")
            return response.status_code, sent

    def _release(self, name: str, lease_id: str, label: str) -> tuple[int, float]:
        sent = time.monotonic()
        body = msgspec.json.encode({"lease_id": lease_id})
        with self.client.post(
            f"{self.base}/{self.kind}/{name}/release", data=body, headers=JSON_HEADERS, name=label, catch_response=True
        ) as response:
            if response.status_code == 409:
                response.success()
            elif response.status_code != 200:
                response.failure(f"status {response.status_code} {_problem(response)}")
            return response.status_code, sent

    @property
    def checker(self) -> Any:
        return CHECKERS[type(self).__name__]

    def _hold(
        self, name: str, lease_id: str, token: int, valid_until: float, ttl_ms: int, hold_s: float
    ) -> float | None:
        """Hold for hold_s, renewing every third of the TTL; the new valid-until, or None if the lease was lost."""
        deadline = time.monotonic() + hold_s
        renew_at = time.monotonic() + ttl_ms / 3000
        while (now := time.monotonic()) < deadline:
            if now < renew_at:
                time.sleep(min(deadline, renew_at) - now)  # gevent-patched: yields to the other users
                continue
            status, sent = self._renew(name, lease_id, ttl_ms, f"{self.kind[:-1]} renew")
            if status == 409:
                self._not_owner("renew", name, lease_id, sent, valid_until)
                return None
            if status == 200:
                valid_until = sent + ttl_ms / 1000 - SAFETY_MARGIN_S
                self._renewed(name, lease_id, token, valid_until)
            renew_at = time.monotonic() + ttl_ms / 3000
        return valid_until

    def _not_owner(self, what: str, name: str, lease_id: str, sent: float, valid_until: float) -> None:
        raise NotImplementedError

    def _renewed(self, name: str, lease_id: str, token: int, valid_until: float) -> None:
        raise NotImplementedError


class JobWorker(_LeaseHolder):
    """Take a job's lock (try-lock or wait up to 1 s), work 50 ms..1.5 s renewing, release."""

    kind = "locks"
    wait_time = between(0.0, 0.05)

    def _not_owner(self, what: str, name: str, lease_id: str, sent: float, valid_until: float) -> None:
        self.checker.refused_as_not_owner(what, name, lease_id, sent, valid_until)

    def _renewed(self, name: str, lease_id: str, token: int, valid_until: float) -> None:
        self.checker.renewed(name, lease_id, token, valid_until)

    @task
    def run_job(self) -> None:
        checker: LockChecker = self.checker
        if self.rng.random() < POPULAR_SHARE:
            name = f"job-{self.rng.randrange(POPULAR_JOBS)}"
        else:
            name = f"job-{self.rng.randrange(POPULAR_JOBS, JOB_NAMES)}"
        waits = self.rng.random() < 0.5
        body = {"ttl_ms": JOB_TTL_MS, "wait_ms": JOB_WAIT_MS if waits else 0, "holder": f"worker-{id(self)}"}
        outcome = self._acquire(name, body, "lock acquire (wait)" if waits else "lock acquire (try)")
        if outcome is None:
            return
        grant, sent = outcome
        lease_id, token = grant["lease_id"], int(grant["token"])
        valid_until = sent + JOB_TTL_MS / 1000 - SAFETY_MARGIN_S
        checker.granted(name, lease_id, token, valid_until)
        held_until = self._hold(name, lease_id, token, valid_until, JOB_TTL_MS, self.rng.uniform(*JOB_HOLD_S))
        if held_until is None:
            return
        checker.releasing(name, lease_id)
        status, sent = self._release(name, lease_id, "lock release")
        if status == 409:
            checker.refused_as_not_owner("release", name, lease_id, sent, held_until)


class SemaphoreContender(_LeaseHolder):
    """One of 200 contenders for a pool of 8 permits: wait up to 4 s, use it 10..100 ms, give it back."""

    kind = "semaphores"
    wait_time = between(0.0, 0.02)

    def _not_owner(self, what: str, name: str, lease_id: str, sent: float, valid_until: float) -> None:
        self.checker.refused_as_not_owner(what, lease_id, sent, valid_until)

    def _renewed(self, name: str, lease_id: str, token: int, valid_until: float) -> None:
        self.checker.renewed(lease_id, valid_until)

    @task
    def use_permit(self) -> None:
        checker: SemaphoreChecker = self.checker
        body = {"limit": POOL_PERMITS, "ttl_ms": POOL_TTL_MS, "wait_ms": POOL_WAIT_MS}
        outcome = self._acquire(POOL_NAME, body, "semaphore acquire")
        if outcome is None:
            return
        grant, sent = outcome
        lease_id, token = grant["lease_id"], int(grant["token"])
        valid_until = sent + POOL_TTL_MS / 1000 - SAFETY_MARGIN_S
        checker.granted(lease_id, token, valid_until)
        # One hold in 50 is long enough to need renewals.
        hold_s = self.rng.uniform(3.0, 4.0) if self.rng.random() < 0.02 else self.rng.uniform(*POOL_HOLD_S)
        held_until = self._hold(POOL_NAME, lease_id, token, valid_until, POOL_TTL_MS, hold_s)
        if held_until is None:
            return
        checker.releasing(lease_id)
        status, sent = self._release(POOL_NAME, lease_id, "semaphore release")
        if status == 409:
            checker.refused_as_not_owner("release", lease_id, sent, held_until)


class CounterClient(LockgateUser):
    """Add 1 to one of 8 counters; a retryable failure is retried with the same request_id."""

    wait_time = between(0.0, 0.01)

    @task
    def add(self) -> None:
        checker = CHECKERS["CounterClient"]
        assert isinstance(checker, CounterChecker)
        name, request_id = f"counter-{self.rng.randrange(COUNTERS)}", uuid.uuid4().hex
        body = msgspec.json.encode({"delta": 1, "request_id": request_id})
        checker.sending(request_id, name, body)
        for attempt in range(COUNTER_ATTEMPTS):
            label = "counter add" if attempt == 0 else "counter add (retry)"
            with self.client.post(
                f"{self.base}/counters/{name}/add", data=body, headers=JSON_HEADERS, name=label, catch_response=True
            ) as response:
                status = response.status_code
                if status == 200:
                    checker.done(request_id, int(_decode(response.content)["value"]))
                    return
                response.failure(f"status {status} {_problem(response)}")
                if 400 <= status < 500:
                    checker.refused(request_id)
                    return
            time.sleep(0.05 * (attempt + 1))  # 503, outcome unknown, or no answer: retry the same request_id
        # Still pending: resolved at the end with the same request_id.


# --- the verdict ----------------------------------------------------------------------------------
@events.test_start.add_listener
def _started(environment: Environment, **_: object) -> None:
    _RUN["started"] = time.monotonic()


@events.test_stop.add_listener
def _stopped(environment: Environment, **_: object) -> None:
    _RUN["stopped"] = time.monotonic()


@events.quitting.add_listener
def _verdict(environment: Environment, **_: object) -> None:
    """Each process writes its own verdict: <--lg-verdict>.<role>-<pid>.json (run.py merges them).

    With --processes (GatewayUser only: its checks hold for any subset of the answers), the
    master runs no users and checks the run's health (its stats are the run's), and each worker
    checks what its own users saw.
    """
    options = environment.parsed_options
    role = "worker" if isinstance(environment.runner, WorkerRunner) else "master"
    users = [] if isinstance(environment.runner, MasterRunner) else sorted(environment.user_classes_by_name)
    seconds = (_RUN["stopped"] or time.monotonic()) - _RUN["started"]
    scenarios: dict[str, object] = {}
    problems = _health_problems(environment, role)
    violations = 0
    for name in users:
        checker = CHECKERS[name]
        try:
            summary = checker.finish(environment, seconds)
        except Exception as error:  # the final read failed: the check could not be made
            checker.violation("final check could not run", error=repr(error))
            summary = {}
        unchecked = checker.unchecked()
        problems += [f"{name}: {reason}" for reason in unchecked]
        violations += checker.violations
        scenarios[name] = {
            "violations": checker.violations,
            "violation_details": checker.details,
            "not_checked": unchecked,
            "figures": dict(checker.figures),
            **summary,
        }
    total = environment.stats.total
    verdict = {
        "ok": violations == 0 and not problems,
        "role": role,
        "violations": violations,
        "problems": problems,
        "requests": total.num_requests,
        "failures": total.num_failures,
        "seconds": round(seconds, 2),
        "scenarios": scenarios,
    }
    if options.lg_verdict:
        with open(f"{options.lg_verdict}.{role}-{os.getpid()}.json", "w") as out:
            json.dump(verdict, out, indent=2)
    for name, scenario in scenarios.items():
        print(f"correctness {name}: {scenario['violations']} violations; {json.dumps(scenario['figures'])}")
    for problem in problems:
        print(f"run failed ({role}): {problem}")
    # Set either way: left unset, Locust fails the run on any request failure, expected or not.
    environment.process_exit_code = 0 if verdict["ok"] else 1


def _health_problems(environment: Environment, role: str) -> list[str]:
    """What makes the checks of this run not worth their verdict, apart from the checks themselves."""
    problems = []
    exceptions = environment.runner.exceptions if environment.runner else {}
    if exceptions:
        raised = sum(entry["count"] for entry in exceptions.values())
        first = next(iter(exceptions.values()))
        code = [line.strip() for line in (first.get("traceback") or "").splitlines() if line.strip(" ~^")]
        where = code[-1:]  # the line that raised (3.11 adds a line of ~^ markers under it)
        problems.append(
            f"{raised} Python exceptions in tasks, first: {first['msg']!r}" + (f" at `{where[0]}`" if where else "")
        )
    if locust_log.unhandled_greenlet_exception:
        problems.append("an unhandled greenlet exception (see the log)")
    if role == "worker":
        return problems  # a worker's stats went to the master, which judges them
    total = environment.stats.total
    if not total.num_requests:
        problems.append("no request was made")
    elif total.num_failures > (most := environment.parsed_options.lg_max_failed_share) * total.num_requests:
        problems.append(
            f"{total.num_failures:,} of {total.num_requests:,} requests failed "
            f"({100 * total.num_failures / total.num_requests:.1f}%, more than {100 * most:g}%)"
        )
    not_ready = _not_ready(environment.host or "")
    if not_ready:
        problems.append(f"the server was not ready at the end: {not_ready}")
    return problems


def _not_ready(host: str) -> str:
    """Why GET /readyz did not answer 200 (a server that died near the end leaves few failures), or ""."""
    try:
        with urllib.request.urlopen(f"{host}/readyz", timeout=READY_TIMEOUT_S) as answer:
            return "" if answer.status == 200 else f"status {answer.status}"
    except (OSError, ValueError) as error:
        return repr(error)
