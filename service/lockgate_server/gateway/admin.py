"""/v1/admin/policies: gateway policies changed at run time, and resets of limit state.

    GET    /v1/admin/policies                   every domain in force and where it comes from
    GET    /v1/admin/policies/{domain}          one domain's policy
    PUT    /v1/admin/policies/{domain}          replace it (JSON; YAML or TOML by Content-Type)
    DELETE /v1/admin/policies/{domain}          drop the runtime policy (the file's is back)
    POST   /v1/admin/policies/{domain}/reset    {"descriptors": [{"entries": [{"key", "value"}]}]}
                                                forgets the state those descriptors' limits keep

All need the admin right on the namespace "gateway". A PUT takes effect at once, without a
restart, after the store has it (so it survives restarts; registry.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import msgspec

from .. import limits
from ..api import problems
from ..api.auth import KeyRing, authorize
from ..errors import (
    Forbidden,
    InvalidRequest,
    LockgateError,
    MethodNotAllowed,
    NotFound,
    OutcomeUnknown,
    PayloadTooLarge,
    Unauthorized,
    Unavailable,
)
from ..settings import Settings
from .asgi import Receive, Scope, Send, presented_key, read_body, send_json, send_problem
from .decision import Decider, RequestDescriptor
from .loader import NESTED_TOO_DEEPLY, PolicyError, parse_policies, policy_from_mapping
from .policy import DomainPolicy, EntryKey, EntryValue
from .registry import PolicyRegistry, Source
from .rls import check_entries

ADMIN_PATH: Final = "/v1/admin/policies"
POLICY_MEDIA_TYPES: Final = {
    "application/yaml": ".yaml",
    "application/x-yaml": ".yaml",
    "text/yaml": ".yaml",
    "application/toml": ".toml",
    "text/toml": ".toml",
}
"""A PUT body of these types is read as a policy file of that suffix; any other as JSON."""


class Entry(msgspec.Struct, forbid_unknown_fields=True):
    key: EntryKey
    value: EntryValue = ""


class Descriptor(msgspec.Struct, forbid_unknown_fields=True):
    entries: list[Entry]


class ResetRequest(msgspec.Struct, forbid_unknown_fields=True):
    descriptors: list[Descriptor]


class PolicyView(msgspec.Struct, kw_only=True):
    domain: str
    source: Source
    policy: DomainPolicy


class DomainSummary(msgspec.Struct, kw_only=True):
    domain: str
    source: Source


class DomainList(msgspec.Struct, kw_only=True):
    domains: list[DomainSummary]


class Deleted(msgspec.Struct, kw_only=True):
    domain: str
    removed: bool
    in_force: Source | None  # what serves the domain now: its file's policy, or nothing


class ResetDone(msgspec.Struct, kw_only=True):
    reset: int
    lsn: int


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminRoute:
    """One admin operation: PolicyAdmin dispatches on `operation`, /openapi.json documents it."""

    operation: str
    method: str
    path: str  # "{domain}" stands for one path segment
    summary: str
    response: type[msgspec.Struct]
    body: type[msgspec.Struct] | None = None  # JSON; a policy may come as YAML or TOML too
    errors: tuple[type[LockgateError], ...] = ()  # besides ADMIN_ERRORS


ADMIN_ERRORS: Final = (Unauthorized, Forbidden)
"""Every admin operation needs the admin right on the namespace "gateway"."""
_DOMAIN_PATH: Final = ADMIN_PATH + "/{domain}"
ADMIN_ROUTES: Final = (
    AdminRoute(
        operation="policies.list",
        method="GET",
        path=ADMIN_PATH,
        summary="Every domain in force and where its policy comes from",
        response=DomainList,
    ),
    AdminRoute(
        operation="policies.get",
        method="GET",
        path=_DOMAIN_PATH,
        summary="One domain's policy",
        response=PolicyView,
        errors=(NotFound,),
    ),
    AdminRoute(
        operation="policies.put",
        method="PUT",
        path=_DOMAIN_PATH,
        summary="Replace the domain's policy at once, without a restart (JSON; YAML or TOML by Content-Type)",
        response=PolicyView,
        body=DomainPolicy,
        errors=(InvalidRequest, PayloadTooLarge, Unavailable),
    ),
    AdminRoute(
        operation="policies.delete",
        method="DELETE",
        path=_DOMAIN_PATH,
        summary="Drop the domain's runtime policy (the file's, if any, is in force again)",
        response=Deleted,
        errors=(Unavailable,),
    ),
    AdminRoute(
        operation="policies.reset",
        method="POST",
        path=_DOMAIN_PATH + "/reset",
        summary="Forget the state the descriptors' limits keep (they are full again)",
        response=ResetDone,
        body=ResetRequest,
        errors=(NotFound, InvalidRequest, PayloadTooLarge, Unavailable, OutcomeUnknown),
    ),
)
_BY_METHOD_AND_PATH: Final = {(route.method, route.path): route for route in ADMIN_ROUTES}

_encoder = msgspec.json.Encoder()
_reset_decoder = msgspec.json.Decoder(ResetRequest)


class PolicyAdmin:
    def __init__(self, settings: Settings, keyring: KeyRing, registry: PolicyRegistry, decider: Decider) -> None:
        self._settings = settings
        self._keyring = keyring
        self._registry = registry
        self._decider = decider

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope["headers"])
        try:
            authorize(self._keyring.authenticate(presented_key(headers)), limits.GATEWAY_NAMESPACE, "admin")
            answer = await self._route(scope["method"], scope["path"], receive, headers)
        except LockgateError as error:
            await send_problem(send, problems.problem_for(error))
            return
        await send_json(send, 200, _encoder.encode(answer))

    async def _route(self, method: str, path: str, receive: Receive, headers: dict[bytes, bytes]) -> msgspec.Struct:
        route_path, domain = _match(path)
        route = _BY_METHOD_AND_PATH.get((method, route_path))
        if route is None:
            allowed = ", ".join(route.method for route in ADMIN_ROUTES if route.path == route_path)
            raise MethodNotAllowed(f"{method} is not allowed on {path}; use {allowed}")
        match route.operation:
            case "policies.list":
                summaries = [DomainSummary(domain=name, source=source) for name, source in self._registry.domains()]
                return DomainList(domains=summaries)
            case "policies.get":
                return self._view(domain)
            case "policies.put":
                policy = _policy_from_body(domain, await self._body(receive, headers), headers)
                await self._registry.put(policy)
                return self._view(domain)
            case "policies.delete":
                removed = await self._registry.delete(domain)
                described = self._registry.describe(domain)
                return Deleted(domain=domain, removed=removed, in_force=None if described is None else described[1])
            case "policies.reset":
                return await self._reset(domain, await self._body(receive, headers))
        raise AssertionError(f"no handler for {route.operation}")

    def _view(self, domain: str) -> PolicyView:
        described = self._registry.describe(domain)
        if described is None:
            raise NotFound(f"no gateway policy for domain {domain!r}")
        policy, source = described
        return PolicyView(domain=domain, source=source, policy=policy)

    async def _body(self, receive: Receive, headers: dict[bytes, bytes]) -> bytes:
        limit = min(self._settings.max_body_bytes, limits.GATEWAY_POLICY_BYTES_MAX)
        return await read_body(receive, headers, limit)

    async def _reset(self, domain_name: str, body: bytes) -> ResetDone:
        domain = self._registry.get(domain_name)
        if domain is None:
            raise NotFound(f"no gateway policy for domain {domain_name!r}")
        try:
            request = _reset_decoder.decode(body)
        except msgspec.DecodeError as error:  # ValidationError included
            raise InvalidRequest(str(error)) from error
        descriptors = []
        for descriptor in request.descriptors:
            entries = tuple((entry.key, entry.value) for entry in descriptor.entries)
            check_entries(entries)
            descriptors.append(RequestDescriptor(entries))
        reset, lsn = await self._decider.reset(domain, descriptors)
        return ResetDone(reset=reset, lsn=lsn)


def _segments(path: str) -> list[str]:
    rest = path[len(ADMIN_PATH) :].strip("/")
    return rest.split("/") if rest else []


def _match(path: str) -> tuple[str, str]:
    """(the route path a request path matches, the domain it names); NotFound if it matches none."""
    parts = _segments(path)
    for route in ADMIN_ROUTES:
        shape = _segments(route.path)
        if len(shape) == len(parts) and all(want in (got, "{domain}") for want, got in zip(shape, parts, strict=True)):
            return route.path, next((got for want, got in zip(shape, parts, strict=True) if want == "{domain}"), "")
    raise NotFound(f"no route {path}")


def _policy_from_body(domain: str, body: bytes, headers: dict[bytes, bytes]) -> DomainPolicy:
    content_type = headers.get(b"content-type", b"application/json").split(b";", 1)[0].strip().lower()
    suffix = POLICY_MEDIA_TYPES.get(content_type.decode("latin-1"))
    try:
        if suffix is not None:
            # Refused before conversion: `domains: [*d, *d, ...]` would convert one aliased
            # domain per use only to refuse them all for being more than one.
            policies = parse_policies(body, source="request body" + suffix, domains_max=1)
        else:
            raw = msgspec.json.decode(body or b"{}")
            if isinstance(raw, dict):
                raw.setdefault("domain", domain)
            policies = [policy_from_mapping(raw, source="request body")]
    except (PolicyError, msgspec.DecodeError) as error:
        raise InvalidRequest(str(error)) from error
    except RecursionError as error:
        # msgspec's JSON decoder recurses once per nesting level: `[[[[...` a few thousand deep
        # runs out of stack (the policy file formats are caught in parse_policies).
        raise InvalidRequest(f"request body: {NESTED_TOO_DEEPLY}") from error
    (policy,) = policies  # parse_policies refuses none and, with domains_max=1, more than one
    if policy.domain != domain:
        raise InvalidRequest(f"the body is the policy of {policy.domain!r}, the path names {domain!r}")
    return policy
