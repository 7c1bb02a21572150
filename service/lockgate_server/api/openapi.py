"""The OpenAPI document, generated from the same route table that serves requests."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from .. import __version__, limits
from ..errors import LockgateError, RetryableError
from . import schemas
from .operations import ROUTES
from .problems import PROBLEM_TABLE

REF_TEMPLATE: Final = "#/components/schemas/{name}"
RETRY_AFTER: Final = {"description": "Seconds to wait before a retry", "schema": {"type": "integer", "minimum": 1}}
_PROBLEM_STATUSES = {
    "400": "Malformed body",
    "401": "Missing or unknown API key",
    "403": "The key may not do this in that namespace",
    "404": "No such route",
    "405": "Method not allowed",
    "409": "Refused by the object's state (held, not owner, conflict)",
    "413": "Body too large",
    "422": "Invalid request",
    "503": "Unavailable or outcome unknown; retry with the same request_id (see Retry-After)",
}
_PATH_PARAMETERS = {
    "namespace": {"type": "string", "pattern": limits.NAMESPACE_PATTERN},
    "name": {"type": "string", "pattern": limits.NAME_PATTERN, "maxLength": limits.NAME_MAX_LENGTH},
}


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiPart:
    """Paths served beside the /v1 route table, with the components they refer to."""

    paths: dict[str, Any]
    components: dict[str, dict[str, Any]] = field(default_factory=dict)  # "schemas", "responses", ...


def content(schema: dict[str, Any], media_types: Iterable[str]) -> dict[str, Any]:
    return {media: {"schema": schema} for media in media_types}


def problem_responses(errors: Iterable[type[LockgateError]], problem: dict[str, Any]) -> dict[str, Any]:
    """One problem+json response per status the errors are answered with (PROBLEM_TABLE), by their titles."""
    titles: dict[int, list[str]] = {}
    retryable: set[int] = set()
    for error in errors:
        status, title = next((status, title) for kind, status, _, title in PROBLEM_TABLE if issubclass(error, kind))
        if title not in titles.setdefault(status, []):
            titles[status].append(title)
        if issubclass(error, RetryableError):
            retryable.add(status)
    responses: dict[str, Any] = {}
    for status in sorted(titles):
        response = {
            "description": "; ".join(titles[status]),
            "content": content(problem, ("application/problem+json",)),
        }
        if status in retryable:
            response["headers"] = {"Retry-After": RETRY_AFTER}
        responses[str(status)] = response
    return responses


def openapi_document(*parts: ApiPart) -> dict[str, Any]:
    types: list[Any] = [schemas.Problem, schemas.BatchRequest, schemas.BatchResponse]
    for route in ROUTES:
        types += [t for t in (route.body, route.query, route.response) if t is not None]
    refs, components = msgspec.json.schema_components(types, ref_template=REF_TEMPLATE)
    ref_of = dict(zip(types, refs, strict=True))
    v1_problems = {
        status: {"description": text, "content": content(ref_of[schemas.Problem], ("application/problem+json",))}
        for status, text in _PROBLEM_STATUSES.items()
    }
    paths: dict[str, Any] = {}
    for route in ROUTES:
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": schema}
            for name, schema in _PATH_PARAMETERS.items()
            if f"{{{name}}}" in route.path
        ]
        if route.query is not None:
            query_schema = components[route.query.__name__]
            parameters += [
                {"name": name, "in": "query", "required": name in query_schema.get("required", []), "schema": schema}
                for name, schema in query_schema["properties"].items()
            ]
        operation: dict[str, Any] = {
            "operationId": route.operation,
            "summary": route.summary,
            "tags": [route.operation.split(".")[0]],
            "parameters": parameters,
            "responses": {
                "200": {
                    "description": "Done",
                    "content": content(ref_of[route.response], ("application/json", "application/msgpack")),
                },
                **v1_problems,
            },
        }
        if route.body is not None:
            operation["requestBody"] = {
                "required": route.body is not schemas.RateReset,
                "content": content(ref_of[route.body], ("application/json", "application/msgpack")),
            }
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    paths["/v1/batch"] = {
        "post": {
            "operationId": "batch",
            "summary": "Many operations in one request; one result per op, in order, each on its own",
            "tags": ["batch"],
            "requestBody": {"required": True, "content": content(ref_of[schemas.BatchRequest], ("application/json",))},
            "responses": {
                "200": {
                    "description": "Results",
                    "content": content(ref_of[schemas.BatchResponse], ("application/json",)),
                },
                **v1_problems,
            },
        }
    }
    sections: dict[str, dict[str, Any]] = {
        "schemas": components,
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        },
    }
    for part in parts:
        _merge(paths, part.paths)
        for section, items in part.components.items():
            _merge(sections.setdefault(section, {}), items)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Lockgate",
            "version": __version__,
            "description": "Durable locks, semaphores, counters, rate limits",
        },
        "paths": paths,
        "components": sections,
        "security": [{"bearer": []}, {"apiKey": []}, {}],
    }


def _merge(into: dict[str, Any], part: dict[str, Any]) -> None:
    """Parts may share a component (generated from the same struct), never define one name twice."""
    for name, value in part.items():
        if into.setdefault(name, value) != value:
            raise ValueError(f"two different definitions of {name!r} in the OpenAPI document")
