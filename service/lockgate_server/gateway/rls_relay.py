"""On a standby, ShouldRateLimit goes to the active node as its JSON twin (POST /json).

The standby relays HTTP requests to the active node as they came; a gRPC call takes the
same way by its JSON form, which /json reads and writes in the proto3 JSON mapping, so the
answer converts back to the very RateLimitResponse the active node decided. Envoy keeps its
gRPC connections to whichever pod it reached first, so without this half of its calls to a
two-pod deployment would fail UNAVAILABLE.
"""

from __future__ import annotations

from typing import Final

import msgspec
from google.protobuf import json_format

from ..api.forward import Forwarder
from .grpc_server import Abort, Metadata, StatusCode
from .http_check import JSON_OVER_LIMIT_STATUS, JSON_PATH
from .proto.envoy.service.ratelimit.v3.rls_pb2 import RateLimitRequest, RateLimitResponse

_CREDENTIALS: Final = (b"authorization", b"x-api-key")
_CODE_BY_STATUS: Final = {
    400: StatusCode.INVALID_ARGUMENT,
    401: StatusCode.UNAUTHENTICATED,
    403: StatusCode.PERMISSION_DENIED,
    413: StatusCode.INVALID_ARGUMENT,
    422: StatusCode.INVALID_ARGUMENT,
}


class RlsRelay:
    def __init__(self, forwarder: Forwarder) -> None:
        self._forwarder = forwarder

    @property
    def standing_by(self) -> bool:
        return self._forwarder.standing_by

    async def should_rate_limit(
        self, request: RateLimitRequest, metadata: Metadata, timeout_s: float
    ) -> RateLimitResponse:
        """The active node's answer; Abort if it refused the call, LockgateError if it gave no
        answer within `timeout_s`."""
        headers = [(b"content-type", b"application/json")]
        headers += [(name, metadata[name]) for name in _CREDENTIALS if name in metadata]
        body = json_format.MessageToJson(request, indent=None).encode()
        status, answer = await self._forwarder.relay("POST", JSON_PATH, headers, body, timeout_s)
        if status in (200, JSON_OVER_LIMIT_STATUS):
            response = RateLimitResponse()
            try:
                json_format.Parse(answer, response)
            except json_format.ParseError as error:
                raise Abort(StatusCode.UNAVAILABLE, f"the active node's answer: {error}") from error
            return response
        detail = _problem_detail(answer) or f"the active node answered HTTP {status}"
        raise Abort(_CODE_BY_STATUS.get(status, StatusCode.UNAVAILABLE), detail)


def _problem_detail(answer: bytes) -> str | None:
    try:
        problem = msgspec.json.decode(answer)
    except msgspec.DecodeError:
        return None
    return str(problem.get("detail") or problem.get("title") or "") or None if isinstance(problem, dict) else None
