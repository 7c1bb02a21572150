"""A domain policy compiled for matching, and the match of one request descriptor.

Matching follows envoyproxy/ratelimit: the entries of a descriptor walk the tree one level
per entry; at each level the most specific node wins: key and value, then a wildcard value
(in file order), then the key alone. Only the node reached by the descriptor's last entry
supplies a limit: a descriptor with more entries than the tree is deep matches nothing, and
a node without a rate_limit (say, key2/value3 next to a limited key2) is a whitelist.

Each limit keeps its state per *actual* values: a key-only or wildcard node counts every
distinct value apart, as envoyproxy/ratelimit's cache keys do.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from .. import limits
from ..core.ops import Algorithm
from .policy import UNIT_MS, DescriptorSpec, DomainPolicy, HttpSpec

# State keys are built from these separators. Policies and descriptor keys never contain
# control characters (validated at the edge) and request values pass through storable_value,
# so two different paths never meet in one key.
PART = "\x1e"
ENTRY = "\x1f"
PAIR = "\x1d"
OVERRIDE_PATH = "!override"

_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_VALUE_DIGEST_MARK: Final = "~sha256:"
_VALUE_DIGEST_HEX: Final = 32
_VALUE_KEPT_LENGTH: Final = limits.GATEWAY_ENTRY_VALUE_MAX_LENGTH - len(_VALUE_DIGEST_MARK) - _VALUE_DIGEST_HEX

Entries = Sequence[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class Limit:
    """One compiled rate_limit: what the core checks, plus how to report it."""

    requests: int  # per window; 0 means every request is over the limit
    window_ms: int
    burst: int | None
    algorithm: Algorithm
    unit: str | None  # "second".."year" when the window is one (the Envoy API reports units)
    name: str  # rate_limit.name, else the descriptor path ("key1_value1.subkey1"), as metrics label
    explicit_name: str | None  # what `replaces` refers to
    replaces: frozenset[str]
    unlimited: bool
    shadow: bool
    quoted_name: str  # the name as an RFC 8941 sf-string, for the RateLimit headers
    policy_header: str  # this limit's item of RateLimit-Policy, prebuilt

    @property
    def enforced(self) -> bool:
        return not self.shadow and not self.unlimited


class Node:
    __slots__ = ("children", "limit", "shared", "state_path")

    def __init__(
        self, state_path: str, limit: Limit | None, children: Level | None, shared: tuple[str | None, ...] | None
    ) -> None:
        self.state_path = state_path
        self.limit = limit
        self.children = children
        # Per entry on the way here: the wildcard whose matches share one counter
        # (share_threshold), else None for the actual value. None when no entry shares.
        self.shared = shared


class Level:
    __slots__ = ("by_key", "exact", "wildcards")

    def __init__(self) -> None:
        self.exact: dict[tuple[str, str], Node] = {}
        self.wildcards: list[tuple[str, Callable[[str], bool], Node]] = []
        self.by_key: dict[str, Node] = {}


class CompiledDomain:
    """A domain's policy ready for the hot path; rebuilt whole when the policy changes."""

    __slots__ = ("http", "name", "policy", "root", "state_prefix")

    def __init__(self, policy: DomainPolicy) -> None:
        self.name = policy.domain
        self.policy = policy
        self.http = policy.http or HttpSpec()
        self.state_prefix = policy.domain + PART
        self.root = _compile_level(policy, policy.descriptors, parent_path="", parent_label="", parent_shared=())

    def match(self, entries: Entries) -> Node | None:
        """The node the descriptor's last entry reaches, or None if the walk stops before it."""
        level = self.root
        last = len(entries) - 1
        for index, (key, value) in enumerate(entries):
            node = level.exact.get((key, value))
            if node is None and level.wildcards:
                for wildcard_key, matches, candidate in level.wildcards:
                    if wildcard_key == key and matches(value):
                        node = candidate
                        break
            if node is None:
                node = level.by_key.get(key)
            if node is None:
                return None
            if index == last:
                return node
            if node.children is None:
                return None  # the request is deeper than the policy: no limit, as in envoyproxy/ratelimit
            level = node.children
        return None

    def state_key(self, node: Node, entries: Entries) -> str:
        """The node's state for these actual values."""
        if node.shared is None:
            values = [storable_value(value) for _, value in entries]
        else:
            pairs = zip(entries, node.shared, strict=True)
            values = [pattern or storable_value(value) for (_, value), pattern in pairs]
        return self.state_prefix + node.state_path + PART + ENTRY.join(values)

    def override_key(self, entries: Entries, *, requests: int, unit: str) -> str:
        """A caller-supplied limit has no node: its state is named by the entries and the limit.

        The limit is part of the name because one request may carry the same entries twice
        with different overrides (100 a minute and 1 a minute): each is judged against its own
        limit, as envoyproxy/ratelimit does, never merged into one state with the first's.
        """
        pairs = (f"{key}{PAIR}{storable_value(value)}" for key, value in entries)
        return self.state_prefix + OVERRIDE_PATH + PAIR + f"{requests}/{unit}" + PART + ENTRY.join(pairs)


def storable_value(value: str) -> str:
    """A request's descriptor value as part of a state key: no control characters, bounded length.

    Gateways forward whatever their clients send (envoyproxy/ratelimit accepts any value), and
    refusing an odd value would fail the whole call, which Envoy by default lets through with
    every limit skipped. So an odd value is kept, not refused: a readable prefix with control
    characters replaced, and a digest of the whole value, so distinct values keep distinct
    counters. Matching sees the value as sent; only the key is mapped.
    """
    if len(value) <= limits.GATEWAY_ENTRY_VALUE_MAX_LENGTH and (value.isprintable() or not _CONTROL.search(value)):
        return value  # isprintable (fast, in C) is False for every control character, and for some others
    digest = hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()[:_VALUE_DIGEST_HEX]
    return _CONTROL.sub("?", value[:_VALUE_KEPT_LENGTH]) + _VALUE_DIGEST_MARK + digest


def compile_limit(
    *,
    requests: int,
    window_ms: int,
    algorithm: Algorithm,
    name: str,
    burst: int | None = None,
    unit: str | None = None,
    explicit_name: str | None = None,
    replaces: frozenset[str] = frozenset(),
    unlimited: bool = False,
    shadow: bool = False,
) -> Limit:
    return Limit(
        requests=requests,
        window_ms=window_ms,
        burst=burst,
        algorithm=algorithm,
        unit=unit,
        name=name,
        explicit_name=explicit_name,
        replaces=replaces,
        unlimited=unlimited,
        shadow=shadow,
        quoted_name=structured_string(name),
        policy_header=f"{structured_string(name)};q={requests};w={-(-window_ms // 1000)}",
    )


def structured_string(text: str) -> str:
    """An RFC 8941 sf-string: printable ASCII only, quotes and backslashes escaped."""
    cleaned = "".join(char if " " <= char <= "~" else "_" for char in text)
    return '"' + cleaned.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _compile_level(
    policy: DomainPolicy,
    descriptors: list[DescriptorSpec],
    *,
    parent_path: str,
    parent_label: str,
    parent_shared: tuple[str | None, ...],
) -> Level:
    level = Level()
    for spec in descriptors:
        value = spec.value or None  # envoyproxy/ratelimit: an empty value is no value
        segment = spec.key if value is None else f"{spec.key}{PAIR}{value}"
        state_path = segment if not parent_path else parent_path + ENTRY + segment
        label_segment = spec.key if value is None else f"{spec.key}_{value}"
        label = label_segment if not parent_label else f"{parent_label}.{label_segment}"
        matcher = None if value is None else _wildcard(value, policy.wildcards)
        shared = (*parent_shared, value if matcher is not None and spec.share_threshold else None)
        children = (
            _compile_level(policy, spec.descriptors, parent_path=state_path, parent_label=label, parent_shared=shared)
            if spec.descriptors
            else None
        )
        node = Node(state_path, _compile_node_limit(policy, spec, label), children, shared if any(shared) else None)
        if value is None:
            level.by_key[spec.key] = node
        elif matcher is not None:
            level.wildcards.append((spec.key, matcher, node))
        else:
            level.exact[(spec.key, value)] = node
    return level


def _compile_node_limit(policy: DomainPolicy, spec: DescriptorSpec, label: str) -> Limit | None:
    rate = spec.rate_limit
    if rate is None:
        return None
    unit = rate.unit.lower() if rate.unit is not None else None
    window_ms = 0 if rate.unlimited else rate.window_ms
    if unit is None and window_ms:
        unit = next((name for name, length in UNIT_MS.items() if length == window_ms), None)
    return compile_limit(
        requests=rate.requests_per_unit,
        window_ms=window_ms,
        burst=rate.burst,
        algorithm=rate.algorithm or policy.algorithm,
        unit=unit,
        name=rate.name or label,
        explicit_name=rate.name,
        replaces=frozenset(replaced.name for replaced in rate.replaces),
        unlimited=rate.unlimited,
        shadow=spec.shadow_mode,
    )


def _wildcard(value: str, mode: str) -> Callable[[str], bool] | None:
    """envoyproxy/ratelimit: only a trailing '*' is a wildcard (a prefix match); elsewhere it is literal."""
    if "*" not in value:
        return None
    if mode == "suffix":
        if not value.endswith("*"):
            return None
        prefix = value[:-1]
        return lambda actual: actual.startswith(prefix)
    parts = value.split("*")
    return lambda actual: glob_matches(parts, actual)


def glob_matches(parts: Sequence[str], actual: str) -> bool:
    """Whether `actual` matches the glob whose literal parts, split at each '*', are `parts`.

    Linear in len(actual) (str.find, no backtracking): a regex of many '*' can take seconds on
    one value, on the event loop every shard shares. The first and last parts anchor; each middle
    part takes its leftmost place after the previous one, which is right for '*'-only globs:
    an earlier place never leaves less room for the parts after it.
    """
    first, last = parts[0], parts[-1]
    if len(actual) < len(first) + len(last) or not actual.startswith(first) or not actual.endswith(last):
        return False
    position, end = len(first), len(actual) - len(last)
    for part in parts[1:-1]:
        found = actual.find(part, position, end)
        if found < 0:
            return False
        position = found + len(part)
    return True
