"""One gateway request, decided: every limit its descriptors match, checked all-or-nothing.

All limits of a request go into one RateCheckAll, routed by the domain's name, so one shard
decides them together: if any enforced limit denies, none is charged. Shadow limits decide
and are reported but never deny. A request whose costs are all 0 is a peek: never logged,
never charged. When the store cannot answer within the domain's failure_timeout_ms, its
failure_mode decides. A full namespace (Settings.max_objects_per_namespace) is no outage: see
_namespace_full.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from .. import limits
from ..clock import Clock, WallClock
from ..core.ops import RateCheckAll, RateDecisions, RateItem, RateResetAll
from ..engine.node import Engine
from ..errors import InvalidRequest, LockgateError, QuotaExceeded
from .matcher import CompiledDomain, Entries, Limit, compile_limit
from .policy import UNIT_MS
from .telemetry import GatewayMetrics

log = logging.getLogger("lockgate.gateway")

UNLIMITED_REMAINING: Final = 2**32 - 1
"""What envoyproxy/ratelimit reports as the remaining of an unlimited descriptor."""

FailureReason = Literal["timeout", "store-unavailable", "quota-exceeded"]
_STORE_FAILURES: Final = frozenset(("timeout", "store-unavailable"))


@dataclass(frozen=True, slots=True)
class RequestDescriptor:
    entries: Entries
    override: tuple[int, str] | None = None  # (requests_per_unit, unit): the caller's limit instead of ours
    hits_addend: int | None = None  # None: the request's


@dataclass(slots=True)
class DescriptorStatus:
    limit: Limit | None  # None: nothing limits this descriptor (no match, whitelisted, replaced)
    over_limit: bool = False  # this limit would deny (a shadow limit still lets the request through)
    remaining: int = 0
    reset_after_ms: int = 0
    retry_after_ms: int = 0

    @property
    def denies(self) -> bool:
        return self.over_limit and self.limit is not None and not self.limit.shadow


@dataclass(slots=True)
class Verdict:
    allowed: bool
    statuses: list[DescriptorStatus]
    failure: FailureReason | None = None  # set when the store did not decide: see store_failed
    lsn: int = 0

    @property
    def store_failed(self) -> bool:
        """The store did not answer in time and the failure mode decided (a full namespace did not)."""
        return self.failure in _STORE_FAILURES


@dataclass(slots=True)
class _Plan:
    statuses: list[DescriptorStatus] = field(default_factory=list)
    items: list[RateItem] = field(default_factory=list)
    item_of_status: list[int] = field(default_factory=list)  # per status: its index in items, or -1
    blocked: bool = False  # an enforced limit of 0 requests matched: denied whatever the store says


def relay_timeout_s(domain: CompiledDomain | None) -> float:
    """How long a standby waits for the active node's decision: as long as the active node
    waits for the store (the domain's failure timeout), and the hop."""
    timeout_ms = domain.policy.failure_timeout_ms if domain else limits.GATEWAY_FAILURE_TIMEOUT_DEFAULT_MS
    return (timeout_ms + limits.GATEWAY_RELAY_SLACK_MS) / 1000


class Decider:
    """clock: the engine's (a WallClock, as the engine's by default); read only for limits of 0,
    which are decided without the store."""

    def __init__(self, engine: Callable[[], Engine], metrics: GatewayMetrics, *, clock: Clock | None = None) -> None:
        self._engine = engine
        self._metrics = metrics
        self._clock = clock or WallClock()
        self._namespace_full_logged = False  # one warning per episode, not one per request

    async def decide(
        self, domain: CompiledDomain, descriptors: Sequence[RequestDescriptor], *, hits_addend: int = 1
    ) -> Verdict:
        plan = self._plan(domain, descriptors, hits_addend)
        if not plan.items:
            verdict = Verdict(allowed=not plan.blocked, statuses=plan.statuses)
        else:
            command = RateCheckAll(namespace=limits.GATEWAY_NAMESPACE, name=domain.name, items=plan.items)
            try:
                timeout_s = domain.policy.failure_timeout_ms / 1000
                result, lsn = await self._engine().execute(command, gate_timeout_s=timeout_s)
            except QuotaExceeded as error:
                if not self._namespace_full_logged:
                    self._namespace_full_logged = True
                    log.warning("gateway checks with new keys are denied until idle keys are evicted: %s", error)
                verdict = _namespace_full(plan)
            except (LockgateError, TimeoutError) as error:
                verdict = _failure(domain, plan, error)
            else:
                assert isinstance(result, RateDecisions)
                verdict = _settle(plan, result, lsn)
                self._namespace_full_logged = False
        self._metrics.record(domain.name, verdict)
        return verdict

    def _plan(self, domain: CompiledDomain, descriptors: Sequence[RequestDescriptor], hits_addend: int) -> _Plan:
        """One status per descriptor, and the RateItems of those a limit applies to (one per state)."""
        plan = _Plan()
        matched = [self._limit_and_key(domain, descriptor) for descriptor in descriptors]
        replaced = _replaced_names(matched)
        item_by_key: dict[str, int] = {}
        for descriptor, (limit, key) in zip(descriptors, matched, strict=True):
            if limit is not None and limit.explicit_name is not None and limit.explicit_name in replaced:
                limit = None
            status = DescriptorStatus(limit)
            plan.statuses.append(status)
            plan.item_of_status.append(-1)
            if limit is None:
                continue
            if limit.unlimited:
                status.remaining = UNLIMITED_REMAINING
                continue
            if limit.requests == 0:  # over the limit by definition: no need to ask the store
                status.over_limit = True
                status.reset_after_ms = status.retry_after_ms = _rest_of_window_ms(limit, self._clock.now_ms())
                plan.blocked = plan.blocked or not limit.shadow
                continue
            cost = descriptor.hits_addend if descriptor.hits_addend is not None else hits_addend
            index = item_by_key.get(key)
            if index is None:
                index = item_by_key[key] = len(plan.items)
                plan.items.append(_item(key, limit, cost))
            else:  # two descriptors, one state: they add up, as separate hits would
                plan.items[index] = _with_more_cost(plan.items[index], cost, shadow=limit.shadow)
            plan.item_of_status[-1] = index
        if plan.blocked:  # denied anyway: only look, so nothing is charged, and still report the others
            plan.items = [_with_cost(item, 0) for item in plan.items]
        return plan

    async def reset(self, domain: CompiledDomain, descriptors: Sequence[RequestDescriptor]) -> tuple[int, int]:
        """Forget the state the descriptors' limits keep: (keys reset, lsn)."""
        keys = sorted(
            {key for limit, key in (self._limit_and_key(domain, d) for d in descriptors) if limit is not None}
        )
        if not keys:
            return 0, 0
        _, lsn = await self._engine().execute(
            RateResetAll(namespace=limits.GATEWAY_NAMESPACE, name=domain.name, keys=keys)
        )
        return len(keys), lsn

    @staticmethod
    def _limit_and_key(domain: CompiledDomain, descriptor: RequestDescriptor) -> tuple[Limit | None, str]:
        if descriptor.override is not None:
            requests, unit = descriptor.override
            if unit not in UNIT_MS:
                raise InvalidRequest(f"a limit override needs a unit, one of {', '.join(UNIT_MS)}")
            # A caller's limit is never in shadow mode (envoyproxy/ratelimit does the same).
            limit = compile_limit(
                requests=requests,
                window_ms=UNIT_MS[unit],
                algorithm=domain.policy.algorithm,
                name="override",
                unit=unit,
            )
            return limit, domain.override_key(descriptor.entries, requests=requests, unit=unit)
        node = domain.match(descriptor.entries)
        if node is None or node.limit is None:
            return None, ""
        return node.limit, domain.state_key(node, descriptor.entries)


def _replaced_names(matched: list[tuple[Limit | None, str]]) -> frozenset[str]:
    """Names of limits that another matched limit `replaces` (envoyproxy/ratelimit's replaces)."""
    names: frozenset[str] = frozenset()
    for limit, _ in matched:
        if limit is not None and limit.replaces:
            names = names | limit.replaces
    return names


def _rest_of_window_ms(limit: Limit, now_ms: int) -> int:
    """Until the current window (aligned to the epoch, as fixed windows are) ends, as
    envoyproxy/ratelimit reports a limit of 0 (unit - now % unit), never the whole unit."""
    return limit.window_ms - now_ms % limit.window_ms


def _item(key: str, limit: Limit, cost: int) -> RateItem:
    return RateItem(
        key=key,
        limit=limit.requests,
        period_ms=limit.window_ms,
        burst=limit.burst,
        cost=cost,
        algorithm=limit.algorithm,
        shadow=limit.shadow,
    )


def _with_cost(item: RateItem, cost: int, *, shadow: bool | None = None) -> RateItem:
    return RateItem(
        key=item.key,
        limit=item.limit,
        period_ms=item.period_ms,
        burst=item.burst,
        cost=cost,
        algorithm=item.algorithm,
        shadow=item.shadow if shadow is None else shadow,
    )


def _with_more_cost(item: RateItem, cost: int, *, shadow: bool) -> RateItem:
    """The state is enforced if any descriptor reaching it is."""
    return _with_cost(item, min(item.cost + cost, limits.RATE_COST_MAX), shadow=item.shadow and shadow)


def _settle(plan: _Plan, result: RateDecisions, lsn: int) -> Verdict:
    allowed = result.allowed and not plan.blocked
    for status, index in zip(plan.statuses, plan.item_of_status, strict=True):
        if index < 0:
            continue
        decision = result.decisions[index]
        status.over_limit = not decision.allowed
        remaining = decision.remaining
        if decision.allowed and not allowed:
            remaining += plan.items[index].cost  # it was not charged after all
        # A GCRA burst above the limit lets more through at once than one window's quota, but
        # every answer reports the quota (q=, X-RateLimit-Limit, requests_per_unit), and a
        # remaining above it would contradict that: the lower figure never over-promises.
        assert status.limit is not None
        status.remaining = min(remaining, status.limit.requests)
        status.reset_after_ms = decision.reset_after_ms
        status.retry_after_ms = decision.retry_after_ms
    return Verdict(allowed=allowed, statuses=plan.statuses, lsn=lsn)


def _failure(domain: CompiledDomain, plan: _Plan, error: BaseException) -> Verdict:
    if plan.blocked:  # a limit of 0 denies without the store: what it would have said changes nothing
        return Verdict(allowed=False, statuses=plan.statuses)
    reason: FailureReason = "timeout" if isinstance(error, TimeoutError) else "store-unavailable"
    return Verdict(allowed=domain.policy.failure_mode == "allow", statuses=plan.statuses, failure=reason)


def _namespace_full(plan: _Plan) -> Verdict:
    """The gateway namespace holds as many keys as it may, and this request needs a new one.

    Not a store outage, so failure_mode does not apply. Allowing would let whoever fills the
    namespace (many distinct values) lift every limit for everyone new; so the request is denied
    as over its limits, charging nothing, until idle keys are evicted. Keys already kept work
    as before, and limits in shadow mode still never deny.
    """
    for status, index in zip(plan.statuses, plan.item_of_status, strict=True):
        if index >= 0 and status.limit is not None:
            status.over_limit = True
            status.reset_after_ms = status.retry_after_ms = status.limit.window_ms
    allowed = not any(status.denies for status in plan.statuses)
    return Verdict(allowed=allowed, statuses=plan.statuses, failure="quota-exceeded")
