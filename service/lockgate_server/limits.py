"""Every bound the service enforces, named once, with its default.

The edge validates requests against these before anything is sequenced; the core
asserts them. Settings may override some of them per deployment (see settings.py).
"""

from typing import Final

# --- names -----------------------------------------------------------------
NAMESPACE_PATTERN: Final = r"^[a-z0-9][a-z0-9_-]{0,63}$"
"""Namespaces: lower-case, digits, '_' and '-', at most 64 characters."""

NAME_MAX_LENGTH: Final = 256
NAME_PATTERN: Final = r"^[A-Za-z0-9_.:@=+,~-]{1,256}$"
"""Object names: no '/' (it separates namespace and name inside a shard) and no spaces."""

REQUEST_ID_MAX_LENGTH: Final = 128
HOLDER_MAX_LENGTH: Final = 128

# --- leases ----------------------------------------------------------------
TTL_MIN_MS: Final = 100
TTL_MAX_MS: Final = 24 * 3600 * 1000
WAIT_MAX_MS: Final = 5 * 60 * 1000
PERMITS_MAX: Final = 1_000_000
"""Largest semaphore limit and largest number of permits in one acquire."""
WAITERS_PER_OBJECT_MAX: Final = 10_000
"""Queued acquires per lock or semaphore; the next one is refused with 409/503."""

OBJECTS_PER_NAMESPACE_MAX: Final = 10_000_000
"""Objects (of all kinds) one namespace may hold on a node; new ones past it get 409."""

# --- counters --------------------------------------------------------------
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1

# --- rate limits -----------------------------------------------------------
RATE_LIMIT_MAX: Final = 1_000_000_000
RATE_PERIOD_MIN_MS: Final = 1
RATE_PERIOD_MAX_MS: Final = 366 * 24 * 3600 * 1000
RATE_COST_MAX: Final = 1_000_000_000

# --- idempotency -----------------------------------------------------------
IDEMPOTENCY_WINDOW_MS: Final = 5 * 60 * 1000
"""How long a request_id's first answer is remembered."""
IDEMPOTENCY_ENTRIES_PER_SHARD_MAX: Final = 10_000
"""Oldest remembered answers are forgotten first once a shard holds this many
(10,000 x 64 shards of about 300 bytes: the memory bound of idempotency)."""

# --- sequencing and commit ---------------------------------------------------
COMMIT_OPS_MAX: Final = 8192
"""Ops that may join one pending commit; past it callers get a retryable 503."""
COMMIT_TIMEOUT_MS: Final = 5_000
"""A commit not acknowledged by Redis within this is treated as outcome unknown."""
EXPIRY_SWEEP_INTERVAL_MS: Final = 10
"""How often the node looks for due lease expiries and waiter deadlines."""

# --- snapshots ---------------------------------------------------------------
SNAPSHOT_EVERY_ENTRIES: Final = 10_000
"""A shard snapshots once its log holds this many entries since the last snapshot."""
SNAPSHOT_EVERY_MS: Final = 60_000
"""...or once this long has passed since its last snapshot, if anything changed."""

# --- ownership --------------------------------------------------------------
SHARDS_DEFAULT: Final = 64
