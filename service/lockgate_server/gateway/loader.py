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
from typing import Any

import msgspec
import yaml

from .. import limits
from .policy import DomainPolicy


class PolicyError(ValueError):
    """A policy that cannot be loaded; the message names its source."""


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


def parse_policies(data: bytes, *, source: str) -> list[DomainPolicy]:
    """Every domain of one file; the format comes from the name's suffix (YAML unless .toml/.json)."""
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
    policies = []
    for document in documents:
        for raw in _domains_of(document, source):
            policies.append(policy_from_mapping(raw, source=source))
    if not policies:
        raise PolicyError(f"{source}: config file cannot have empty domain (it holds no domain)")
    return policies


def policy_from_mapping(raw: Any, *, source: str) -> DomainPolicy:
    try:
        return msgspec.convert(_as_envoy_reads_it(raw), DomainPolicy)
    except msgspec.ValidationError as error:
        raise PolicyError(f"{source}: {error}") from error


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


def _as_envoy_reads_it(raw: Any) -> Any:
    """Keys and values are strings even where TOML or JSON gives `value = 42` as a number, and
    `descriptors:` left empty is no descriptors, as envoyproxy/ratelimit reads both."""
    if not isinstance(raw, dict):
        return raw
    converted = dict(raw)
    for field in ("key", "value"):
        if field in converted and isinstance(converted[field], bool | int | float):
            value = converted[field]
            converted[field] = str(value).lower() if isinstance(value, bool) else str(value)
    if "descriptors" in converted and converted["descriptors"] is None:
        converted["descriptors"] = []
    if isinstance(converted.get("descriptors"), list):
        converted["descriptors"] = [_as_envoy_reads_it(item) for item in converted["descriptors"]]
    return converted
