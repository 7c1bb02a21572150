"""The policy model: what a gateway domain limits, and how.

The shape is envoyproxy/ratelimit's YAML configuration, so its files load unchanged:

    domain: <name>
    descriptors:
      - key: <key>
        value: <value>          # optional; a trailing '*' is a prefix wildcard
        rate_limit:             # optional; a descriptor without one is not limited
          requests_per_unit: <n>
          unit: second | minute | hour | day | week | month | year
          unlimited: <bool>
          name: <name>          # optional; another limit may `replaces` it
          replaces: [{name: <name>}]
        shadow_mode: <bool>     # decide and report, never deny
        share_threshold: <bool> # every value this wildcard matches counts against one limit
        detailed_metric: <bool> # accepted; Lockgate never labels metrics per value
        value_to_metric: <bool> # accepted, as detailed_metric
        descriptors: [...]      # nested, matched against the next entry

Lockgate's extensions (all optional, so a file without them reads as envoyproxy/ratelimit
would): in rate_limit, `period_ms` (any period instead of a unit), `algorithm` and
`burst`; per domain, `algorithm` (the default of its limits), `failure_mode` and
`failure_timeout_ms` (what a check answers when the store cannot decide in time),
`deny_status` (of the HTTP check), `wildcards` ("suffix" as envoyproxy/ratelimit, or
"anywhere": every `*` in a value matches any run of characters) and `http` (which request
data the HTTP check endpoint turns into descriptor entries).
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec
from msgspec import Meta

from .. import limits
from ..core.ops import Algorithm

UNIT_MS: Final[dict[str, int]] = {
    "second": 1000,
    "minute": 60_000,
    "hour": 3_600_000,
    "day": 86_400_000,
    # envoyproxy/ratelimit's own lengths for these three: 7, 30 and 365 days.
    "week": 7 * 86_400_000,
    "month": 30 * 86_400_000,
    "year": 365 * 86_400_000,
}

FailureMode = Literal["allow", "deny"]
Wildcards = Literal["suffix", "anywhere"]
Source = Literal["client_ip", "api_key", "path", "method", "host", "header", "value"]

_NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f]*$(?!\n)"  # see limits.NAME_PATTERN on (?!\n)
"""State keys join entries with control characters, so entries may not contain any."""

DomainName = Annotated[str, Meta(pattern=limits.NAME_PATTERN, max_length=limits.NAME_MAX_LENGTH)]
EntryKey = Annotated[
    str, Meta(min_length=1, max_length=limits.GATEWAY_ENTRY_KEY_MAX_LENGTH, pattern=_NO_CONTROL_CHARACTERS)
]
EntryValue = Annotated[str, Meta(max_length=limits.GATEWAY_ENTRY_VALUE_MAX_LENGTH, pattern=_NO_CONTROL_CHARACTERS)]
HeaderName = Annotated[str, Meta(pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")]
LimitName = Annotated[str, Meta(min_length=1, max_length=256, pattern=_NO_CONTROL_CHARACTERS)]


class Replaces(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: LimitName


class RateLimitSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    # envoyproxy/ratelimit reads a missing requests_per_unit as 0 (every request over the limit).
    requests_per_unit: Annotated[int, Meta(ge=0, le=limits.RATE_LIMIT_MAX)] = 0
    unit: str | None = None  # case-insensitive, as envoyproxy/ratelimit reads it
    period_ms: Annotated[int, Meta(ge=limits.RATE_PERIOD_MIN_MS, le=limits.RATE_PERIOD_MAX_MS)] | None = None
    algorithm: Algorithm | None = None  # None: the domain's
    burst: Annotated[int, Meta(ge=1, le=limits.RATE_LIMIT_MAX)] | None = None
    unlimited: bool = False
    name: LimitName | None = None
    replaces: list[Replaces] = []

    def __post_init__(self) -> None:
        if self.unit is not None and self.unit.lower() not in UNIT_MS:
            raise ValueError(f"invalid rate limit unit {self.unit!r}; one of {', '.join(UNIT_MS)}")
        if self.unlimited:
            if self.unit is not None or self.period_ms is not None:
                raise ValueError("an unlimited rate_limit has no unit or period_ms")
            return
        if (self.unit is None) == (self.period_ms is None):
            raise ValueError("a rate_limit needs exactly one of unit and period_ms")
        for replaced in self.replaces:
            if replaced.name == self.name:
                raise ValueError(f"rate limit {self.name!r} replaces itself")

    @property
    def window_ms(self) -> int:
        if self.period_ms is not None:
            return self.period_ms
        assert self.unit is not None
        return UNIT_MS[self.unit.lower()]


class DescriptorSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    key: EntryKey
    value: EntryValue | None = None
    rate_limit: RateLimitSpec | None = None
    descriptors: list[DescriptorSpec] = []
    shadow_mode: bool = False
    # With a wildcard value: all the values it matches share one counter, not one each.
    share_threshold: bool = False
    # Per-value metric names in envoyproxy/ratelimit: an unbounded label set, so only accepted.
    detailed_metric: bool = False
    value_to_metric: bool = False


class EntrySource(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """One descriptor entry of the HTTP check: `key` and where its value comes from.

    client_ip: X-Forwarded-For's right-most hop (or one of the trusted hops left of it), else
    X-Real-IP, else the caller's address; api_key: the domain's api_key_header, stored as a
    SHA-256 prefix, never in the clear; path: X-Original-URI / X-Forwarded-Uri without the
    query, else the path after /check/{domain}; method: X-Original-Method / X-Forwarded-Method,
    else the check's own; host: X-Forwarded-Host, else Host; header: the named header; value:
    the constant `value`. A descriptor with an entry that has no value (and no `default`) is
    left out. Headers that disagree (request_data.py) make the check refuse the request.
    """

    key: EntryKey
    source: Source
    header: HeaderName | None = None
    value: EntryValue | None = None
    default: EntryValue | None = None

    def __post_init__(self) -> None:
        if self.source == "header" and self.header is None:
            raise ValueError(f"entry {self.key!r}: source 'header' needs `header`")
        if self.source == "value" and self.value is None:
            raise ValueError(f"entry {self.key!r}: source 'value' needs `value`")


class HttpDescriptor(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    entries: Annotated[list[EntrySource], Meta(min_length=1, max_length=limits.GATEWAY_ENTRIES_PER_DESCRIPTOR_MAX)]


def _default_http_descriptors() -> list[HttpDescriptor]:
    return [HttpDescriptor(entries=[EntrySource(key="remote_address", source="client_ip")])]


class HttpSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """How the HTTP check endpoint turns a request into descriptors (default: one per client IP)."""

    descriptors: Annotated[list[HttpDescriptor], Meta(max_length=limits.GATEWAY_DESCRIPTORS_PER_REQUEST_MAX)] = (
        msgspec.field(default_factory=_default_http_descriptors)
    )
    api_key_header: HeaderName = "x-api-key"
    # Off by default: gateways pass the client's headers (and Envoy the client's query) on to
    # the check, so a cost the request itself could name would let a client make its own
    # requests free peeks. Set it only where the gateway overwrites this header itself.
    hits_addend_header: HeaderName | None = None


class DomainPolicy(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    domain: DomainName
    descriptors: list[DescriptorSpec] = []
    # --- Lockgate's extensions ---------------------------------------------------------------
    # Fixed windows aligned to the unit, as envoyproxy/ratelimit counts: a config moved over
    # unchanged behaves the same. gcra or sliding_window per domain or per limit otherwise.
    algorithm: Algorithm = "fixed_window"
    # deny: the HTTP check answers deny_status and gRPC answers UNAVAILABLE, so Envoy's own
    # failure_mode_deny decides there (Envoy lets requests through by default).
    failure_mode: FailureMode = "deny"
    failure_timeout_ms: Annotated[int, Meta(ge=1, le=limits.GATEWAY_FAILURE_TIMEOUT_MAX_MS)] = (
        limits.GATEWAY_FAILURE_TIMEOUT_DEFAULT_MS
    )
    deny_status: Annotated[int, Meta(ge=400, le=599)] = 429
    wildcards: Wildcards = "suffix"
    http: HttpSpec | None = None

    def __post_init__(self) -> None:
        nodes = _check_level(self.descriptors, depth=1, path=self.domain)
        if nodes > limits.GATEWAY_POLICY_NODES_MAX:
            raise ValueError(
                f"domain {self.domain!r} declares {nodes} descriptors, more than {limits.GATEWAY_POLICY_NODES_MAX}"
            )


def _check_level(descriptors: list[DescriptorSpec], *, depth: int, path: str) -> int:
    """Refuses what envoyproxy/ratelimit refuses (a repeated key/value at one level) and too deep a tree."""
    if descriptors and depth > limits.GATEWAY_ENTRIES_PER_DESCRIPTOR_MAX:
        raise ValueError(f"{path}: descriptors nest deeper than {limits.GATEWAY_ENTRIES_PER_DESCRIPTOR_MAX} levels")
    seen: set[tuple[str, str | None]] = set()
    nodes = 0
    for descriptor in descriptors:
        composite = (descriptor.key, descriptor.value or None)
        label = descriptor.key if composite[1] is None else f"{descriptor.key}_{descriptor.value}"
        if composite in seen:
            raise ValueError(f"duplicate descriptor composite key '{path}.{label}'")
        seen.add(composite)
        nodes += 1 + _check_level(descriptor.descriptors, depth=depth + 1, path=f"{path}.{label}")
    return nodes
