"""What the schemathesis fuzz tests share (tests/http for /v1, tests/gateway for the gateway).

schemathesis' lazy pytest integration (`schemathesis.pytest.from_fixture`) breaks on pytest 9
(`'Function' object has no attribute '_nodeid'`), so each operation runs its own Hypothesis
test on `APIOperation.as_strategy()`, under these settings, once with valid and once with
invalid data. (tests/ is on sys.path: it holds the root conftest.py.)
"""

from __future__ import annotations

# Imported now, at collection, not lazily by schemathesis.openapi.from_dict inside a running
# test: pytest rewrites schemathesis' modules (it is a pytest plugin) and CPython 3.11.7's
# compile() can fail there with "AST constructor recursion depth mismatch" once the session's
# recursion bookkeeping has been disturbed (seen once: every fuzz test errored at setup).
import schemathesis.specs.openapi.schemas  # noqa: F401
from hypothesis import HealthCheck, settings

MAX_EXAMPLES = 25
FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
