"""The Envoy rate limit service: envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit.

Wire compatible with Envoy's ratelimit filters and with envoyproxy/ratelimit's clients:
the messages come from our own .proto files with Envoy's names and field numbers (see
proto/). The request maps onto one Decider.decide; the answer carries one status per
descriptor in request order. When the store cannot decide in time and the domain's
failure_mode is deny, the call fails with UNAVAILABLE, so Envoy's own failure_mode_deny
applies; with failure_mode allow the answer is OK.

The service runs on our own gRPC server (grpc_server.py, which says why); clients, our tests
included, use grpcio and the generated stub in proto/.../rls_pb2_grpc.py.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Final

from google.protobuf.duration_pb2 import Duration

from .. import limits
from ..api.auth import KeyRing, authorize
from ..errors import Forbidden, InvalidRequest, LockgateError, Unauthorized
from .asgi import presented_key
from .decision import UNLIMITED_REMAINING, Decider, DescriptorStatus, RequestDescriptor, Verdict, relay_timeout_s
from .grpc_server import Abort, GrpcServer, Metadata, StatusCode, UnaryMethod
from .headers import rate_limit_headers
from .http2 import ConnectionLimits
from .proto.envoy.config.core.v3.base_pb2 import HeaderValue
from .proto.envoy.service.ratelimit.v3.rls_pb2 import RateLimitRequest, RateLimitResponse
from .registry import PolicyRegistry
from .telemetry import GatewayMetrics

if TYPE_CHECKING:
    from .rls_relay import RlsRelay

log = logging.getLogger("lockgate.gateway")

SERVICE_NAME: Final = "envoy.service.ratelimit.v3.RateLimitService"
METHOD_NAME: Final = "ShouldRateLimit"

# A caller's override names its unit by envoy.type.v3.RateLimitUnit, which has no WEEK in the
# versions of the Envoy API we could check (RateLimitResponse.RateLimit.Unit has WEEK = 7).
_UNIT_BY_NUMBER: Final = {1: "second", 2: "minute", 3: "hour", 4: "day", 5: "month", 6: "year"}
_PROTO_UNITS: Final[dict[str, RateLimitResponse.RateLimit.Unit]] = {
    "second": RateLimitResponse.RateLimit.SECOND,
    "minute": RateLimitResponse.RateLimit.MINUTE,
    "hour": RateLimitResponse.RateLimit.HOUR,
    "day": RateLimitResponse.RateLimit.DAY,
    "week": RateLimitResponse.RateLimit.WEEK,
    "month": RateLimitResponse.RateLimit.MONTH,
    "year": RateLimitResponse.RateLimit.YEAR,
}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

Code = RateLimitResponse.Code
Unit = RateLimitResponse.RateLimit.Unit


def request_from_proto(request: RateLimitRequest) -> tuple[str, list[RequestDescriptor], int]:
    """(domain, descriptors, hits_addend) of a request, validated; InvalidRequest otherwise."""
    if not request.domain:
        raise InvalidRequest("rate limit domain must not be empty")
    if not request.descriptors:
        raise InvalidRequest("rate limit descriptor list must not be empty")
    if len(request.descriptors) > limits.GATEWAY_DESCRIPTORS_PER_REQUEST_MAX:
        raise InvalidRequest(f"at most {limits.GATEWAY_DESCRIPTORS_PER_REQUEST_MAX} descriptors per request")
    descriptors = []
    for descriptor in request.descriptors:
        entries = tuple((entry.key, entry.value) for entry in descriptor.entries)
        check_entries(entries)
        override = None
        if descriptor.HasField("limit"):
            limit = descriptor.limit
            override = (limit.requests_per_unit, _UNIT_BY_NUMBER.get(int(limit.unit), "unknown"))
        hits_addend = None
        if descriptor.HasField("hits_addend"):
            hits_addend = min(descriptor.hits_addend.value, limits.RATE_COST_MAX)
        descriptors.append(RequestDescriptor(entries, override, hits_addend))
    # proto3 cannot tell 0 from unset: 0 counts as 1, like Envoy and envoyproxy/ratelimit.
    return request.domain, descriptors, min(request.hits_addend or 1, limits.RATE_COST_MAX)


def check_entries(entries: Sequence[tuple[str, str]]) -> None:
    if not entries:
        raise InvalidRequest("a descriptor needs at least one entry")
    if len(entries) > limits.GATEWAY_ENTRIES_PER_DESCRIPTOR_MAX:
        raise InvalidRequest(f"a descriptor has at most {limits.GATEWAY_ENTRIES_PER_DESCRIPTOR_MAX} entries")
    # Only keys are checked: they come from the gateway's configuration. Values are whatever a
    # client sent; refusing one would fail the call and Envoy would skip every limit of it, so
    # any value is accepted and matcher.storable_value bounds it in the state key.
    for key, _ in entries:
        if not key or len(key) > limits.GATEWAY_ENTRY_KEY_MAX_LENGTH:
            raise InvalidRequest(f"descriptor keys have 1 to {limits.GATEWAY_ENTRY_KEY_MAX_LENGTH} characters")
        if _CONTROL.search(key):
            raise InvalidRequest("descriptor keys may not hold control characters")


def response_from_verdict(verdict: Verdict) -> RateLimitResponse:
    response = RateLimitResponse(overall_code=Code.OK if verdict.allowed else Code.OVER_LIMIT)
    for status in verdict.statuses:
        _add_status(response, status)
    for name, value in rate_limit_headers(verdict):
        response.response_headers_to_add.append(HeaderValue(key=name, value=value))
    return response


def unknown_domain_response(descriptors: int) -> RateLimitResponse:
    """envoyproxy/ratelimit answers OK for a domain it has no configuration for."""
    response = RateLimitResponse(overall_code=Code.OK)
    for _ in range(descriptors):
        response.statuses.add(code=Code.OK)
    return response


def _add_status(response: RateLimitResponse, status: DescriptorStatus) -> None:
    limit = status.limit
    if limit is None:
        response.statuses.add(code=Code.OK)
        return
    if limit.unlimited:
        response.statuses.add(code=Code.OK, limit_remaining=UNLIMITED_REMAINING)
        return
    reset_ms = status.reset_after_ms
    response.statuses.add(
        code=Code.OVER_LIMIT if status.denies else Code.OK,
        current_limit=RateLimitResponse.RateLimit(
            name=limit.name,
            requests_per_unit=min(limit.requests, UNLIMITED_REMAINING),
            # UNKNOWN for a period that is no unit: the Envoy API cannot say "7 per 10 s".
            unit=_PROTO_UNITS.get(limit.unit or "", RateLimitResponse.RateLimit.UNKNOWN),
        ),
        limit_remaining=min(status.remaining, UNLIMITED_REMAINING),
        duration_until_reset=Duration(seconds=reset_ms // 1000, nanos=(reset_ms % 1000) * 1_000_000),
    )


class RateLimitService:
    def __init__(
        self,
        registry: PolicyRegistry,
        decider: Decider,
        keyring: KeyRing,
        metrics: GatewayMetrics,
        relay: RlsRelay | None = None,
    ) -> None:
        self._registry = registry
        self._decider = decider
        self._keyring = keyring
        self._metrics = metrics
        self._relay = relay

    async def should_rate_limit(self, request: RateLimitRequest, metadata: Metadata) -> RateLimitResponse:
        """Raises Abort with the gRPC status of a refusal."""
        if self._relay is not None and self._relay.standing_by:
            timeout_s = relay_timeout_s(self._registry.get(request.domain))
            try:  # the active node authenticates and decides; its refusals come back as Abort
                return await self._relay.should_rate_limit(request, metadata, timeout_s)
            except LockgateError:
                pass  # no answer in time: decided here, where the engine (a standby) fails and failure_mode applies
        try:
            if not self._keyring.open:
                authorize(self._keyring.authenticate(presented_key(metadata)), limits.GATEWAY_NAMESPACE, "write")
            domain_name, descriptors, hits_addend = request_from_proto(request)
            domain = self._registry.get(domain_name)
            if domain is None:
                self._metrics.unknown_domain()
                return unknown_domain_response(len(descriptors))
            verdict = await self._decider.decide(domain, descriptors, hits_addend=hits_addend)
        except LockgateError as error:
            raise Abort(_status_of(error), error.detail) from error
        if verdict.store_failed and not verdict.allowed:
            raise Abort(
                StatusCode.UNAVAILABLE, f"the store could not decide in time ({verdict.failure}); failure_mode deny"
            )
        return response_from_verdict(verdict)

    def methods(self) -> dict[str, UnaryMethod]:
        return {
            f"/{SERVICE_NAME}/{METHOD_NAME}": UnaryMethod(
                decode=RateLimitRequest.FromString,
                encode=RateLimitResponse.SerializeToString,
                handler=self.should_rate_limit,
            )
        }


def _status_of(error: LockgateError) -> StatusCode:
    if isinstance(error, Unauthorized):
        return StatusCode.UNAUTHENTICATED
    if isinstance(error, Forbidden):
        return StatusCode.PERMISSION_DENIED
    if isinstance(error, InvalidRequest):
        return StatusCode.INVALID_ARGUMENT
    return StatusCode.UNAVAILABLE  # the store or the engine: Envoy's failure_mode_deny applies


def grpc_server(methods: Mapping[str, UnaryMethod]) -> GrpcServer:
    """A gRPC server with the node's limits (limits.py) for `methods`."""
    return GrpcServer(
        methods,
        ConnectionLimits(
            streams_max=limits.GRPC_STREAMS_PER_CONNECTION_MAX,
            header_list_bytes_max=limits.GRPC_HEADER_LIST_BYTES_MAX,
            body_bytes_max=limits.GRPC_MESSAGE_BYTES_MAX + 5,
            buffered_bytes_max=limits.GRPC_CONNECTION_BUFFER_BYTES_MAX,
            handshake_timeout_s=limits.GRPC_HANDSHAKE_TIMEOUT_MS / 1000,
            idle_timeout_s=limits.GRPC_IDLE_TIMEOUT_MS / 1000,
            request_timeout_s=limits.GRPC_REQUEST_TIMEOUT_MS / 1000,
        ),
        connections_max=limits.GRPC_CONNECTIONS_MAX,
    )


async def start_server(service: RateLimitService, *, host: str, port: int) -> GrpcServer:
    """The gRPC server on the running event loop (the engine's): every call is applied inline there."""
    server = grpc_server(service.methods())
    await server.start(host, port)
    log.info("Envoy rate limit service (gRPC) on %s:%d", host, port)
    return server
