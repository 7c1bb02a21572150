"""Gateway metrics: per domain and per configured limit, never per key or value.

The label values come from policies (domain names, limit names and descriptor paths), so
their number is bounded by configuration; a request's own values never become labels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from ..api.metrics import Metrics

if TYPE_CHECKING:
    from .decision import Verdict

UNKNOWN_DOMAIN_LABEL: Final = "(unknown)"


class GatewayMetrics:
    def __init__(self, metrics: Metrics) -> None:
        self._decisions = metrics.gateway_decisions
        self._limit_decisions = metrics.gateway_limit_decisions

    def record(self, domain: str, verdict: Verdict) -> None:
        if verdict.failure == "quota-exceeded":
            outcome = "quota_exceeded"  # a full namespace, not a store that failed to answer
        elif verdict.failure is not None:
            outcome = "failure_allowed" if verdict.allowed else "failure_denied"
        else:
            outcome = "allowed" if verdict.allowed else "denied"
        self._decisions.inc((domain, outcome))
        if verdict.failure is not None:
            return
        for status in verdict.statuses:
            limit = status.limit
            if limit is None or limit.unlimited:
                continue
            limit_outcome = "ok"
            if status.over_limit:
                limit_outcome = "shadow_over_limit" if limit.shadow else "over_limit"
            self._limit_decisions.inc((domain, limit.name, limit_outcome))

    def ambiguous(self, domain: str) -> None:
        """An HTTP check refused because the headers naming its original request disagree."""
        self._decisions.inc((domain, "ambiguous"))

    def unknown_domain(self) -> None:
        self._decisions.inc((UNKNOWN_DOMAIN_LABEL, "unknown_domain"))
