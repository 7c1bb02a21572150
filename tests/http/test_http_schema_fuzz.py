"""Schemathesis against the served /openapi.json: valid and invalid input alike never gets
a 5xx, and every answer matches the schema the server publishes (how: tests/schema_fuzz.py).
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import given
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import response_schema_conformance

from lockgate_server.api.operations import ROUTES
from schema_fuzz import FUZZ_SETTINGS

# Generated acquires may ask to wait minutes on a lock another example holds; cap the wait
# (a deployment setting) so the run stays short. Validation bounds are unchanged.
SERVER_ENV = {"LOCKGATE_MAX_WAIT_MS": "50"}
OPERATIONS = [(route.method, route.path) for route in ROUTES] + [("POST", "/v1/batch")]
CHECKS = [not_a_server_error, response_schema_conformance]


@pytest.fixture(scope="module")
def api_schema(base_url: str) -> Any:
    return schemathesis.openapi.from_url(f"{base_url}/openapi.json")


def test_the_served_document_lists_every_route(api_schema: Any) -> None:
    served = {(method.upper(), path) for path, methods in api_schema.raw_schema["paths"].items() for method in methods}
    assert set(OPERATIONS) <= served


@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda mode: mode.value)
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{method} {path}" for method, path in OPERATIONS])
def test_no_server_error_and_schema_conformant_answers(
    api_schema: Any, base_url: str, method: str, path: str, mode: GenerationMode
) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @FUZZ_SETTINGS
    def run(case: Any) -> None:
        case.call_and_validate(base_url=base_url, checks=CHECKS, timeout=10)

    run()
