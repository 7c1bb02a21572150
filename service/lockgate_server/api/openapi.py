"""The OpenAPI document, generated from the same route table that serves requests."""

from __future__ import annotations

from typing import Any

import msgspec

from .. import __version__, limits
from . import schemas
from .operations import ROUTES

_REF = "#/components/schemas/{name}"
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


def _content(ref: dict[str, Any], media_types: tuple[str, ...]) -> dict[str, Any]:
    return {media: {"schema": ref} for media in media_types}


def openapi_document(extra_paths: dict[str, Any]) -> dict[str, Any]:
    types: list[Any] = [schemas.Problem, schemas.BatchRequest, schemas.BatchResponse]
    for route in ROUTES:
        types += [t for t in (route.body, route.query, route.response) if t is not None]
    refs, components = msgspec.json.schema_components(types, ref_template=_REF)
    ref_of = dict(zip(types, refs, strict=True))
    problem_responses = {
        status: {"description": text, "content": _content(ref_of[schemas.Problem], ("application/problem+json",))}
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
                {"name": field, "in": "query", "required": field in query_schema.get("required", []), "schema": schema}
                for field, schema in query_schema["properties"].items()
            ]
        operation: dict[str, Any] = {
            "operationId": route.operation,
            "summary": route.summary,
            "tags": [route.operation.split(".")[0]],
            "parameters": parameters,
            "responses": {
                "200": {
                    "description": "Done",
                    "content": _content(ref_of[route.response], ("application/json", "application/msgpack")),
                },
                **problem_responses,
            },
        }
        if route.body is not None:
            operation["requestBody"] = {
                "required": route.body is not schemas.RateReset,
                "content": _content(ref_of[route.body], ("application/json", "application/msgpack")),
            }
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    paths["/v1/batch"] = {
        "post": {
            "operationId": "batch",
            "summary": "Many operations in one request; one result per op, in order, each on its own",
            "tags": ["batch"],
            "requestBody": {"required": True, "content": _content(ref_of[schemas.BatchRequest], ("application/json",))},
            "responses": {
                "200": {
                    "description": "Results",
                    "content": _content(ref_of[schemas.BatchResponse], ("application/json",)),
                },
                **problem_responses,
            },
        }
    }
    paths.update(extra_paths)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Lockgate",
            "version": __version__,
            "description": "Durable locks, semaphores, counters, rate limits",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
        "security": [{"bearer": []}, {"apiKey": []}, {}],
    }
