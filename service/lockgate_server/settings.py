"""One settings struct, read from LOCKGATE_* environment variables and an optional TOML file.

The environment wins over the file; every field has a safe default, and the docstring
of each field is what `lockgate-server --help` prints.
"""

from __future__ import annotations

import itertools
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from . import limits

ENV_PREFIX = "LOCKGATE_"


class ApiKey(msgspec.Struct, forbid_unknown_fields=True):
    """An API key as stored: only its SHA-256, never the key itself."""

    sha256: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
    namespaces: list[str]  # "*" for every namespace
    rights: list[Literal["read", "write", "admin"]]
    name: str = ""


class Settings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    host: str = "127.0.0.1"
    """Address to listen on. Without API keys only loopback addresses are allowed."""
    port: int = 8420
    """TCP port of the HTTP API."""
    redis_url: str | None = None
    """External Redis 7+/Valkey, e.g. redis://10.0.0.5:6379/0. Unset: start an embedded Valkey."""
    data_dir: str = "./data"
    """Folder of the embedded Valkey's append-only file."""
    shards: Annotated[int, msgspec.Meta(ge=1, le=4096)] = limits.SHARDS_DEFAULT
    """Number of shards; fixed for the life of the data (changing it re-homes every object)."""
    require_fsync_always: bool = False
    """Refuse to start on a store that can lose acknowledged writes: AOF off, appendfsync other
    than 'always', or maxmemory with an evicting policy (otherwise: a loud warning)."""
    api_keys: list[ApiKey] = []
    """API keys (in the TOML file as [[api_keys]] tables; env: JSON list)."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # --- gateways --------------------------------------------------------------------------
    policy_files: list[str] = []
    """Gateway rate-limit policy files (YAML or TOML); envoyproxy/ratelimit YAML files load as they are.
    Env: a JSON list or comma-separated paths. Runtime changes through /v1/admin/policies win over them."""
    grpc_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = limits.GRPC_PORT_DEFAULT
    """Port of the Envoy rate limit service (gRPC, envoy.service.ratelimit.v3) on the same host; 0 disables it."""
    forwarded_for_trusted_hops: Annotated[int, msgspec.Meta(ge=0, le=64)] = 0
    """Proxies in front of the gateway that each append to X-Forwarded-For (like Envoy's xff_num_trusted_hops).
    The check's client_ip is the hop this many places left of the right-most one; 0: the right-most,
    the address the gateway itself received the request from. Hops further left are the client's to forge."""

    # --- request bounds ------------------------------------------------------------------
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 1_048_576
    """Largest request body; larger ones get 413."""
    max_batch_ops: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 1000
    """Operations in one /v1/batch request."""
    max_wait_ms: Annotated[int, msgspec.Meta(ge=0, le=limits.WAIT_MAX_MS)] = 60_000
    """Longest a blocking acquire is held open."""
    max_objects_per_namespace: Annotated[int, msgspec.Meta(ge=1)] = limits.OBJECTS_PER_NAMESPACE_MAX
    """Objects one namespace may hold across all kinds on this node; new ones past it get 409."""

    # --- engine ------------------------------------------------------------------------------
    store_wait_ms: Annotated[int, msgspec.Meta(ge=0, le=3_600_000)] = limits.STORE_WAIT_MS
    """At start, wait this long for a store that does not answer yet, then exit with an error."""
    commit_timeout_ms: Annotated[int, msgspec.Meta(ge=100)] = limits.COMMIT_TIMEOUT_MS
    """A commit not confirmed by the store within this answers 503 outcome-unknown."""
    commit_ops_max: Annotated[int, msgspec.Meta(ge=1)] = limits.COMMIT_OPS_MAX
    """Ops waiting for one commit; past it new requests get 503 with Retry-After."""
    standby_poll_ms: Annotated[int, msgspec.Meta(ge=50, le=60_000)] = limits.STANDBY_POLL_MS
    """A standby node (its shards owned by a live node) checks this often whether it can take them over."""
    advertise_url: str | None = None
    """The URL other nodes relay requests to while this node owns the shards, e.g. http://10.0.0.7:8420.
    Unset: http://HOST:PORT (right on one host; set it when HOST is 0.0.0.0 or behind NAT)."""
    forward_connections_max: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = limits.FORWARD_CONNECTIONS_MAX
    """Connections a standby opens to the active node for the requests it relays there."""
    forward_connect_timeout_ms: Annotated[int, msgspec.Meta(ge=10, le=60_000)] = limits.FORWARD_CONNECT_TIMEOUT_MS
    """A standby that cannot connect to the active node (or get one of its connections) within this answers 503."""
    snapshot_every_entries: Annotated[int, msgspec.Meta(ge=10)] = limits.SNAPSHOT_EVERY_ENTRIES
    """A shard snapshots after this many log entries ..."""
    snapshot_every_ms: Annotated[int, msgspec.Meta(ge=100)] = limits.SNAPSHOT_EVERY_MS
    """... or after this long with changes."""
    snapshot_inline_items_max: Annotated[int, msgspec.Meta(ge=0)] = limits.SNAPSHOT_INLINE_ITEMS_MAX
    """Shards of up to this many items are snapshotted on the serving loop; larger ones by a fork."""


def _env_value(raw: str, field_type: Any) -> Any:
    """Environment variables are strings; lists arrive as JSON (a list of strings may also be comma-separated)."""
    text = raw.strip()
    if text.startswith(("[", "{")):
        return msgspec.json.decode(text)
    if field_type == list[str]:
        return [part.strip() for part in text.split(",") if part.strip()]
    return text


def load_settings(config_file: str | Path | None = None, environ: dict[str, str] | None = None) -> Settings:
    environ = dict(os.environ if environ is None else environ)
    values: dict[str, Any] = {}
    config_file = config_file or environ.get(f"{ENV_PREFIX}CONFIG")
    if config_file:
        with open(config_file, "rb") as handle:
            values.update(tomllib.load(handle))
    for field in msgspec.structs.fields(Settings):
        raw = environ.get(f"{ENV_PREFIX}{field.name.upper()}")
        if raw is not None and raw != "":
            values[field.name] = _env_value(raw, field.type)
    return msgspec.convert(values, Settings, strict=False)


def describe_settings() -> str:
    """The --help text: every setting, its variable and default."""
    lines = [f"Settings (environment variables; or keys of the TOML file in {ENV_PREFIX}CONFIG):", ""]
    docs = _field_docs()
    for field in msgspec.structs.fields(Settings):
        default = field.default if field.default is not msgspec.NODEFAULT else "(required)"
        lines.append(f"  {ENV_PREFIX}{field.name.upper():<28} default {default!r}")
        if field.name in docs:
            lines.append(f"      {docs[field.name]}")
    return "\n".join(lines)


def _field_docs() -> dict[str, str]:
    """Reads the attribute docstrings above, so the help never drifts from the code."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(Settings))
    docs: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, following in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
        ):
            docs[node.target.id] = str(following.value.value)
    return docs
