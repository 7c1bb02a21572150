"""The gateway's part of /openapi.json: the check endpoint, /json and /v1/admin/policies.

Built from what serves them: the admin route table, the msgspec structs of policies and
admin answers, the Envoy messages (their proto3 JSON mapping, read off the descriptors), the
header names the check reads and writes, and the errors each edge answers as problem+json.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from ..api.openapi import REF_TEMPLATE, RETRY_AFTER, ApiPart, content, problem_responses
from ..api.schemas import Problem
from . import headers
from .admin import ADMIN_ERRORS, ADMIN_ROUTES, POLICY_MEDIA_TYPES
from .decision import FailureReason
from .http_check import (
    ALLOWED_BODY,
    CHECK_CONTENT_TYPE,
    CHECK_ERRORS,
    CHECK_PATH,
    DENIED_BODY,
    DOMAIN_HEADER,
    JSON_ERRORS,
    JSON_METHOD,
    JSON_OVER_LIMIT_STATUS,
    JSON_PATH,
    KEY_HEADER,
)
from .policy import DomainName, DomainPolicy
from .proto.envoy.service.ratelimit.v3.rls_pb2 import RateLimitRequest, RateLimitResponse
from .request_data import FORWARDED_HEADERS

GATEWAY_KEY_SCHEME: Final = "gatewayKey"
CHECK_METHODS: Final = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
"""Every method an OpenAPI path item can hold: the check answers them all alike."""
POLICY_UPDATE: Final = "DomainPolicyUpdate"
"""A PUT's JSON policy: a DomainPolicy whose `domain` may be left out (the path names it)."""

_JSON: Final = ("application/json",)
_TAGS: Final = ["gateway"]
_SF_STRING: Final = r'"(?:[ !#-\[\]-~]|\\[\\"])*"'  # RFC 8941 sf-string, as matcher.structured_string writes it
_COUNT: Final = {"type": "integer", "minimum": 0}
_RESPONSE_HEADERS: Final = {
    headers.POLICY_HEADER: (
        "One item per enforced limit the request matched: q requests per w seconds "
        "(draft-ietf-httpapi-ratelimit-headers)",
        {"type": "string", "pattern": rf"^{_SF_STRING};q=\d+;w=\d+(, {_SF_STRING};q=\d+;w=\d+)*$"},
    ),
    headers.RATE_LIMIT_HEADER: (
        "The same limits: r requests left, t seconds until the limit is full again",
        {"type": "string", "pattern": rf"^{_SF_STRING};r=\d+;t=\d+(, {_SF_STRING};r=\d+;t=\d+)*$"},
    ),
    headers.LIMIT_HEADER: ("Requests per window of the tightest of those limits", _COUNT),
    headers.REMAINING_HEADER: ("Requests it has left", _COUNT),
    headers.RESET_HEADER: ("Seconds until it is full again", _COUNT),
    headers.FAILURE_HEADER: (
        "Instead of the rate-limit headers: the store did not decide in time and the domain's failure_mode did",
        msgspec.json.schema(FailureReason),
    ),
}

_UINT64: Final = {
    "anyOf": [{"type": "integer", "minimum": 0, "maximum": 2**64 - 1}, {"type": "string", "pattern": "^[0-9]+$"}]
}
_PROTO_SCALARS: Final[dict[int, dict[str, Any]]] = {
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "minimum": 0, "maximum": 2**32 - 1},
    FieldDescriptor.TYPE_UINT64: _UINT64,
    FieldDescriptor.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
}
_PROTO_WELL_KNOWN: Final[dict[str, dict[str, Any]]] = {
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$"},
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.UInt64Value": _UINT64,
}


def gateway_openapi() -> ApiPart:
    types: list[Any] = [Problem, DomainPolicy]
    for route in ADMIN_ROUTES:
        types += [kind for kind in (route.body, route.response) if kind is not None and kind not in types]
    refs, schemas = msgspec.json.schema_components(types, ref_template=REF_TEMPLATE)
    ref_of = dict(zip(types, refs, strict=True))
    policy = schemas["DomainPolicy"]
    schemas[POLICY_UPDATE] = {
        **policy,
        "title": POLICY_UPDATE,
        "required": [name for name in policy.get("required", []) if name != "domain"],
    }
    schemas.update(_proto_schemas(RateLimitRequest.DESCRIPTOR, RateLimitResponse.DESCRIPTOR))
    problem = ref_of[Problem]
    # The check answers alike to every method on every path: each of its responses is a component.
    check_responses = _check_responses(problem, deny_status=policy["properties"]["deny_status"])
    check_names = {status: "gateway.check." + status for status in check_responses}
    paths = {
        **_check_paths({status: _ref(name, "responses") for status, name in check_names.items()}),
        JSON_PATH: {JSON_METHOD.lower(): _json_operation(problem)},
        **_admin_paths(ref_of),
    }
    security_scheme = {
        "type": "apiKey",
        "in": "header",
        "name": KEY_HEADER,
        "description": "The gateway's own key (write right on the namespace gateway), when Lockgate has keys: "
        "the gateway forwards the client's Authorization and X-API-Key, so the check reads only this header",
    }
    components = {
        "schemas": schemas,
        "responses": {check_names[status]: response for status, response in check_responses.items()},
        "headers": {
            name: {"description": text, "schema": schema} for name, (text, schema) in _RESPONSE_HEADERS.items()
        },
        "securitySchemes": {GATEWAY_KEY_SCHEME: security_scheme},
    }
    return ApiPart(paths=paths, components=components)


def _ref(name: str, section: str = "schemas") -> dict[str, Any]:
    return {"$ref": f"#/components/{section}/{name}"}


def _domain_parameter() -> dict[str, Any]:
    return {"name": "domain", "in": "path", "required": True, "schema": msgspec.json.schema(DomainName)}


def _admin_paths(ref_of: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for route in ADMIN_ROUTES:
        operation: dict[str, Any] = {
            "operationId": "gateway." + route.operation,
            "summary": route.summary,
            "tags": _TAGS,
            "parameters": [_domain_parameter()] if "{domain}" in route.path else [],
            "responses": {
                "200": {"description": "Done", "content": content(ref_of[route.response], _JSON)},
                **problem_responses(ADMIN_ERRORS + route.errors, ref_of[Problem]),
            },
        }
        if route.body is DomainPolicy:
            body = content(_ref(POLICY_UPDATE), _JSON) | content(ref_of[DomainPolicy], POLICY_MEDIA_TYPES)
            operation["requestBody"] = {"required": True, "content": body}
        elif route.body is not None:
            operation["requestBody"] = {"required": True, "content": content(ref_of[route.body], _JSON)}
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return paths


def _check_paths(responses: dict[str, Any]) -> dict[str, Any]:
    forwarded = [
        {
            "name": name,
            "in": "header",
            "required": False,
            "schema": {"type": "string"},
            "description": f"Read by the entry source {source!r} of the domain's http.descriptors",
        }
        for source, names in FORWARDED_HEADERS.items()
        for name in names
        if name.lower() != "host"  # OpenAPI leaves Host to the client
    ]
    by_header = {"name": DOMAIN_HEADER, "in": "header", "required": True, "schema": msgspec.json.schema(DomainName)}
    original_path = {
        "name": "path",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "The original request's path (Envoy ext_authz appends it), read by the entry source 'path'",
    }
    variants = {
        CHECK_PATH: ("check_by_header", [by_header]),
        CHECK_PATH + "/{domain}": ("check", [_domain_parameter()]),
        CHECK_PATH + "/{domain}/{path}": ("check_path", [_domain_parameter(), original_path]),
    }
    description = (
        "Decides one request a gateway forwards: nginx auth_request, Traefik ForwardAuth, Envoy ext_authz "
        "(HTTP service). It charges 1, or what the domain's http.hits_addend_header says (0 peeks). "
        "The domain's http.descriptors turn request data into descriptor entries: the headers below, "
        "the domain's http.api_key_header, headers named by `header` sources, and Host."
    )
    paths: dict[str, Any] = {}
    for path, (name, parameters) in variants.items():
        item: dict[str, Any] = {"parameters": parameters + forwarded}
        for method in CHECK_METHODS:
            item[method] = {
                "operationId": f"gateway.{name}.{method}",
                "summary": "Allow or deny one request by the domain's policy",
                "description": description,
                "tags": _TAGS,
                "security": [{GATEWAY_KEY_SCHEME: []}, {}],
                "responses": responses,
            }
        paths[path] = item
    return paths


def _check_responses(problem: dict[str, Any], *, deny_status: dict[str, Any]) -> dict[str, Any]:
    """200, the default deny_status, the codes another deny_status may be, and problems (which it may share)."""
    rate_headers = {name: _ref(name, "headers") for name in _RESPONSE_HEADERS}
    media_type = CHECK_CONTENT_TYPE.split(";", 1)[0]
    denied_headers = {**rate_headers, headers.RETRY_AFTER_HEADER: RETRY_AFTER}
    denied_content = {media_type: {"schema": {"const": DENIED_BODY.decode()}}}
    default, lowest, highest = deny_status["default"], deny_status["minimum"], deny_status["maximum"]
    responses: dict[str, Any] = {
        "200": {
            "description": "Allowed",
            "headers": rate_headers,
            "content": {media_type: {"schema": {"const": ALLOWED_BODY.decode()}}},
        },
        str(default): {
            "description": "Denied (the default deny_status)",
            "headers": denied_headers,
            "content": denied_content,
        },
    }
    for hundreds in range(lowest // 100, highest // 100 + 1):
        responses[f"{hundreds}XX"] = {
            "description": f"Denied, where the domain's deny_status ({lowest} to {highest}) is such a code",
            "headers": denied_headers,
            "content": denied_content,
        }
    for status, response in problem_responses(CHECK_ERRORS, problem).items():
        responses[status] = {
            "description": f"{response['description']}; or denied, where the domain's deny_status is {status}",
            "headers": {**response.get("headers", {}), **denied_headers},
            "content": {**response["content"], **denied_content},
        }
    return responses


def _json_operation(problem: dict[str, Any]) -> dict[str, Any]:
    answer = content(_ref(RateLimitResponse.DESCRIPTOR.full_name), _JSON)
    return {
        "operationId": "gateway.json",
        "summary": "envoyproxy/ratelimit's /json: ShouldRateLimit with proto3 JSON messages",
        "description": "A domain Lockgate does not know is answered OK, like envoyproxy/ratelimit.",
        "tags": _TAGS,
        "requestBody": {"required": True, "content": content(_ref(RateLimitRequest.DESCRIPTOR.full_name), _JSON)},
        "responses": {
            "200": {"description": "overallCode OK", "content": answer},
            str(JSON_OVER_LIMIT_STATUS): {"description": "overallCode OVER_LIMIT", "content": answer},
            **problem_responses(JSON_ERRORS, problem),
        },
    }


def _proto_schemas(*messages: Descriptor) -> dict[str, Any]:
    """Component schemas of protobuf messages in the proto3 JSON mapping, as json_format reads and writes it.

    Fields under either name (lowerCamelCase is written, both are read), enums by name or number.
    A field type without a mapping here raises, so a .proto change cannot go undocumented.
    """
    schemas: dict[str, Any] = {}
    pending = list(messages)
    while pending:
        message = pending.pop()
        if message.full_name in schemas:
            continue
        properties: dict[str, Any] = {}
        for field in message.fields:
            schema = _proto_field(field, pending)
            if field.is_repeated:
                schema = {"type": "array", "items": schema}
            properties[field.json_name] = properties[field.name] = schema
        schemas[message.full_name] = {
            "title": message.name,
            "type": "object",
            "properties": properties,
            "additionalProperties": False,
        }
    return dict(sorted(schemas.items()))


def _proto_field(field: FieldDescriptor, pending: list[Descriptor]) -> dict[str, Any]:
    if field.message_type is not None:
        known = _PROTO_WELL_KNOWN.get(field.message_type.full_name)
        if known is not None:
            return known
        if field.message_type.GetOptions().map_entry:
            raise ValueError(f"{field.full_name}: map fields have no JSON schema here")
        pending.append(field.message_type)
        return _ref(field.message_type.full_name)
    if field.enum_type is not None:
        values = field.enum_type.values
        return {"enum": [value.name for value in values] + [value.number for value in values]}
    schema = _PROTO_SCALARS.get(field.type)
    if schema is None:
        raise ValueError(f"{field.full_name}: no JSON schema for protobuf field type {field.type}")
    return schema
