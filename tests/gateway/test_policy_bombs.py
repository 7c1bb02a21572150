"""Policies built to exhaust the parser: deep nesting and YAML aliases that expand exponentially.

Both came back as a 500 or a stalled event loop: `[[[[...` a few thousand deep ran the
parsers out of stack (an uncaught RecursionError), and a kilobyte of YAML reusing each level
twice through `&a` / `*a` expanded to 2**depth descriptors before the node bound was checked.
Aliases themselves stay allowed, as envoyproxy/ratelimit reads them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import pytest

from lockgate_server import limits
from lockgate_server.gateway.loader import PolicyError, load_policy_files, parse_policies
from lockgate_server.gateway.matcher import CompiledDomain

from .conftest import StartServer
from .support import GatewayServer

NESTING = 5000
"""Far past the interpreter's recursion limit (1000), as the reviewer's bodies were."""
NESTED_BODIES = {
    "application/yaml": b"domain: d\ndescriptors: " + b"[" * NESTING,
    "application/toml": b"domain='d'\nx=" + b"[" * NESTING,
    "application/json": b"[" * NESTING,
}
NESTED_FILES = {".yaml": NESTED_BODIES["application/yaml"], ".toml": NESTED_BODIES["application/toml"]}
NESTED_FILES[".json"] = b'{"domain": "d", "descriptors": ' + b"[" * NESTING

BACKSTOP_S = 60
"""Only so that the old code (which expands the bombs) fails instead of running for hours; the
fixed code answers each of these in well under a second."""

POLICY = "domain: d\ndescriptors:\n  - key: remote_address\n    rate_limit: {unit: hour, requests_per_unit: 2}\n"


def alias_bomb(*, width: int, levels: int) -> bytes:
    """`levels` levels of `width` descriptors each, every one holding (an alias of) the level below:
    width + width**2 + ... + width**levels descriptors from a few hundred bytes per level."""
    text = "[" + ", ".join(f"{{key: k{j}}}" for j in range(width)) + "]"
    for level in range(levels - 1):
        first = f"{{key: k0, descriptors: &level{level} {text}}}"
        rest = ", ".join(f"{{key: k{j}, descriptors: *level{level}}}" for j in range(1, width))
        text = f"[{first}, {rest}]"
    return f"domain: d\ndescriptors: {text}\n".encode()


def descriptors_in(*, width: int, levels: int) -> int:
    return sum(width**level for level in range(1, levels + 1))


def stopped_counting_at(message: str) -> int:
    found = re.search(r"stopped counting at (\d+)", message)
    assert found is not None, message
    return int(found.group(1))


# --- the loader, as files are read at start -------------------------------------------------


@pytest.mark.parametrize("suffix", sorted(NESTED_FILES))
def test_a_nested_policy_file_is_a_policy_error_naming_it(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"policy{suffix}"
    path.write_bytes(NESTED_FILES[suffix])
    with pytest.raises(PolicyError, match=rf"policy\{suffix}: error loading config file: nested too deeply"):
        load_policy_files([path])


def test_a_nested_policy_file_stops_the_server_naming_it(start_server: StartServer) -> None:
    with pytest.raises(RuntimeError, match=r"policy\.json: error loading config file: nested too deeply"):
        start_server({"policy.json": NESTED_FILES[".json"].decode()})


@pytest.mark.timeout(BACKSTOP_S)
@pytest.mark.parametrize("width", [2, 8])
def test_an_alias_bomb_is_refused_once_the_count_passes_the_bound(width: int) -> None:
    # Within the deepest nesting allowed, so only the node count can stop it: 131,070
    # descriptors at width 2 (the old code expanded them all, then refused), 3.2e14 at width 8.
    assert descriptors_in(width=width, levels=limits.GATEWAY_ENTRIES_PER_DESCRIPTOR_MAX) > (
        limits.GATEWAY_POLICY_NODES_MAX
    )
    bomb = alias_bomb(width=width, levels=limits.GATEWAY_ENTRIES_PER_DESCRIPTOR_MAX)
    assert len(bomb) < 8192
    with pytest.raises(PolicyError, match=rf"more than {limits.GATEWAY_POLICY_NODES_MAX} descriptors") as refused:
        parse_policies(bomb, source="bomb.yaml")
    # It stopped at the bound: one level's list past it at most, never the expansion.
    visited = stopped_counting_at(str(refused.value))
    assert limits.GATEWAY_POLICY_NODES_MAX < visited <= limits.GATEWAY_POLICY_NODES_MAX + width


@pytest.mark.timeout(BACKSTOP_S)
@pytest.mark.parametrize("levels", [19, 40])
def test_a_deeper_alias_bomb_is_refused_as_too_deep_before_expanding(levels: int) -> None:
    # The reviewer's shape: 2**20 descriptors at 19 levels took the old code 4.7 s; 2**41 at 40
    # could never finish.
    with pytest.raises(PolicyError, match=r"bomb\.yaml: descriptors under 'k0' nest deeper than 16 levels"):
        parse_policies(alias_bomb(width=2, levels=levels), source="bomb.yaml")


def test_a_self_referencing_alias_is_refused_as_too_deep() -> None:
    # PyYAML builds `&a [{descriptors: *a}]` as a list that holds itself: endless recursion before.
    text = b"domain: d\ndescriptors: &a [{key: k, descriptors: *a}]\n"
    with pytest.raises(PolicyError, match=r"self\.yaml: descriptors under 'k' nest deeper than 16 levels"):
        parse_policies(text, source="self.yaml")


def test_a_tree_reused_in_many_domains_is_refused_by_the_file_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each domain stays within its own bound; one aliased tree in every domain would otherwise
    # be expanded once per domain. A smaller file bound keeps the test quick.
    monkeypatch.setattr(limits, "GATEWAY_POLICY_FILE_NODES_MAX", 1_000)
    tree = "[{key: a, descriptors: [{key: b}, {key: c}]}, {key: d}]"  # 4 descriptors
    domains = [f"  - {{domain: d0, descriptors: &tree {tree}}}"]
    domains += [f"  - {{domain: d{index}, descriptors: *tree}}" for index in range(1, 300)]
    text = "domains:\n" + "\n".join(domains) + "\n"
    with pytest.raises(PolicyError, match=r"many\.yaml: more than 1000 descriptors in all its domains") as refused:
        parse_policies(text.encode(), source="many.yaml")
    assert stopped_counting_at(str(refused.value)) <= 1_000 + 2
    monkeypatch.undo()
    assert len(parse_policies(text.encode(), source="many.yaml")) == 300  # 1,200 in all: within the real bound


def test_anchors_and_aliases_load_as_their_expanded_form() -> None:
    # envoyproxy/ratelimit configs may share a subtree this way; it must keep loading unchanged.
    with_alias = b"""
domain: shared
descriptors:
  - key: tenant
    value: gold
    descriptors: &per_path
      - key: path
        value: /login
        rate_limit: {unit: minute, requests_per_unit: 5}
      - key: path
        rate_limit: {unit: second, requests_per_unit: 50}
  - key: tenant
    value: silver
    descriptors: *per_path
"""
    expanded = b"""
domain: shared
descriptors:
  - key: tenant
    value: gold
    descriptors:
      - key: path
        value: /login
        rate_limit: {unit: minute, requests_per_unit: 5}
      - key: path
        rate_limit: {unit: second, requests_per_unit: 50}
  - key: tenant
    value: silver
    descriptors:
      - key: path
        value: /login
        rate_limit: {unit: minute, requests_per_unit: 5}
      - key: path
        rate_limit: {unit: second, requests_per_unit: 50}
"""
    (aliased,) = parse_policies(with_alias, source="alias.yaml")
    (plain,) = parse_policies(expanded, source="plain.yaml")
    assert msgspec.to_builtins(aliased) == msgspec.to_builtins(plain)
    for tenant in ("gold", "silver"):
        for path in ("/login", "/other"):
            entries = (("tenant", tenant), ("path", path))
            matched, reference = CompiledDomain(aliased).match(entries), CompiledDomain(plain).match(entries)
            assert matched is not None and reference is not None
            assert matched.limit is not None and reference.limit is not None
            assert (matched.limit.requests, matched.limit.window_ms) == (
                reference.limit.requests,
                reference.limit.window_ms,
            )


# --- the admin API of a running server ------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    folder = tmp_path_factory.mktemp("gateway-bombs")
    (folder / "policy.yaml").write_text(POLICY)
    instance = GatewayServer(folder / "data", {"LOCKGATE_POLICY_FILES": str(folder / "policy.yaml")}).start()
    yield instance
    instance.stop()


@pytest.mark.parametrize("media_type", sorted(NESTED_BODIES))
def test_a_nested_admin_body_is_a_422_and_changes_nothing(client: httpx.Client, media_type: str) -> None:
    before = client.get("/v1/admin/policies/d").json()
    answer = client.put("/v1/admin/policies/d", content=NESTED_BODIES[media_type], headers={"content-type": media_type})
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert "nested too deeply" in answer.json()["detail"]
    assert client.get("/v1/admin/policies/d").json() == before


@pytest.mark.timeout(BACKSTOP_S)
def test_an_alias_bomb_admin_body_is_a_422_and_changes_nothing(client: httpx.Client) -> None:
    before = client.get("/v1/admin/policies/d").json()
    bomb = alias_bomb(width=8, levels=limits.GATEWAY_ENTRIES_PER_DESCRIPTOR_MAX)
    answer = client.put("/v1/admin/policies/d", content=bomb, headers={"content-type": "application/yaml"})
    assert answer.status_code == 422, answer.text
    assert stopped_counting_at(answer.json()["detail"]) <= limits.GATEWAY_POLICY_NODES_MAX + 8
    assert client.get("/v1/admin/policies/d").json() == before


@pytest.mark.timeout(BACKSTOP_S)
def test_an_admin_body_of_many_aliased_domains_is_refused_before_converting_them(client: httpx.Client) -> None:
    # One 65,534-descriptor domain (within every bound) used 2,000 times: the old code converted
    # them all before refusing the body for holding more than one domain.
    tree = alias_bomb(width=2, levels=15).decode().removeprefix("domain: d\ndescriptors: ").strip()
    text = f"domains:\n  - &d {{domain: d, descriptors: {tree}}}\n" + "  - *d\n" * 1_999
    before = client.get("/v1/admin/policies/d").json()
    answer = client.put("/v1/admin/policies/d", content=text.encode(), headers={"content-type": "application/yaml"})
    assert answer.status_code == 422, answer.text
    assert "holds 2000 domains, at most 1" in answer.json()["detail"]
    assert client.get("/v1/admin/policies/d").json() == before


def test_an_admin_body_with_an_anchor_and_alias_still_loads(client: httpx.Client) -> None:
    body = b"""
domain: shared
descriptors:
  - key: tenant
    value: gold
    descriptors: &per_path [{key: path, rate_limit: {unit: minute, requests_per_unit: 5}}]
  - key: tenant
    value: silver
    descriptors: *per_path
"""
    answer = client.put("/v1/admin/policies/shared", content=body, headers={"content-type": "application/yaml"})
    assert answer.status_code == 200, answer.text
    per_path = [{"key": "path", "rate_limit": {"requests_per_unit": 5, "unit": "minute"}}]
    assert answer.json()["policy"]["descriptors"] == [
        {"key": "tenant", "value": "gold", "descriptors": per_path},
        {"key": "tenant", "value": "silver", "descriptors": per_path},
    ]
    assert client.delete("/v1/admin/policies/shared").status_code == 200
