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

from typing import Final

import msgspec

from .. import limits
from ..api import problems
from ..api.auth import KeyRing, authorize
from ..errors import InvalidRequest, LockgateError, MethodNotAllowed, NotFound
from ..settings import Settings
from .asgi import Receive, Scope, Send, presented_key, read_body, send_json, send_problem
from .decision import Decider, RequestDescriptor
from .loader import PolicyError, parse_policies, policy_from_mapping
from .policy import DomainPolicy, EntryKey, EntryValue
from .registry import PolicyRegistry
from .rls import check_entries

ADMIN_PATH: Final = "/v1/admin/policies"


class Entry(msgspec.Struct, forbid_unknown_fields=True):
    key: EntryKey
    value: EntryValue = ""


class Descriptor(msgspec.Struct, forbid_unknown_fields=True):
    entries: list[Entry]


class ResetRequest(msgspec.Struct, forbid_unknown_fields=True):
    descriptors: list[Descriptor]


class PolicyView(msgspec.Struct, kw_only=True):
    domain: str
    source: str  # "file" or "runtime"
    policy: DomainPolicy


class DomainSummary(msgspec.Struct, kw_only=True):
    domain: str
    source: str


class DomainList(msgspec.Struct, kw_only=True):
    domains: list[DomainSummary]


class Deleted(msgspec.Struct, kw_only=True):
    domain: str
    removed: bool
    in_force: str | None  # what serves the domain now: "file", or None


class ResetDone(msgspec.Struct, kw_only=True):
    reset: int
    lsn: int


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
        parts = path[len(ADMIN_PATH) :].strip("/").split("/") if path != ADMIN_PATH else []
        if not parts:
            if method != "GET":
                raise MethodNotAllowed("use GET to list the domains")
            summaries = [DomainSummary(domain=name, source=source) for name, source in self._registry.domains()]
            return DomainList(domains=summaries)
        domain = parts[0]
        if len(parts) == 2 and parts[1] == "reset":
            if method != "POST":
                raise MethodNotAllowed("use POST to reset")
            return await self._reset(domain, await self._body(receive, headers))
        if len(parts) != 1:
            raise NotFound(f"no route {path}")
        if method == "GET":
            return self._view(domain)
        if method == "PUT":
            policy = _policy_from_body(domain, await self._body(receive, headers), headers)
            await self._registry.put(policy)
            return self._view(domain)
        if method == "DELETE":
            removed = await self._registry.delete(domain)
            described = self._registry.describe(domain)
            return Deleted(domain=domain, removed=removed, in_force=None if described is None else described[1])
        raise MethodNotAllowed(f"{method} is not allowed on {path}")

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


def _policy_from_body(domain: str, body: bytes, headers: dict[bytes, bytes]) -> DomainPolicy:
    content_type = headers.get(b"content-type", b"application/json").split(b";", 1)[0].strip().lower()
    try:
        if content_type in (b"application/yaml", b"application/x-yaml", b"text/yaml"):
            policies = parse_policies(body, source="request body.yaml")
        elif content_type in (b"application/toml", b"text/toml"):
            policies = parse_policies(body, source="request body.toml")
        else:
            raw = msgspec.json.decode(body or b"{}")
            if isinstance(raw, dict):
                raw.setdefault("domain", domain)
            policies = [policy_from_mapping(raw, source="request body")]
    except (PolicyError, msgspec.DecodeError) as error:
        raise InvalidRequest(str(error)) from error
    if len(policies) != 1:
        raise InvalidRequest("send exactly one domain's policy")
    if policies[0].domain != domain:
        raise InvalidRequest(f"the body is the policy of {policies[0].domain!r}, the path names {domain!r}")
    return policies[0]
