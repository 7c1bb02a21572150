"""One settings struct, read from LOCKGATE_* environment variables and an optional TOML file.

The environment wins over the file; every field has a safe default, and the docstring
of each field is what `lockgate-server --help` prints.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import re
import tomllib
import typing
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit, urlunsplit

import msgspec
from redis.asyncio.connection import parse_url

from . import limits

ENV_PREFIX = "LOCKGATE_"

TRUE_WORDS: Final = frozenset({"true", "1", "yes", "on"})
FALSE_WORDS: Final = frozenset({"false", "0", "no", "off"})
"""What a boolean variable may say (any case); anything else is refused, never read as false."""
SHOWN_VALUE_MAX_CHARS: Final = 80
"""A refused value is quoted in the error up to this long (a JSON list can be long)."""


class SettingsError(ValueError):
    """A setting that cannot be used. The message is one line that names the variable (or the
    file and key) it came from, so `lockgate-server` can print it as it is, without a traceback."""


class ApiKey(msgspec.Struct, forbid_unknown_fields=True):
    """An API key as stored: only its SHA-256, never the key itself."""

    sha256: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
    namespaces: list[str]  # "*" for every namespace
    rights: list[Literal["read", "write", "admin"]]
    name: str = ""


class Settings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    host: str = "127.0.0.1"
    """Address to listen on. Without API keys only loopback addresses are allowed."""
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 8420
    """TCP port of the HTTP API (1-65535; other nodes relay to it, so never 0 for "any free port")."""
    redis_url: str | None = None
    """External Redis 7+/Valkey: redis://10.0.0.5:6379/0, rediss:// (TLS) or unix:///socket. Unset: embedded Valkey."""
    data_dir: str = "./data"
    """Folder of the embedded Valkey's append-only file."""
    shards: Annotated[int, msgspec.Meta(ge=1, le=limits.SHARDS_MAX)] = limits.SHARDS_DEFAULT
    """Number of shards; fixed for the life of the data (changing it re-homes every object, so a node
    refuses to start on data laid out in another count)."""
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
    owner_lease_ms: Annotated[int, msgspec.Meta(ge=1_000, le=60_000)] = limits.OWNER_LEASE_MS
    """This node's lease on its shards, renewed every third of it. Failover takes at most this plus
    standby_poll_ms plus loading; a store that stalls longer (a managed Redis failing over) makes
    the node stop serving until it has its lease back: raise it for such a store."""
    commits_in_flight: Annotated[int, msgspec.Meta(ge=1, le=16)] = limits.COMMITS_IN_FLIGHT
    """Commits pipelined to the store at once; more can help a store many milliseconds away."""
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


def _env_value(raw: str, field_type: Any, variable: str) -> Any:
    """Environment variables are strings; lists arrive as JSON (a list of strings may also be comma-separated)."""
    text = raw.strip()
    if field_type is bool:
        # msgspec alone takes only true/false/1/0; operators also write yes/no and on/off.
        if text.lower() in TRUE_WORDS:
            return True
        if text.lower() in FALSE_WORDS:
            return False
        raise SettingsError(f"{variable}: expected true or false (or yes/no, on/off, 1/0), got {_shown(raw)}")
    if typing.get_origin(field_type) is not list:
        return text  # a string field takes the text as it is, even one that starts with '['
    if text.startswith(("[", "{")):
        try:
            return msgspec.json.decode(text)
        except msgspec.DecodeError as error:
            raise SettingsError(f"{variable}: not valid JSON ({error}), got {_shown(raw)}") from None
    if field_type == list[str]:
        return [part.strip() for part in text.split(",") if part.strip()]
    return text


def load_settings(config_file: str | Path | None = None, environ: dict[str, str] | None = None) -> Settings:
    """The settings from the TOML file and the environment; a bad one raises SettingsError naming it."""
    environ = dict(os.environ if environ is None else environ)
    fields = {field.name: field for field in msgspec.structs.fields(Settings)}
    values: dict[str, Any] = {}
    config_file = config_file or environ.get(f"{ENV_PREFIX}CONFIG")
    if config_file:
        for key, value in _read_config_file(config_file).items():
            if key not in fields:
                raise SettingsError(f"{ENV_PREFIX}CONFIG: {config_file}: unknown setting {key!r}")
            values[key] = _checked(value, fields[key], f"{ENV_PREFIX}CONFIG: {config_file}: {key}")
    for name, field in fields.items():
        variable = f"{ENV_PREFIX}{name.upper()}"
        raw = environ.get(variable)
        if raw is not None and raw != "":
            values[name] = _checked(_env_value(raw, field.type, variable), field, variable, raw=raw)
    try:
        return msgspec.convert(values, Settings, strict=False)
    except msgspec.ValidationError as error:  # each field passed alone: only a cross-field rule is left
        raise SettingsError(f"settings: {_explain(error)}") from None


def _read_config_file(config_file: str | Path) -> dict[str, Any]:
    try:
        with open(config_file, "rb") as handle:
            return tomllib.load(handle)
    except OSError as error:
        raise SettingsError(f"{ENV_PREFIX}CONFIG: cannot read {config_file}: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise SettingsError(f"{ENV_PREFIX}CONFIG: {config_file} is not valid TOML: {error}") from None


def _checked(value: Any, field: msgspec.structs.FieldInfo, source: str, *, raw: str | None = None) -> Any:
    """`value` if it is right for `field`, else a SettingsError that names `source`."""
    try:
        msgspec.convert(value, field.type, strict=False)
    except msgspec.ValidationError as error:
        if field.name == "redis_url":
            raise SettingsError(f"{source}: {_explain(error)}") from None  # never quoted: it may hold a password
        shown = _shown(raw if raw is not None else value)
        if typing.get_origin(field.type) is Literal:
            choices = ", ".join(str(choice) for choice in typing.get_args(field.type))
            raise SettingsError(f"{source}: expected one of {choices}, got {shown}") from None
        # A Kubernetes Service named "lockgate" sets LOCKGATE_PORT=tcp://IP:PORT in every pod.
        hint = " (a Kubernetes Service link: set enableServiceLinks: false)" if (raw or "").startswith("tcp://") else ""
        raise SettingsError(f"{source}: {_explain(error)}, got {shown}{hint}") from None
    if field.name == "redis_url" and value is not None:
        _check_redis_url(value, source)
    if field.name == "advertise_url" and value is not None:
        return _advertised(value, source)
    return value


def _advertised(url: str, source: str) -> str:
    """An HTTP URL other nodes can parse. The Helm chart's http://$(POD_IP):8420 cannot put an
    IPv6 pod IP in brackets, so a bare IPv6 address before the port gets them here."""
    parts = urlsplit(url)
    host, _, port = parts.netloc.rpartition(":")
    if "[" not in parts.netloc and port.isdigit() and _is_ipv6(host):
        parts = parts._replace(netloc=f"[{host}]:{port}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"{source}: expected an http:// or https:// URL, got {_shown(url)}")
    try:
        parts.port  # noqa: B018 -- parsing it is the check
    except ValueError:
        raise SettingsError(f"{source}: expected HOST:PORT after the scheme, got {_shown(url)}") from None
    return urlunsplit(parts)


def _is_ipv6(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 6
    except ValueError:
        return False


def _check_redis_url(url: str, source: str) -> None:
    """Refused now, not deep in start-up: redis-py's parse_url takes what our connections take
    (redis://, rediss://, unix://; storage/resp.py parses with it too)."""
    try:
        parse_url(url)
    except ValueError as error:
        raise SettingsError(f"{source}: {error}, got {_shown(redact_url(url))}") from None


def _explain(error: msgspec.ValidationError) -> str:
    """msgspec's "Expected `int` <= 65535 - at `$[0]`" as "expected an integer <= 65535 (at [0])"."""
    text, _, where = str(error).partition(" - at `")
    text = re.sub(r", got `\w+`$", "", text)  # the caller quotes the value itself
    text = re.sub(r"`(\w+)`", lambda match: _TYPE_WORDS.get(match[1], match[1]), text)
    text = text[:1].lower() + text[1:]
    where = where.rstrip("`").removeprefix("$")
    return f"{text} (at {where.removeprefix('.')})" if where else text


_TYPE_WORDS = {"int": "an integer", "bool": "true or false", "str": "a string", "array": "a list", "object": "a table"}


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= SHOWN_VALUE_MAX_CHARS else text[: SHOWN_VALUE_MAX_CHARS - 3] + "..."


def redact_url(url: str) -> str:
    """The URL without its password (or user), for logs and errors."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"


def describe_settings() -> str:
    """The --help text: every setting, its variable and default."""
    lines = [f"Settings (environment variables; or keys of the TOML file in {ENV_PREFIX}CONFIG):", ""]
    docs = _field_docs()
    for field in msgspec.structs.fields(Settings):
        if field.default is not msgspec.NODEFAULT:
            default = field.default
        elif field.default_factory is not msgspec.NODEFAULT:
            default = field.default_factory()
        else:
            default = "(required)"
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
