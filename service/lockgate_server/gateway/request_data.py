"""Descriptor entries of an HTTP check, from the data a gateway forwards.

nginx auth_request, Traefik ForwardAuth and Envoy ext_authz (HTTP) each forward the
original request differently: nginx sends X-Original-URI / X-Original-Method when told to,
Traefik always sends X-Forwarded-Method / -Uri / -Host / -For, and Envoy appends the original
path to its path_prefix and keeps the method. The sources of policy.EntrySource read all of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Final

from .decision import RequestDescriptor
from .policy import EntrySource, HttpSpec

Headers = Mapping[bytes, bytes]

_API_KEY_DIGEST_HEX: Final = 32

FORWARDED_HEADERS: Final[dict[str, tuple[str, ...]]] = {
    "client_ip": ("X-Forwarded-For", "X-Real-IP"),
    "path": ("X-Original-URI", "X-Forwarded-Uri"),
    "method": ("X-Original-Method", "X-Forwarded-Method"),
    "host": ("X-Forwarded-Host", "Host"),
}
"""The headers a source reads, the first one present wins; without them, the check's own data."""
_WIRE_NAMES: Final = {
    source: tuple(name.lower().encode() for name in names) for source, names in FORWARDED_HEADERS.items()
}


class RequestData:
    """One check request's view: its headers (lower-case names), method and the path after the domain.

    trusted_hops: Settings.forwarded_for_trusted_hops, the proxies in front of the gateway.
    """

    __slots__ = ("client", "headers", "method", "path", "trusted_hops")

    def __init__(self, headers: Headers, method: str, path: str, client: str | None, *, trusted_hops: int = 0) -> None:
        self.headers = headers
        self.method = method
        self.path = path
        self.client = client
        self.trusted_hops = trusted_hops

    def header(self, name: bytes) -> str | None:
        raw = self.headers.get(name)
        return raw.decode("latin-1") if raw else None

    def first_header(self, names: tuple[bytes, ...]) -> str | None:
        for name in names:
            value = self.header(name)
            if value:
                return value
        return None


def descriptors_for(spec: HttpSpec, request: RequestData) -> list[RequestDescriptor]:
    """One descriptor per configured list whose every entry has a value."""
    descriptors = []
    for descriptor in spec.descriptors:
        entries = []
        for source in descriptor.entries:
            value = _value_of(source, spec, request)
            if value is None:
                value = source.default
            if value is None:
                break
            entries.append((source.key, value))  # any value: matcher.storable_value bounds its state key
        else:
            descriptors.append(RequestDescriptor(tuple(entries)))
    return descriptors


def _value_of(source: EntrySource, spec: HttpSpec, request: RequestData) -> str | None:
    reader = _READERS[source.source]
    return reader(source, spec, request)


def _client_ip(_: EntrySource, __: HttpSpec, request: RequestData) -> str | None:
    forwarded_for, real_ip = _WIRE_NAMES["client_ip"]
    forwarded = request.header(forwarded_for)
    if forwarded:
        hops = [hop for hop in (part.strip() for part in forwarded.split(",")) if hop]
        if hops:
            # Every proxy appends the address it got the request from, so only the right-most
            # hops (the gateway's and those of the trusted proxies in front of it) are known to
            # be true; anything left of them is whatever the client sent. With fewer hops than
            # trusted proxies, the left-most was still written by one of them.
            return hops[max(0, len(hops) - 1 - request.trusted_hops)]
    return request.header(real_ip) or request.client


def _api_key(_: EntrySource, spec: HttpSpec, request: RequestData) -> str | None:
    key = request.header(spec.api_key_header.lower().encode())
    if not key:
        return None
    # The store keeps state keys in its log and snapshots: never a client's secret in the clear.
    return "sha256:" + hashlib.sha256(key.encode("latin-1")).hexdigest()[:_API_KEY_DIGEST_HEX]


def _path(_: EntrySource, __: HttpSpec, request: RequestData) -> str | None:
    uri = request.first_header(_WIRE_NAMES["path"]) or request.path
    return uri.split("?", 1)[0] or "/"


def _method(_: EntrySource, __: HttpSpec, request: RequestData) -> str | None:
    return request.first_header(_WIRE_NAMES["method"]) or request.method


def _host(_: EntrySource, __: HttpSpec, request: RequestData) -> str | None:
    return request.first_header(_WIRE_NAMES["host"])


def _header(source: EntrySource, _: HttpSpec, request: RequestData) -> str | None:
    assert source.header is not None
    return request.header(source.header.lower().encode())


def _constant(source: EntrySource, _: HttpSpec, __: RequestData) -> str | None:
    return source.value


_READERS: Final[dict[str, Callable[[EntrySource, HttpSpec, RequestData], str | None]]] = {
    "client_ip": _client_ip,
    "api_key": _api_key,
    "path": _path,
    "method": _method,
    "host": _host,
    "header": _header,
    "value": _constant,
}
