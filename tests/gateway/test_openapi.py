"""/openapi.json covers every route the app serves, is valid OpenAPI 3.1, and the gateway's
answers conform to it: the check endpoint, /json and the admin API, fuzzed by schemathesis
against a real server with policies and API keys (as tests/http fuzzes /v1: tests/schema_fuzz.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jsonschema_rs
import pytest
import schemathesis
from hypothesis import given
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from lockgate_server.api.app import LockgateApp
from lockgate_server.api.operations import ROUTES
from lockgate_server.gateway.admin import ADMIN_PATH, ADMIN_ROUTES
from lockgate_server.gateway.http_check import CHECK_CONTENT_TYPE, CHECK_PATH, DOMAIN_HEADER, JSON_METHOD, JSON_PATH
from lockgate_server.gateway.service import Gateway
from lockgate_server.settings import Settings
from schema_fuzz import FUZZ_SETTINGS

from .support import GatewayServer, api_keys

OPENAPI_METHODS = {"GET", "PUT", "POST", "DELETE", "OPTIONS", "HEAD", "PATCH", "TRACE"}
"""The methods an OpenAPI path item can hold; the check answers any of them."""
CHECK_PATHS = (CHECK_PATH, CHECK_PATH + "/{domain}", CHECK_PATH + "/{domain}/{path}")
"""/check with X-Lockgate-Domain, /check/{domain}, and /check/{domain}/{the original path} (Envoy ext_authz)."""

POLICY = """
domain: api
descriptors:
  - key: remote_address
    rate_limit: {unit: second, requests_per_unit: 5}
  - key: path
    value: /login
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: path
    value: /v2/login
    rate_limit: {unit: minute, requests_per_unit: 1}
http:
  descriptors:
    - entries: [{key: remote_address, source: client_ip}]
    - entries: [{key: path, source: path}]
---
domain: strict
deny_status: 403
descriptors:
  - key: remote_address
    rate_limit: {unit: day, requests_per_unit: 1}
---
domain: closed
deny_status: 503
descriptors:
  - key: remote_address
    rate_limit: {unit: day, requests_per_unit: 0}
"""
DOMAINS = ["api", "strict", "closed"]
GATEWAY = {"X-Lockgate-Key": "gateway-writer"}  # the check reads only this one
OPERATOR = {"Authorization": "Bearer operator"}  # /json and the admin API read Authorization or X-API-Key


def gateway_routes() -> set[tuple[str, str]]:
    """(method, path) of the gateway's routes: the admin table, /json, and the check's paths for any method."""
    routes = {(route.method, route.path) for route in ADMIN_ROUTES} | {(JSON_METHOD, JSON_PATH)}
    return routes | {(method, path) for path in CHECK_PATHS for method in OPENAPI_METHODS}


def served_routes() -> set[tuple[str, str]]:
    """(method, path) of every route, from what serves it: Litestar's handlers, the /v1 table, the gateway."""
    app = LockgateApp(Settings())
    served = {
        (method, route.path)
        for route in app.litestar.routes
        for handler in route.route_handlers
        if handler.fn.__module__.startswith("lockgate_server")  # not the OPTIONS handler Litestar adds itself
        for method in handler.http_methods
    }
    served |= {(route.method, route.path) for route in ROUTES} | {("POST", "/v1/batch")}  # batch: dispatch.py
    return served | gateway_routes()


def documented_routes(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method.upper() in OPENAPI_METHODS
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    folder = tmp_path_factory.mktemp("gateway-openapi")
    (folder / "policy.yaml").write_text(POLICY)
    env = {"LOCKGATE_POLICY_FILES": str(folder / "policy.yaml"), "LOCKGATE_API_KEYS": api_keys()}
    instance = GatewayServer(folder / "data", {**env, "LOCKGATE_GRPC_PORT": "0"}).start()
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def document(server: GatewayServer) -> dict[str, Any]:
    answer = httpx.get(f"{server.url}/openapi.json", timeout=10)
    answer.raise_for_status()
    body: dict[str, Any] = answer.json()
    return body


@pytest.fixture(scope="module")
def api_schema(document: dict[str, Any]) -> Any:
    return schemathesis.openapi.from_dict(document)


def test_every_served_route_and_no_other_is_documented(document: dict[str, Any]) -> None:
    served = served_routes()
    assert documented_routes(document) == served
    # And each documented path reaches the part of the app that serves it (app.LockgateApp.__call__).
    gateway_paths = {path for _, path in gateway_routes()}
    for path in document["paths"]:
        concrete = path.replace("{domain}", "api").replace("{path}", "login").replace("{namespace}", "ns")
        assert Gateway.handles(concrete.replace("{name}", "n")) == (path in gateway_paths), path


def test_the_document_is_valid_openapi_3_1(api_schema: Any, document: dict[str, Any]) -> None:
    api_schema.validate()  # the OpenAPI 3.1 meta-schema
    assert document["openapi"].startswith("3.1.")
    for schema in find(document, "schema") + list(document["components"]["schemas"].values()):
        jsonschema_rs.meta.validate(schema)  # each a valid JSON Schema (2020-12, 3.1's dialect)
    for reference in find(document, "$ref"):
        assert reference.startswith("#/"), reference
        target: Any = document
        for part in reference[2:].split("/"):
            target = target[part]  # a KeyError names a reference to nothing
    operation_ids = [
        operation["operationId"]
        for item in document["paths"].values()
        for method, operation in item.items()
        if method.upper() in OPENAPI_METHODS
    ]
    assert len(operation_ids) == len(set(operation_ids))


def find(node: Any, key: str) -> list[Any]:
    """Every value under `key` anywhere in a JSON document (a property named `key` included)."""
    if isinstance(node, dict):
        found = [node[key]] if key in node else []
        return found + [value for child in node.values() for value in find(child, key)]
    if isinstance(node, list):
        return [value for child in node for value in find(child, key)]
    return []


@schemathesis.check
def not_a_server_error_unless_a_denial(ctx: Any, response: Any, case: Any) -> bool | None:
    """A domain's deny_status may be a 5xx (policies fuzzed through the admin API too): that is an answer."""
    content_types = {
        value for name, values in response.headers.items() if name.lower() == "content-type" for value in values
    }
    if CHECK_CONTENT_TYPE in content_types:  # the check's denial; its problems are problem+json
        return None
    result: bool | None = not_a_server_error(ctx, response, case)
    return result


CHECKS = [
    not_a_server_error_unless_a_denial,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


Conforms = Callable[..., httpx.Response]


@pytest.fixture
def conforms(api_schema: Any, server: GatewayServer) -> Conforms:
    """conforms(method, path, **case fields): one request as schemathesis makes it, validated against the document."""

    def call(method: str, path: str, **case_fields: Any) -> httpx.Response:
        case = api_schema[path][method].Case(**case_fields)
        response = case.call(base_url=server.url, timeout=10)
        case.validate_response(response, checks=CHECKS)
        headers = [(name, value) for name, values in response.headers.items() for value in values]
        return httpx.Response(response.status_code, headers=headers, content=response.content)

    return call


def test_the_answers_the_check_documents(conforms: Conforms) -> None:
    strict = {"path_parameters": {"domain": "strict"}, "headers": {"X-Forwarded-For": "198.51.100.1", **GATEWAY}}
    assert conforms("GET", "/check/{domain}", **strict).status_code == 200
    denied = conforms("POST", "/check/{domain}", **strict)
    assert denied.status_code == 403 and "Retry-After" in denied.headers  # a deny_status that 403 problems share
    assert conforms("HEAD", "/check/{domain}", path_parameters={"domain": "closed"}, headers=GATEWAY).status_code == 503
    by_header = conforms("GET", CHECK_PATH, headers={DOMAIN_HEADER: "api", **GATEWAY})
    assert by_header.status_code == 200 and "RateLimit-Policy" in by_header.headers
    # The original path may hold slashes: percent-encoded in the parameter, it names the same path.
    login = {"path_parameters": {"domain": "api", "path": "login"}, "headers": GATEWAY}
    assert conforms("GET", "/check/{domain}/{path}", **login).status_code == 200
    assert conforms("GET", "/check/{domain}/{path}", **login).status_code == 429
    nested = {"path_parameters": {"domain": "api", "path": "v2/login"}, "headers": GATEWAY}
    assert conforms("GET", "/check/{domain}/{path}", **nested).status_code == 200
    assert conforms("GET", "/check/{domain}/{path}", **nested).status_code == 429
    assert conforms("GET", "/check/{domain}", path_parameters={"domain": "nope"}, headers=GATEWAY).status_code == 404
    assert conforms("GET", "/check/{domain}", path_parameters={"domain": "api"}).status_code == 401


def test_the_answers_json_and_the_admin_api_document(conforms: Conforms) -> None:
    over = {"domain": "strict", "descriptors": [{"entries": [{"key": "remote_address", "value": "x"}]}]}
    assert conforms("POST", JSON_PATH, body=over, headers=OPERATOR).status_code == 200
    assert conforms("POST", JSON_PATH, body=over, headers=OPERATOR).status_code == 429
    assert conforms("POST", JSON_PATH, body={"domain": "strict"}, headers=OPERATOR).status_code == 422
    assert conforms("POST", JSON_PATH, body=over).status_code == 401
    listing = conforms("GET", ADMIN_PATH, headers=OPERATOR)
    assert {"domain": "closed", "source": "file"} in listing.json()["domains"]
    assert conforms("GET", ADMIN_PATH, headers={"Authorization": "Bearer gateway-writer"}).status_code == 403
    added = {"path_parameters": {"domain": "added"}, "headers": OPERATOR}
    policy = {"domain": "added", "descriptors": [{"key": "remote_address"}]}
    for media_type in ("application/json", "application/yaml"):
        put = conforms("PUT", ADMIN_PATH + "/{domain}", body=policy, media_type=media_type, **added)
        assert put.json()["source"] == "runtime"
    deleted = conforms("DELETE", ADMIN_PATH + "/{domain}", **added)
    assert deleted.json() == {"domain": "added", "removed": True, "in_force": None}


GATEWAY_OPERATIONS = sorted(gateway_routes())


@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda mode: mode.value)
@pytest.mark.parametrize(("method", "path"), GATEWAY_OPERATIONS, ids=[f"{m} {p}" for m, p in GATEWAY_OPERATIONS])
def test_no_server_error_and_conformant_answers(
    api_schema: Any, server: GatewayServer, method: str, path: str, mode: GenerationMode
) -> None:
    item = api_schema.raw_schema["paths"][path]
    inputs = [item.get("parameters"), item[method.lower()].get("parameters"), item[method.lower()].get("requestBody")]
    if mode is GenerationMode.NEGATIVE and not any(inputs):
        pytest.skip("nothing in the request to make invalid")
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode), domain=st.sampled_from([None, *DOMAINS]))
    @FUZZ_SETTINGS
    def run(case: Any, domain: str | None) -> None:
        if domain is not None:  # now and then a domain the server has, not only ones it does not
            if "domain" in (case.path_parameters or {}):
                case.path_parameters["domain"] = domain
            elif path == CHECK_PATH:
                case.headers = {**(case.headers or {}), DOMAIN_HEADER: domain}
            elif path == JSON_PATH and isinstance(case.body, dict):
                case.body["domain"] = domain
        case.call_and_validate(base_url=server.url, headers={**GATEWAY, **OPERATOR}, checks=CHECKS, timeout=10)

    run()
