"""Descriptor entries of an HTTP check, from the data a gateway forwards.

nginx auth_request, Traefik ForwardAuth and Envoy ext_authz (HTTP) each forward the
original request differently: nginx sends X-Original-URI / X-Original-Method when told to,
Traefik always sends X-Forwarded-Method / -Uri / -Host / -For, and Envoy appends the original
path to its path_prefix and keeps the method. The sources of policy.EntrySource read all of them.

Gateways also pass the client's own headers on to the check (Traefik all of them, nginx those
it does not set itself), so a client can add the *other* gateway's header, or a second copy
of one. Whenever two headers the check reads say different things about the same datum, the
request's origin is ambiguous and it is refused (AmbiguousRequest), never counted under a key
the client chose.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Final

from ..errors import InvalidRequest
from .decision import RequestDescriptor
from .policy import EntrySource, HttpSpec

_API_KEY_DIGEST_HEX: Final = 32

FORWARDED_HEADERS: Final[dict[str, tuple[str, ...]]] = {
    "client_ip": ("X-Forwarded-For", "X-Real-IP"),
    "path": ("X-Original-URI", "X-Forwarded-Uri"),
    "method": ("X-Original-Method", "X-Forwarded-Method"),
    "host": ("X-Forwarded-Host",),
}
"""The headers a source reads. client_ip: X-Real-IP only without X-Forwarded-For; path and
method: nginx's header or Traefik's, refused when both are present and disagree; without any
of them, the check's own data (for host, its Host)."""
_WIRE_NAMES: Final = {
    source: tuple(name.lower().encode() for name in names) for source, names in FORWARDED_HEADERS.items()
}
_HOST: Final = b"host"


class AmbiguousRequest(InvalidRequest):
    """Two headers the check reads disagree about the original request; the check refuses it."""


class CheckHeaders:
    """A check request's headers by lower-case name, each read as one value or as a list.

    A backend reads the first copy of a repeated header (Go's Header.Get, Starlette), so
    counting any one copy would let a client vary another to get a fresh key: a one-value
    header whose copies differ is refused. X-Forwarded-For is a list (RFC 9110 section 5.3):
    its copies are one list, in order.
    """

    __slots__ = ("_last", "_repeated")

    def __init__(self, raw: Sequence[tuple[bytes, bytes]]) -> None:
        self._last = dict(raw)
        self._repeated: dict[bytes, list[bytes]] = {}
        if len(self._last) < len(raw):  # rare: some name came more than once
            copies: dict[bytes, list[bytes]] = {}
            for name, value in raw:
                copies.setdefault(name, []).append(value)
            self._repeated = {name: values for name, values in copies.items() if len(values) > 1}

    def get(self, name: bytes) -> bytes | None:
        """The header's value, None if absent; AmbiguousRequest if its copies differ."""
        copies = self._repeated.get(name)
        if copies is not None and any(value != copies[0] for value in copies):
            raise AmbiguousRequest(f"{name.decode('latin-1')} is sent more than once, with different values")
        return self._last.get(name)

    def joined(self, name: bytes) -> bytes | None:
        """A list-valued header: all its copies, in order, as one comma-separated list."""
        copies = self._repeated.get(name)
        return b", ".join(copies) if copies is not None else self._last.get(name)


class RequestData:
    """One check request's view: its headers, method and the path after the domain.

    trusted_hops: Settings.forwarded_for_trusted_hops, the proxies in front of the gateway.
    """

    __slots__ = ("client", "headers", "method", "path", "trusted_hops")

    def __init__(
        self, headers: CheckHeaders, method: str, path: str, client: str | None, *, trusted_hops: int = 0
    ) -> None:
        self.headers = headers
        self.method = method
        self.path = path
        self.client = client
        self.trusted_hops = trusted_hops

    def header(self, name: bytes) -> str | None:
        raw = self.headers.get(name)
        return raw.decode("latin-1") if raw else None

    def agreed(self, source: str, normalize: Callable[[str], str]) -> str | None:
        """The one value the headers of `source` give (normalized), None if none is present.

        AmbiguousRequest when two of them give different values: one was set by the gateway,
        the other by the client, and which is which depends on the gateway.
        """
        agreed: str | None = None
        agreed_index = 0
        for index, name in enumerate(_WIRE_NAMES[source]):
            raw = self.header(name)
            if not raw:
                continue
            value = normalize(raw)
            if agreed is None:
                agreed, agreed_index = value, index
            elif value != agreed:
                names = FORWARDED_HEADERS[source]
                raise AmbiguousRequest(
                    f"{names[agreed_index]} and {names[index]} name different {source}s of the original request"
                )
        return agreed


def descriptors_for(spec: HttpSpec, request: RequestData) -> list[RequestDescriptor]:
    """One descriptor per configured list whose every entry has a value; AmbiguousRequest (see
    the module) if a header an entry reads is ambiguous."""
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
    raw = request.headers.joined(forwarded_for)
    if raw:
        hops = [hop for hop in (part.strip() for part in raw.decode("latin-1").split(",")) if hop]
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


def _without_query(uri: str) -> str:
    return uri.split("?", 1)[0] or "/"


def _unchanged(value: str) -> str:
    return value


def _path(_: EntrySource, __: HttpSpec, request: RequestData) -> str | None:
    # Compared without the query: two URIs of one path count the same whatever their queries.
    forwarded = request.agreed("path", _without_query)
    return forwarded if forwarded is not None else _without_query(request.path)


def _method(_: EntrySource, __: HttpSpec, request: RequestData) -> str | None:
    return request.agreed("method", _unchanged) or request.method


def _host(_: EntrySource, __: HttpSpec, request: RequestData) -> str | None:
    # Host is the check request's own: behind nginx or Traefik, Lockgate's address, so never
    # compared with X-Forwarded-Host (they differ in every Traefik check).
    (forwarded_host,) = _WIRE_NAMES["host"]
    return request.header(forwarded_host) or request.header(_HOST)


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
