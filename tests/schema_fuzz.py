"""What the schemathesis fuzz tests share (tests/http for /v1, tests/gateway for the gateway).

schemathesis' lazy pytest integration (`schemathesis.pytest.from_fixture`) breaks on pytest 9
(`'Function' object has no attribute '_nodeid'`), so each operation runs its own Hypothesis
test on `APIOperation.as_strategy()`, under these settings, once with valid and once with
invalid data. (tests/ is on sys.path: it holds the root conftest.py.)
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

MAX_EXAMPLES = 25
FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
