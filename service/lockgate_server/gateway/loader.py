"""Policy files: YAML (envoyproxy/ratelimit's files as they are), TOML or JSON.

A document holds one domain (`domain: ...` at its top, envoyproxy/ratelimit's layout) or
several (`domains: [...]`); a YAML file may hold several documents. A file that does not
parse or validate is refused as a whole, naming the file, like envoyproxy/ratelimit does.
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
            documents = [document for document in yaml.safe_load_all(data) if document is not None]
    except (yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PolicyError(f"{source}: error loading config file: {error}") from error
    policies = []
    for document in documents:
        for raw in _domains_of(document, source):
            policies.append(policy_from_mapping(raw, source=source))
    return policies


def policy_from_mapping(raw: Any, *, source: str) -> DomainPolicy:
    try:
        return msgspec.convert(_scalars_as_strings(raw), DomainPolicy)
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


def _scalars_as_strings(raw: Any) -> Any:
    """Descriptor keys and values are strings even when YAML reads `value: 42` as a number."""
    if not isinstance(raw, dict):
        return raw
    converted = dict(raw)
    for field in ("key", "value"):
        if field in converted and isinstance(converted[field], bool | int | float):
            value = converted[field]
            converted[field] = str(value).lower() if isinstance(value, bool) else str(value)
    if isinstance(converted.get("descriptors"), list):
        converted["descriptors"] = [_scalars_as_strings(item) for item in converted["descriptors"]]
    return converted
