"""Policy files: envoyproxy/ratelimit's own files load unchanged and match as it documents.

Expectations follow envoyproxy/ratelimit's documentation and its own tests for these very
files: most specific first (key+value, then a trailing-'*' wildcard, then the key alone),
a limit only where the descriptor's last entry lands, a descriptor without rate_limit as a
whitelist, `unlimited`, `shadow_mode`, and one state per actual value.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lockgate_server.gateway.loader import PolicyError, load_policy_files, parse_policies, policy_from_mapping
from lockgate_server.gateway.matcher import CompiledDomain, Limit

from .support import FIXTURES, SHARED_FIXTURES

FIXTURE_FILES = ("basic_config.yaml", "example.yaml", "wildcard.yaml")


def domain_of(file_name: str, **extensions: object) -> CompiledDomain:
    policies = load_policy_files([FIXTURES / file_name])
    assert len(policies) == 1
    (policy,) = policies.values()
    if extensions:
        policy = policy_from_mapping({**_as_mapping(policy), **extensions}, source=file_name)
    return CompiledDomain(policy)


def _as_mapping(policy: object) -> dict[str, object]:
    import msgspec

    mapping: dict[str, object] = msgspec.to_builtins(policy)
    return mapping


def limit_for(domain: CompiledDomain, *entries: tuple[str, str]) -> Limit | None:
    node = domain.match(entries)
    return None if node is None else node.limit


def rate(limit: Limit | None) -> tuple[int, int] | None:
    return None if limit is None else (limit.requests, limit.window_ms)


SECOND, MINUTE, HOUR, DAY = 1000, 60_000, 3_600_000, 86_400_000


@pytest.mark.skipif(not SHARED_FIXTURES.is_dir(), reason=f"no shared fixtures at {SHARED_FIXTURES}")
@pytest.mark.parametrize("file_name", FIXTURE_FILES)
def test_the_fixture_copies_are_the_shared_files_unchanged(file_name: str) -> None:
    assert (FIXTURES / file_name).read_bytes() == (SHARED_FIXTURES / file_name).read_bytes()


def test_basic_config_matches_most_specific_first() -> None:
    domain = domain_of("basic_config.yaml")
    assert domain.name == "test-domain"
    # A node without a rate_limit supplies none, and an unknown value with no key-only sibling matches nothing.
    assert limit_for(domain, ("key1", "value1")) is None
    assert limit_for(domain, ("key1", "something")) is None
    # Second level: the key-only default, and the key+value override beside it.
    assert rate(limit_for(domain, ("key1", "value1"), ("subkey1", "something"))) == (5, SECOND)
    assert rate(limit_for(domain, ("key1", "value1"), ("subkey1", "subvalue1"))) == (10, SECOND)
    # Top level: key+value before key only; a key+value without a limit is whitelisted.
    assert rate(limit_for(domain, ("key2", "something"))) == (20, MINUTE)
    assert rate(limit_for(domain, ("key2", "value2"))) == (30, MINUTE)
    assert limit_for(domain, ("key2", "value3")) is None
    assert rate(limit_for(domain, ("key3", "foo"))) == (1, HOUR)
    assert rate(limit_for(domain, ("key4", "foo"))) == (1, DAY)
    # Nested limits apply only where the descriptor ends.
    assert rate(limit_for(domain, ("key5", "value5"))) == (15, DAY)
    assert rate(limit_for(domain, ("key5", "value5"), ("subkey5", "subvalue5"))) == (25, DAY)
    assert limit_for(domain, ("key5", "value5"), ("subkey5", "subvalue")) is None
    # A descriptor deeper than the policy matches nothing, even below a limited node.
    assert limit_for(domain, ("key2", "value2"), ("subkey", "subvalue")) is None
    assert limit_for(domain, ("nokey", "x")) is None


def test_basic_config_keeps_one_state_per_actual_value() -> None:
    domain = domain_of("basic_config.yaml")
    node_a = domain.match([("key2", "a")])
    node_b = domain.match([("key2", "b")])
    node_specific = domain.match([("key2", "value2")])
    assert node_a is node_b is not None and node_specific is not None
    keys = {
        domain.state_key(node_a, [("key2", "a")]),
        domain.state_key(node_b, [("key2", "b")]),
        domain.state_key(node_specific, [("key2", "value2")]),
    }
    assert len(keys) == 3
    assert all(key.startswith("test-domain") for key in keys)


def test_example_config_nested_unlimited_shadow_and_zero() -> None:
    domain = domain_of("example.yaml")
    assert domain.name == "rl"
    assert rate(limit_for(domain, ("source_cluster", "proxy"), ("destination_cluster", "mock"))) == (1, MINUTE)
    assert limit_for(domain, ("source_cluster", "proxy")) is None
    assert limit_for(domain, ("source_cluster", "other"), ("destination_cluster", "mock")) is None
    assert rate(limit_for(domain, ("foo", "anything"))) == (2, MINUTE)
    assert rate(limit_for(domain, ("foo", "x"), ("bar", "y"))) == (3, MINUTE)
    banned = limit_for(domain, ("foo", "x"), ("bar", "banned"))
    assert rate(banned) == (0, MINUTE)
    assert rate(limit_for(domain, ("foo", "x"), ("baz", "y"))) == (1, SECOND)
    shady = limit_for(domain, ("foo", "x"), ("baz", "shady"))
    assert shady is not None and shady.shadow and rate(shady) == (1, MINUTE)
    bay = limit_for(domain, ("foo", "x"), ("bay", "z"))
    assert bay is not None and bay.unlimited
    qux = limit_for(domain, ("qux", "whatever"))
    assert qux is not None and qux.unlimited and not qux.shadow
    # Fixed windows, as envoyproxy/ratelimit counts, unless a policy says otherwise.
    assert {limit.algorithm for limit in (banned, shady)} == {"fixed_window"}


def test_wildcard_config_trailing_star_only() -> None:
    domain = domain_of("wildcard.yaml")
    # Key only works like a wildcard on the value: every value matches, each with its own state.
    no_value = limit_for(domain, ("noVal", "foo1"))
    assert no_value is not None and no_value is limit_for(domain, ("noVal", "foo2"))
    wild_1 = domain.match([("wild", "foo1")])
    wild_2 = domain.match([("wild", "foo2")])
    assert wild_1 is not None and wild_1 is wild_2 and rate(wild_1.limit) == (20, MINUTE)
    assert domain.state_key(wild_1, [("wild", "foo1")]) != domain.state_key(wild_1, [("wild", "foo2")])
    assert limit_for(domain, ("wild", "bar")) is None
    # A value without '*' never matches eagerly.
    assert limit_for(domain, ("noWild", "foo1")) is None
    assert rate(limit_for(domain, ("noWild", "foo"))) == (20, MINUTE)
    # envoyproxy/ratelimit does not support a '*' inside a value: it is a literal character.
    assert limit_for(domain, ("midWild", "barab")) is None
    assert rate(limit_for(domain, ("midWild", "bar*b"))) == (20, MINUTE)


def test_wildcards_anywhere_is_an_opt_in_extension() -> None:
    domain = domain_of("wildcard.yaml", wildcards="anywhere")
    assert rate(limit_for(domain, ("midWild", "barab"))) == (20, MINUTE)
    assert rate(limit_for(domain, ("midWild", "bar-anything-b"))) == (20, MINUTE)
    assert limit_for(domain, ("midWild", "barab!")) is None
    assert rate(limit_for(domain, ("wild", "foo-x"))) == (20, MINUTE)


def test_two_files_with_one_domain_are_refused_like_envoyproxy_ratelimit() -> None:
    with pytest.raises(PolicyError, match="duplicate domain 'test-domain'"):
        load_policy_files([FIXTURES / "basic_config.yaml", FIXTURES / "wildcard.yaml"])
    both = load_policy_files([FIXTURES / "basic_config.yaml", FIXTURES / "example.yaml"])
    assert set(both) == {"test-domain", "rl"}


def test_an_empty_domain_is_refused() -> None:
    with pytest.raises(PolicyError, match="cannot have empty domain"):
        parse_policies(b"domain: ''\n", source="policy.yaml")


@pytest.mark.parametrize(
    "text",
    [
        'domain: "d\\n"\ndescriptors: [{key: a}]\n',
        'domain: d\ndescriptors: [{key: "a\\n"}]\n',
        'domain: d\ndescriptors: [{key: a, value: "b\\n"}]\n',
    ],
)
def test_a_final_newline_in_a_domain_key_or_value_is_refused(text: str) -> None:
    """Python's `$` matches before a final newline: such names and entries used to load."""
    with pytest.raises(PolicyError, match=r"must match|Expected `str` matching"):
        parse_policies(text.encode(), source="policy.yaml")


@pytest.mark.parametrize(
    ("descriptors", "message"),
    [
        ("- key: a\n  ratelimit: {unit: second}", "unknown field `ratelimit`"),
        ("- key: a\n  rate_limit: {unit: foo, requests_per_unit: 1}", "invalid rate limit unit 'foo'"),
        ("- key: a\n  rate_limit: {unit: second, unlimited: true}", "unlimited"),
        ("- {key: a, value: b}\n- {key: a, value: b}", "duplicate descriptor composite key 'd.a_b'"),
        ("- key: a\n  rate_limit: {requests_per_unit: 1}", "exactly one of unit and period_ms"),
        ("[", "error loading config file"),
    ],
)
def test_bad_files_are_refused_naming_the_file(descriptors: str, message: str) -> None:
    text = "domain: d\ndescriptors:\n" + "\n".join("  " + line for line in descriptors.splitlines()) + "\n"
    with pytest.raises(PolicyError, match=r"^policy\.yaml: ") as refused:
        parse_policies(text.encode(), source="policy.yaml")
    assert message in str(refused.value)


def test_our_own_format_in_toml_with_the_extensions(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(
        """
[[domains]]
domain = "api"
algorithm = "gcra"
failure_mode = "allow"
failure_timeout_ms = 50
deny_status = 403

[[domains.descriptors]]
key = "remote_address"
rate_limit = { requests_per_unit = 7, period_ms = 10000, burst = 3 }

[[domains.descriptors]]
key = "path"
value = "/login"
rate_limit = { requests_per_unit = 5, unit = "MINUTE", algorithm = "sliding_window" }

[[domains.http.descriptors]]
entries = [{ key = "remote_address", source = "client_ip" }, { key = "method", source = "method" }]

[[domains]]
domain = "other"
"""
    )
    policies = load_policy_files([path])
    assert set(policies) == {"api", "other"}
    api = CompiledDomain(policies["api"])
    per_ip = limit_for(api, ("remote_address", "10.0.0.1"))
    assert per_ip is not None
    assert (per_ip.requests, per_ip.window_ms, per_ip.burst) == (7, 10_000, 3)
    assert (per_ip.algorithm, per_ip.unit) == ("gcra", None)
    login = limit_for(api, ("path", "/login"))
    assert login is not None and (login.algorithm, login.unit, login.window_ms) == ("sliding_window", "minute", MINUTE)
    assert (api.policy.failure_mode, api.policy.failure_timeout_ms, api.policy.deny_status) == ("allow", 50, 403)
    assert [[(entry.key, entry.source) for entry in d.entries] for d in api.http.descriptors] == [
        [("remote_address", "client_ip"), ("method", "method")]
    ]


def test_yaml_numbers_as_values_are_strings() -> None:
    text = b"domain: d\ndescriptors:\n  - {key: port, value: 8080, rate_limit: {unit: second, requests_per_unit: 1}}\n"
    (policy,) = parse_policies(text, source="p.yaml")
    assert rate(limit_for(CompiledDomain(policy), ("port", "8080"))) == (1, SECOND)


@pytest.mark.parametrize("text", ["0x1F", "00123", "yes", "1.10", "12:30"])
def test_yaml_values_are_their_source_text_as_envoyproxy_ratelimit_reads_them(text: str) -> None:
    # Go's YAML decoder fills a string field with the scalar's text; YAML 1.1 typing would
    # read these as 31, 83, true, 1.1 and 750, so the rule would never match.
    document = f"domain: d\ndescriptors:\n  - key: k\n    value: {text}\n"
    document += "    rate_limit: {unit: second, requests_per_unit: 3}"
    (policy,) = parse_policies(document.encode(), source="p.yaml")
    assert rate(limit_for(CompiledDomain(policy), ("k", text))) == (3, SECOND)


def test_an_empty_descriptors_list_and_upstreams_metric_flags_load() -> None:
    (empty,) = parse_policies(b"domain: nothing\ndescriptors:\n", source="p.yaml")
    assert empty.descriptors == []
    text = (
        b"domain: d\ndescriptors:\n  - key: path\n    value: /api*\n    value_to_metric: true\n"
        b"    detailed_metric: true\n    rate_limit: {unit: minute, requests_per_unit: 2}\n"
    )
    (policy,) = parse_policies(text, source="p.yaml")
    assert rate(limit_for(CompiledDomain(policy), ("path", "/api/v1"))) == (2, MINUTE)


def test_requests_per_unit_takes_upstreams_whole_uint32_range() -> None:
    text = b"domain: d\ndescriptors:\n  - {key: k, rate_limit: {unit: second, requests_per_unit: 4294967295}}\n"
    (policy,) = parse_policies(text, source="p.yaml")
    assert rate(limit_for(CompiledDomain(policy), ("k", "any"))) == (4_294_967_295, SECOND)
    with pytest.raises(PolicyError):
        parse_policies(text.replace(b"4294967295", b"4294967296"), source="p.yaml")


def test_share_threshold_makes_a_wildcards_matches_share_one_counter() -> None:
    text = b"""domain: d
descriptors:
  - key: path
    value: /api/*
    share_threshold: true
    rate_limit: {unit: minute, requests_per_unit: 5}
  - key: path
    value: /img/*
    rate_limit: {unit: minute, requests_per_unit: 5}
  - key: user
    descriptors:
      - key: path
        value: /x/*
        share_threshold: true
        rate_limit: {unit: minute, requests_per_unit: 5}
"""
    (policy,) = parse_policies(text, source="p.yaml")
    domain = CompiledDomain(policy)

    def key(*entries: tuple[str, str]) -> str:
        node = domain.match(entries)
        assert node is not None
        return domain.state_key(node, entries)

    assert key(("path", "/api/a")) == key(("path", "/api/b"))
    assert key(("path", "/img/a")) != key(("path", "/img/b"))  # without it, one counter per value
    # Only the shared entry is replaced: each user still has their own counter.
    assert key(("user", "u1"), ("path", "/x/a")) == key(("user", "u1"), ("path", "/x/b"))
    assert key(("user", "u1"), ("path", "/x/a")) != key(("user", "u2"), ("path", "/x/a"))
