"""Policy files: YAML (envoyproxy/ratelimit's files as they are), TOML or JSON.

A document holds one domain (`domain: ...` at its top, envoyproxy/ratelimit's layout) or
several (`domains: [...]`); a YAML file may hold several documents. A file that does not
parse or validate is refused as a whole, naming the file, like envoyproxy/ratelimit does; so
is a file without any domain (empty, only comments, `---`, `domains: []`), which
envoyproxy/ratelimit refuses as "config file cannot have empty domain": a policy file cut
short must not load as "no limits". No policy files at all is a gateway without domains.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

import msgspec
import yaml

from .. import limits
from .policy import DomainPolicy


class PolicyError(ValueError):
    """A policy that cannot be loaded; the message names its source."""


NESTED_TOO_DEEPLY: Final = "nested too deeply to read"


def load_policy_files(paths: Iterable[str | Path]) -> dict[str, DomainPolicy]:
    policies: dict[str, DomainPolicy] = {}
    for path in paths:
        source = str(path)
        try:
            data = Path(path).read_bytes()
        except OSError as error:
            raise PolicyError(f"{source}: cannot read policy file: {error}") from error
        for policy in parse_policies(data, source=source):
            if policy.domain in policies:
                raise PolicyError(f"{source}: duplicate domain '{policy.domain}' in config file")
            policies[policy.domain] = policy
    return policies


def parse_policies(data: bytes, *, source: str, domains_max: int | None = None) -> list[DomainPolicy]:
    """Every domain of one file; the format comes from the name's suffix (YAML unless .toml/.json).

    With `domains_max`, a file holding more domains is refused before any of them is converted.
    """
    if len(data) > limits.GATEWAY_POLICY_BYTES_MAX:
        raise PolicyError(f"{source}: larger than {limits.GATEWAY_POLICY_BYTES_MAX} bytes")
    suffix = Path(source).suffix.lower()
    try:
        if suffix == ".toml":
            documents: list[Any] = [tomllib.loads(data.decode())]
        elif suffix == ".json":
            documents = [json.loads(data)]
        else:
            documents = [document for document in yaml.load_all(data, Loader=_PolicyLoader) if document is not None]
    except (yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PolicyError(f"{source}: error loading config file: {error}") from error
    except RecursionError as error:
        # The three parsers recurse once per nesting level: `[[[[...` a few thousand deep runs
        # out of stack before any bound of ours could look at it.
        raise PolicyError(f"{source}: error loading config file: {NESTED_TOO_DEEPLY}") from error
    raws = [raw for document in documents for raw in _domains_of(document, source)]
    if not raws:
        raise PolicyError(f"{source}: config file cannot have empty domain (it holds no domain)")
    if domains_max is not None and len(raws) > domains_max:
        raise PolicyError(f"{source}: holds {len(raws)} domains, at most {domains_max} here")
    # One budget for the whole file: `{domain: dN, descriptors: *tree}` repeated would otherwise
    # expand one aliased tree once per domain, each within its own bound.
    walk = _Walk(file_nodes_max=limits.GATEWAY_POLICY_FILE_NODES_MAX)
    return [_convert(raw, source=source, walk=walk) for raw in raws]


def policy_from_mapping(raw: Any, *, source: str) -> DomainPolicy:
    return _convert(raw, source=source, walk=_Walk(file_nodes_max=None))


def _convert(raw: Any, *, source: str, walk: _Walk) -> DomainPolicy:
    try:
        return msgspec.convert(_as_envoy_reads_it(raw, walk.starting_domain(raw)), DomainPolicy)
    except (msgspec.ValidationError, _Refused) as error:
        raise PolicyError(f"{source}: {error}") from error
    except RecursionError as error:
        # Not reached through descriptors (the walk stops at the deepest nesting allowed); kept so
        # that no other nested value can turn a bad policy into an uncaught error.
        raise PolicyError(f"{source}: {NESTED_TOO_DEEPLY}") from error


def _domains_of(document: Any, source: str) -> list[Any]:
    if isinstance(document, dict) and "domains" in document and "domain" not in document:
        domains = document["domains"]
        if set(document) != {"domains"} or not isinstance(domains, list):
            raise PolicyError(f"{source}: `domains` must be the only key, holding a list of domains")
        return domains
    if not isinstance(document, dict):
        raise PolicyError(f"{source}: a policy document is a mapping with `domain` (or `domains`)")
    if not document.get("domain"):
        raise PolicyError(f"{source}: config file cannot have empty domain")
    return [document]


_TEXT_FIELDS = frozenset({"domain", "key", "value", "name"})
_NULL_TAG = "tag:yaml.org,2002:null"


class _PolicyLoader(yaml.SafeLoader):
    """Reads the string fields of a policy as their source text, as envoyproxy/ratelimit does.

    Its Go YAML decoder keeps a scalar's text for a string field, so `value: 0x1F`, `00123`,
    `yes` or `1.10` are those very strings there. Constructed as YAML 1.1 types and printed
    back, they would become "31", "83", "true" and "1.1", and the rule would silently never
    match the value the gateway sends.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        mapping = super().construct_mapping(node, deep=deep)
        for key_node, value_node in node.value:
            if (
                isinstance(key_node, yaml.ScalarNode)
                and key_node.value in _TEXT_FIELDS
                and isinstance(value_node, yaml.ScalarNode)
                and value_node.tag != _NULL_TAG
            ):
                mapping[key_node.value] = value_node.value
        return mapping


class _Refused(ValueError):
    """A policy the walk stopped reading; _convert names its source."""


class _Walk:
    """How much of a policy _as_envoy_reads_it has visited: every descriptor counts each time it
    is reached, so a YAML alias used at N places counts N times.

    PyYAML shares an aliased node instead of copying it, so a kilobyte whose every level uses the
    level below twice (`&a` / `*a`, a "billion laughs") is 2**depth descriptors once expanded,
    and the expansion (this walk, then msgspec.convert) would hold the event loop for seconds
    to hours before DomainPolicy could count them. The walk counts before it descends and stops
    as soon as a bound is passed, so no policy costs more than one at the bound. Aliases
    themselves stay allowed: envoyproxy/ratelimit's YAML decoder reads them too.
    """

    __slots__ = ("domain", "domain_nodes", "file_nodes", "file_nodes_max")

    def __init__(self, *, file_nodes_max: int | None) -> None:
        self.file_nodes_max = file_nodes_max
        self.file_nodes = 0
        self.domain: object = None
        self.domain_nodes = 0

    def starting_domain(self, raw: Any) -> _Walk:
        self.domain = raw.get("domain") if isinstance(raw, dict) else None
        self.domain_nodes = 0
        return self

    def count(self, descriptors: int) -> None:
        self.domain_nodes += descriptors
        self.file_nodes += descriptors
        if self.domain_nodes > limits.GATEWAY_POLICY_NODES_MAX:
            raise _Refused(
                f"domain {self.domain!r} declares more than {limits.GATEWAY_POLICY_NODES_MAX} descriptors"
                f" (each use of a YAML alias counts; stopped counting at {self.domain_nodes})"
            )
        if self.file_nodes_max is not None and self.file_nodes > self.file_nodes_max:
            raise _Refused(
                f"more than {self.file_nodes_max} descriptors in all its domains"
                f" (each use of a YAML alias counts; stopped counting at {self.file_nodes})"
            )


def _as_envoy_reads_it(raw: Any, walk: _Walk, depth: int = 0) -> Any:
    """Keys and values are strings even where TOML or JSON gives `value = 42` as a number, and
    `descriptors:` left empty is no descriptors, as envoyproxy/ratelimit reads both.

    `depth` is that of `raw` (the domain is 0); its descriptors are at depth + 1, refused past
    DomainPolicy's deepest nesting here already, so a self-referencing alias (`&a [{descriptors:
    *a}]`) is refused as too deep instead of recursing without end.
    """
    if not isinstance(raw, dict):
        return raw
    converted = dict(raw)
    for field in ("key", "value"):
        if field in converted and isinstance(converted[field], bool | int | float):
            value = converted[field]
            converted[field] = str(value).lower() if isinstance(value, bool) else str(value)
    if "descriptors" in converted and converted["descriptors"] is None:
        converted["descriptors"] = []
    descriptors = converted.get("descriptors")
    if isinstance(descriptors, list) and descriptors:
        if depth >= limits.GATEWAY_ENTRIES_PER_DESCRIPTOR_MAX:
            entry_key, entry_value = converted.get("key"), converted.get("value")
            label = f"{entry_key}_{entry_value}" if entry_value else entry_key  # as DomainPolicy names it
            raise _Refused(
                f"descriptors under {label!r} nest deeper than {limits.GATEWAY_ENTRIES_PER_DESCRIPTOR_MAX} levels"
            )
        walk.count(len(descriptors))
        converted["descriptors"] = [_as_envoy_reads_it(item, walk, depth + 1) for item in descriptors]
    return converted
