"""A client cannot choose the key it is counted under by adding headers the gateway passes on.

Traefik sets X-Forwarded-* and passes the client's X-Original-* on; nginx sets X-Original-*
and passes the client's X-Forwarded-* on; either passes every copy of a repeated header. When
the headers a check reads disagree, the check is refused with the domain's deny_status and
nothing is charged; a repeated X-Forwarded-For is one list.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import StartServer
from .support import GatewayServer
from .test_nginx import nginx, seen_upstream

__all__ = ["nginx"]  # the fixture: a real nginx with the documented recipe in front of a server

POLICY = """
domain: origin
descriptors:
  - key: path
    value: /expensive/*
    rate_limit: {unit: day, requests_per_unit: 1}
  - key: method
    value: DELETE
    rate_limit: {unit: day, requests_per_unit: 1}
  - key: key
    rate_limit: {unit: day, requests_per_unit: 1}
  - key: tenant
    rate_limit: {unit: day, requests_per_unit: 1}
http:
  hits_addend_header: X-Lockgate-Hits-Addend
  descriptors:
    - entries: [{key: path, source: path}]
    - entries: [{key: method, source: method}]
    - entries: [{key: key, source: api_key}]
    - entries: [{key: tenant, source: header, header: X-Tenant}]
"""

Headers = list[tuple[str, str]]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    folder = tmp_path_factory.mktemp("gateway-origin")
    (folder / "policy.yaml").write_text(POLICY)
    env = {"LOCKGATE_POLICY_FILES": str(folder / "policy.yaml"), "LOCKGATE_GRPC_PORT": "0"}
    instance = GatewayServer(folder / "data", env).start()
    yield instance
    instance.stop()


def check(client: httpx.Client, headers: Headers) -> httpx.Response:
    return client.get("/check/origin", headers=headers)


def assert_refused(answer: httpx.Response, naming: str) -> None:
    """The domain's denial (429 here), without rate-limit headers: nothing was decided."""
    assert answer.status_code == 429, answer.text
    assert answer.text.startswith("refused, the original request is ambiguous: ")
    assert naming in answer.text
    assert "X-RateLimit-Remaining" not in answer.headers


def test_behind_traefik_a_client_sent_x_original_uri_is_refused_not_counted(client: httpx.Client) -> None:
    # What Traefik sends: its own X-Forwarded-* (Host is Lockgate's address, X-Forwarded-Host
    # the original one: they always differ, and that is no ambiguity).
    traefik = [("X-Forwarded-Uri", "/expensive/t1"), ("X-Forwarded-Method", "GET"), ("X-Forwarded-Host", "a.test")]
    for dodge in ("/cheap", "/expensive/other"):
        assert_refused(check(client, [*traefik, ("X-Original-URI", dodge)]), "X-Original-URI and X-Forwarded-Uri")
    assert check(client, traefik).status_code == 200  # the refusals charged nothing
    # The same path with other queries is no disagreement: counted, and over the limit.
    same_path = [("X-Forwarded-Uri", "/expensive/t1?b=2"), ("X-Original-URI", "/expensive/t1?a=1")]
    over = check(client, same_path)
    assert over.status_code == 429 and over.text == "rate limited\n"
    counted = re.search(
        r'lockgate_gateway_decisions_total\{domain="origin",outcome="ambiguous"\} (\S+)', client.get("/metrics").text
    )
    assert counted is not None and float(counted[1]) >= 2  # the other tests of this module may add theirs


def test_a_client_sent_method_header_beside_the_gateways_is_refused(client: httpx.Client) -> None:
    delete = [("X-Forwarded-Uri", "/t2"), ("X-Forwarded-Method", "DELETE")]
    assert_refused(check(client, [*delete, ("X-Original-Method", "GET")]), "X-Original-Method and X-Forwarded-Method")
    assert check(client, delete).status_code == 200
    assert check(client, delete).status_code == 429


@pytest.mark.parametrize(("header", "value"), [("X-API-Key", "k3"), ("X-Tenant", "t3")])
def test_differing_copies_of_a_header_a_source_reads_are_refused(client: httpx.Client, header: str, value: str) -> None:
    # A backend reads the first copy; varying a second one must not make fresh keys.
    for junk in ("junk1", "junk2"):
        assert_refused(check(client, [(header, value), (header, junk)]), header.lower())
    # Identical copies are one value: counted as it, once.
    assert check(client, [(header, value), (header, value)]).status_code == 200
    assert check(client, [(header, value)]).status_code == 429


def test_differing_copies_of_the_hits_addend_header_are_invalid(client: httpx.Client) -> None:
    key = [("X-API-Key", "k4")]
    answer = check(client, [*key, ("X-Lockgate-Hits-Addend", "1"), ("X-Lockgate-Hits-Addend", "0")])
    assert answer.status_code == 422 and answer.headers["content-type"] == "application/problem+json"
    assert check(client, key).status_code == 200  # nothing was charged, nor peeked as free


def test_behind_nginx_a_client_sent_x_forwarded_uri_is_refused_and_never_reaches_the_upstream(
    nginx: tuple[str, Path],
) -> None:
    # nginx sets X-Original-URI itself and passes the client's X-Forwarded-Uri on. The refusal is
    # the domain's deny_status (403), which the recipe's error_page turns into 429.
    url, upstream_log = nginx
    with httpx.Client(base_url=url, timeout=10) as client:
        refused = client.get("/expensive/report", headers={"X-Forwarded-Uri": "/somewhere-else"})
        assert refused.status_code == 429 and refused.text == "rate limited\n"
        assert client.get("/expensive/report").status_code == 200
        assert client.get("/expensive/report", headers={"X-Forwarded-Uri": "/expensive/report"}).status_code == 429
    assert seen_upstream(upstream_log) == ["/expensive/report"]


def test_repeated_x_forwarded_for_lines_are_one_list(start_server: StartServer) -> None:
    policy = "domain: ip\ndescriptors:\n  - key: remote_address\n    rate_limit: {unit: day, requests_per_unit: 1}\n"
    server = start_server({"ip.yaml": policy}, env={"LOCKGATE_FORWARDED_FOR_TRUSTED_HOPS": "1"})
    with httpx.Client(base_url=server.url, timeout=10) as http:

        def check_from(*lines: str) -> int:
            return http.get("/check/ip", headers=[("X-Forwarded-For", line) for line in lines]).status_code

        # The client's line, then the trusted balancer's own line: the client is one hop left of it.
        assert check_from("203.0.113.70", "10.0.0.2") == 200
        assert check_from("203.0.113.71", "10.0.0.2") == 200
        assert check_from("203.0.113.70, 10.0.0.2") == 429
