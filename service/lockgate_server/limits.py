"""Every bound the service enforces, named once, with its default.

The edge validates requests against these before anything is sequenced; the core
asserts them. Settings may override some of them per deployment (see settings.py).
"""

from typing import Final

# --- names -----------------------------------------------------------------
# Every pattern ends in `$(?!\n)`: Python's `$` (re.match, and msgspec's checks) also matches
# before a final newline, so "x\n" passed as a name of its own; `(?!\n)` refuses it, and reads
# the same in the ECMA regex that OpenAPI clients apply.
NAMESPACE_PATTERN: Final = r"^[a-z0-9][a-z0-9_-]{0,63}$(?!\n)"
"""Namespaces: lower-case, digits, '_' and '-', at most 64 characters."""

NAME_MAX_LENGTH: Final = 256
NAME_PATTERN: Final = r"^[A-Za-z0-9_.:@=+,~-]{1,256}$(?!\n)"
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
RATE_LIMIT_MAX: Final = 2**32 - 1  # envoyproxy/ratelimit's requests_per_unit is a uint32
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
STORE_WAIT_MS: Final = 30_000
"""At start, how long to wait for a store that does not answer yet (it may be starting too)."""
COMMIT_TIMEOUT_MS: Final = 5_000
"""A commit not acknowledged by Redis within this is treated as outcome unknown."""
COMMITS_IN_FLIGHT: Final = 2
"""Commits pipelined to the store at once (in order, on one connection). Two overlap one
commit's round trip with the next one's filling; more split the same ops over more
scripts and fsyncs (measured: 2 beat 4 by 7-15% on lock pairs, engine and HTTP)."""
EXPIRY_SWEEP_INTERVAL_MS: Final = 10
"""How often the node looks for due lease expiries and waiter deadlines."""

# --- snapshots ---------------------------------------------------------------
SNAPSHOT_EVERY_ENTRIES: Final = 10_000
"""A shard snapshots once its log holds this many entries since the last snapshot."""
SNAPSHOT_EVERY_MS: Final = 60_000
"""...or once this long has passed since its last snapshot, if anything changed."""
SNAPSHOT_INLINE_ITEMS_MAX: Final = 20_000
"""Snapshots of at most this many objects and remembered answers are encoded on the loop;
larger ones are written by a forked child, whose pause is the fork's. Measured here: 5,000
items encode in 0.18 ms, while forking a node that holds 1.2 million objects pauses it 13 ms."""

# --- ownership --------------------------------------------------------------
SHARDS_DEFAULT: Final = 64
SHARDS_MAX: Final = 4096
OWNER_LEASE_MS: Final = 3_000
"""A node's lease on its shards; renewed every third of it. A node takes shards over from
another only once that node's lease has run out."""
STANDBY_POLL_MS: Final = 500
"""How often a standby node checks whether the live owner of its shards stopped renewing
them; failover takes at most the owner's lease plus this, plus loading."""
FORWARD_CONNECTIONS_MAX: Final = 256
"""Connections a standby keeps open to the active node for the requests it relays; with all of
them busy (say, with blocking acquires), a request waits the connect timeout, then gets 503."""
FORWARD_CONNECT_TIMEOUT_MS: Final = 1_000
FORWARD_OWNER_CACHE_MS: Final = 1_000
"""How long a standby trusts its lookup of which node is active (a failed relay looks again)."""
FORWARD_SLACK_S: Final = 5.0
"""A relayed request waits the longest blocking acquire plus a commit timeout plus this."""
OWNER_LEASE_SAFETY: Final = 0.2
"""A node stops serving a shard this fraction of the lease before it could have expired,
so clock-rate differences between nodes never let two of them answer at once."""

# --- gateways ------------------------------------------------------------------
GATEWAY_NAMESPACE: Final = "gateway"
"""The internal namespace of every gateway limit's state, and the one API keys need rights on."""
GATEWAY_DESCRIPTORS_PER_REQUEST_MAX: Final = 64
"""Descriptors in one check (gRPC, /json or the HTTP check); more is a 4xx / INVALID_ARGUMENT."""
GATEWAY_ENTRIES_PER_DESCRIPTOR_MAX: Final = 16
"""Entries (key/value pairs) in one descriptor; also the deepest nesting a policy may have."""
GATEWAY_ENTRY_KEY_MAX_LENGTH: Final = 256
GATEWAY_ENTRY_VALUE_MAX_LENGTH: Final = 2048
"""Descriptor values are part of state keys (paths and header values can be long)."""
GATEWAY_POLICY_NODES_MAX: Final = 100_000
"""Descriptors (at every depth) one domain's policy may declare."""
GATEWAY_POLICY_FILE_NODES_MAX: Final = 1_000_000
"""Descriptors (at every depth, in all its domains) one policy file may declare, each use of a
YAML alias counted. A file without aliases never gets there within GATEWAY_POLICY_BYTES_MAX (a
descriptor takes at least 8 bytes); one that reuses a tree in many domains would be expanded
once per domain, each within GATEWAY_POLICY_NODES_MAX."""
GATEWAY_POLICY_BYTES_MAX: Final = 4 * 1024 * 1024
"""Largest policy file or admin PUT body."""
GATEWAY_FAILURE_TIMEOUT_DEFAULT_MS: Final = 200
"""How long a gateway check waits for the store before the domain's failure_mode decides."""
GATEWAY_FAILURE_TIMEOUT_MAX_MS: Final = 10_000
GATEWAY_RELAY_SLACK_MS: Final = 100
"""A standby relaying a gateway check waits the domain's failure timeout plus this (the hop to
the active node and back); with no answer by then, the domain's failure_mode decides."""
GATEWAY_POLICY_REFRESH_MS: Final = 1_000
"""How often a node looks for runtime policy changes made through another node."""
GRPC_PORT_DEFAULT: Final = 8081
GRPC_MESSAGE_BYTES_MAX: Final = 1_048_576
"""Largest gRPC request a node accepts."""
GRPC_STOP_GRACE_S: Final = 2.0
"""In-flight RPCs get this long to finish when the node stops."""
GRPC_CONNECTIONS_MAX: Final = 1_024
"""Open gRPC connections; one more is sent GOAWAY (ENHANCE_YOUR_CALM) and closed. Envoy keeps
about one connection per worker thread to each rate limit service host."""
GRPC_STREAMS_PER_CONNECTION_MAX: Final = 1_000
"""Calls in flight on one gRPC connection (SETTINGS_MAX_CONCURRENT_STREAMS); more are refused
with REFUSED_STREAM, which a client retries. Envoy sends all its calls over a few connections."""
GRPC_HEADER_LIST_BYTES_MAX: Final = 16_384
"""Largest header list of a gRPC call (SETTINGS_MAX_HEADER_LIST_SIZE); larger gets HTTP 431,
and one over 8 times this ends the connection."""
GRPC_CONNECTION_BUFFER_BYTES_MAX: Final = 4 * 1_048_576
"""Request bytes one gRPC connection may have buffered for its calls at once; the stream whose
DATA would pass it is reset (ENHANCE_YOUR_CALM). At least one largest message, with room."""
GRPC_HANDSHAKE_TIMEOUT_MS: Final = 10_000
"""A new gRPC connection must send its preface and SETTINGS within this, or is closed."""
GRPC_IDLE_TIMEOUT_MS: Final = 5 * 60 * 1000
"""A gRPC connection with no call open for this long is sent GOAWAY (NO_ERROR, in RFC 9113's
graceful two steps, so a call crossing it is still answered) and closed; Envoy opens a new one
for its next call. Without it, clients that vanish or go quiet hold their places among
GRPC_CONNECTIONS_MAX for ever. Long enough that a connection busy once a minute is kept;
enforced up to a quarter of the shorter of this and GRPC_REQUEST_TIMEOUT_MS late."""
GRPC_REQUEST_TIMEOUT_MS: Final = 30_000
"""From a gRPC call's HEADERS to the end of its request (END_STREAM), and for an answer held back
by flow control, to its last frame; a stream past it is reset (CANCEL) and its place and bytes
freed. Envoy sends a unary request at once and reads its answer; the same bound as
HTTP_READ_TIMEOUT_MS."""

# --- the HTTP/1.1 server -----------------------------------------------------------------
HTTP_HEADER_BYTES_MAX: Final = 65_536
"""Largest request head (request line and headers); larger gets 431 and the connection closes.
Gateways forward their clients' headers to the check endpoint, so it is sized like Envoy's
default (60 KiB) rather than for our own short requests."""
HTTP_READ_TIMEOUT_MS: Final = 30_000
"""From a request's first byte to its last; a slower request gets 408 and the connection closes."""
HTTP_IDLE_TIMEOUT_MS: Final = 30_000
"""A keep-alive connection with no request in flight is closed after this."""
HTTP_WRITE_TIMEOUT_MS: Final = 30_000
"""How long answers may wait for a client that does not read them (the server's write buffer
full, or a closing connection's last answer unsent); then the connection is cut. Without it, a
few clients that send requests and never read would hold their connections for ever."""
HTTP_PIPELINE_DEPTH: Final = 2
"""Parsed requests a connection holds behind the one being answered; at this many it stops
parsing and reading until the answers catch up."""
HTTP_PARSE_SLICE_BYTES: Final = 4_096
"""Bytes handed to the parser at once. A read holding many pipelined requests is parsed a slice
at a time and the rest kept until the queue drains, so one read queues at most a slice's worth
of requests past HTTP_PIPELINE_DEPTH (not the ~7,000 a 256 KiB read can hold), and a head line
that never ends is caught within a slice of the head limit. Reads up to this size (nearly all)
are fed whole."""
HTTP_LINGER_MS: Final = 5_000
"""After refusing a request (413, 431, 400...) the server sends its answer and FIN, then reads
and drops what the client still sends for at most this long, and closes when the client does.
Closing at once with the client's bytes unread makes the kernel reset the connection, and a
client busy sending its body sees the reset instead of the answer."""
HTTP_CONNECTIONS_MAX: Final = 4_096
"""Open HTTP connections; one more is answered 503 and closed."""
HTTP_BACKLOG: Final = 1_024
"""Connections the kernel queues before the server accepts them."""
HTTP_STOP_GRACE_S: Final = 10.0
"""On SIGTERM or SIGINT, requests in flight get this long to be answered (waiting acquires are
answered 503 at once); then the connections are cut and the engine stops."""
