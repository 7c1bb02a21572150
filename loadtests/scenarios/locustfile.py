"""Locust scenarios for Lockgate that check correctness while they load the server.

One user class per scenario; name it on the command line (one process, so the checkers
below see every client):

  GatewayUser         rate-limit checks over 100,000 keys drawn Zipf-like, plus a few hot keys
                      with a tight limit (an abusive client). Poisson arrivals, --lg-user-rate per user.
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
--lg-verdict. Request failures (timeouts, 5xx) are reported but are not violations.
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
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

JSON_HEADERS = {"Content-Type": "application/json"}
SAFETY_MARGIN_S = 0.010
"""Subtracted from every valid-until: the server stamps times in whole milliseconds."""
DETAILS_KEPT = 50

# --- the gateway mix --------------------------------------------------------------------------
GATEWAY_KEYS = 100_000
ZIPF_EXPONENT = 1.0
GATEWAY_LIMIT, GATEWAY_PERIOD_MS = 600, 60_000
HOT_KEYS, HOT_SHARE = 4, 0.05
"""4 hot keys take 5% of the checks (several hundred per second each) under a tight limit."""
HOT_LIMIT, HOT_PERIOD_MS = 50, 5_000

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


@dataclass
class LockRecord:
    holder: str | None = None
    valid_until: float = 0.0
    last_token: int = 0
    grants: int = 0


class LockChecker(Checker):
    """At most one live holder per lock, and tokens only grow in the order grants were held."""

    def __init__(self) -> None:
        super().__init__()
        self.locks: dict[str, LockRecord] = defaultdict(LockRecord)

    def granted(self, name: str, lease_id: str, token: int, valid_until: float) -> None:
        with self.guard:
            now = time.monotonic()
            self.figures["grants"] += 1
            if now >= valid_until:
                # This client read its grant too late to know it still held the lock: nothing to assert.
                self.figures["grants read after their lease could have expired"] += 1
                return
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

    def renewed(self, name: str, lease_id: str, valid_until: float) -> None:
        with self.guard:
            record = self.locks[name]
            if record.holder == lease_id:
                record.valid_until = valid_until

    def releasing(self, name: str, lease_id: str) -> None:
        """Called before the release is sent: from then on the next holder may be granted."""
        with self.guard:
            record = self.locks[name]
            if record.holder == lease_id:
                record.holder = None

    def refused_as_not_owner(self, what: str, name: str, lease_id: str, sent: float, valid_until: float) -> None:
        with self.guard:
            if sent < valid_until:
                self.violation(
                    f"{what} refused as not-owner before the lease could expire", lock=name, lease=lease_id,
                    sent_before_valid_until_s=round(valid_until - sent, 4),
                )  # fmt: skip
            else:
                self.figures[f"{what} after the lease could have expired (slow client)"] += 1

    def finish(self, environment: Environment, seconds: float) -> dict[str, object]:
        contended = sum(1 for record in self.locks.values() if record.grants > 1)
        return {"locks_granted": len(self.locks), "locks_granted_more_than_once": contended}


class SemaphoreChecker(Checker):
    """Never more live holders than permits; every grant has its own token."""

    def __init__(self, permits: int) -> None:
        super().__init__()
        self.permits = permits
        self.holders: dict[str, float] = {}  # lease -> valid until
        self.tokens: set[int] = set()
        self.most_held = 0

    def granted(self, lease_id: str, token: int, valid_until: float) -> None:
        with self.guard:
            now = time.monotonic()
            self.figures["grants"] += 1
            if token in self.tokens:
                self.violation("token granted twice", token=token)
            self.tokens.add(token)
            if now >= valid_until:
                self.figures["grants read after their lease could have expired"] += 1
                return
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

    def releasing(self, lease_id: str) -> None:
        with self.guard:
            self.holders.pop(lease_id, None)

    def refused_as_not_owner(self, what: str, lease_id: str, sent: float, valid_until: float) -> None:
        with self.guard:
            if sent < valid_until:
                self.violation(f"{what} refused as not-owner before the lease could expire", lease=lease_id)
            else:
                self.figures[f"{what} after the lease could have expired (slow client)"] += 1

    def finish(self, environment: Environment, seconds: float) -> dict[str, object]:
        return {"permits": self.permits, "most_live_holders_seen": self.most_held}


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
        }


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

    def _hold(self, name: str, lease_id: str, valid_until: float, ttl_ms: int, hold_s: float) -> float | None:
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
                self._renewed(name, lease_id, valid_until)
            renew_at = time.monotonic() + ttl_ms / 3000
        return valid_until

    def _not_owner(self, what: str, name: str, lease_id: str, sent: float, valid_until: float) -> None:
        raise NotImplementedError

    def _renewed(self, name: str, lease_id: str, valid_until: float) -> None:
        raise NotImplementedError


class JobWorker(_LeaseHolder):
    """Take a job's lock (try-lock or wait up to 1 s), work 50 ms..1.5 s renewing, release."""

    kind = "locks"
    wait_time = between(0.0, 0.05)

    def _not_owner(self, what: str, name: str, lease_id: str, sent: float, valid_until: float) -> None:
        self.checker.refused_as_not_owner(what, name, lease_id, sent, valid_until)

    def _renewed(self, name: str, lease_id: str, valid_until: float) -> None:
        self.checker.renewed(name, lease_id, valid_until)

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
        held_until = self._hold(name, lease_id, valid_until, JOB_TTL_MS, self.rng.uniform(*JOB_HOLD_S))
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

    def _renewed(self, name: str, lease_id: str, valid_until: float) -> None:
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
        held_until = self._hold(POOL_NAME, lease_id, valid_until, POOL_TTL_MS, hold_s)
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
    master runs no users and each worker checks what its own users saw.
    """
    options = environment.parsed_options
    role = "worker" if isinstance(environment.runner, WorkerRunner) else "master"
    users = [] if isinstance(environment.runner, MasterRunner) else sorted(environment.user_classes_by_name)
    seconds = (_RUN["stopped"] or time.monotonic()) - _RUN["started"]
    scenarios: dict[str, object] = {}
    violations = 0
    for name in users:
        checker = CHECKERS[name]
        try:
            summary = checker.finish(environment, seconds)
        except Exception as error:  # the final read failed: the check could not be made
            checker.violation("final check could not run", error=repr(error))
            summary = {}
        violations += checker.violations
        scenarios[name] = {
            "violations": checker.violations,
            "violation_details": checker.details,
            "figures": dict(checker.figures),
            **summary,
        }
    total = environment.stats.total
    answered = role == "worker" or total.num_requests > total.num_failures  # a worker's stats went to the master
    verdict = {
        "ok": violations == 0 and answered,
        "role": role,
        "violations": violations,
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
    # Request failures alone do not fail the run (they are reported); a violation or no successful request does.
    environment.process_exit_code = 0 if verdict["ok"] else 1
