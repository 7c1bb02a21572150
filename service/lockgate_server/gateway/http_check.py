"""The HTTP edges of the gateway: the check endpoint and envoyproxy/ratelimit's /json twin.

    ANY /check/{domain}[/original/path]   (or /check with X-Lockgate-Domain: {domain})

answers 200 (allowed) or the domain's deny_status (default 429) with RateLimit-Policy,
RateLimit, X-RateLimit-* and, on a denial, Retry-After. nginx auth_request, Traefik
ForwardAuth and Envoy ext_authz (HTTP service) call it as it is; see docs/gateways.md.
Its caller is the gateway, and the gateway forwards the client's own Authorization and
X-API-Key, so the gateway's Lockgate key travels in X-Lockgate-Key (write right on the
namespace "gateway", when keys are configured). A check charges 1, or what the header named
by the domain's http.hits_addend_header says (0 peeks) -- a header the gateway must set itself.
A check whose headers disagree about the original request (X-Original-URI against
X-Forwarded-Uri, two different copies of the API key header: see request_data.py) gets the
domain's deny_status, charging nothing, and counts as "ambiguous" in the decisions metric.

    POST /json   body: a RateLimitRequest as proto3 JSON

answers the RateLimitResponse as proto3 JSON, with 429 when it is OVER_LIMIT, like
envoyproxy/ratelimit's /json; auth as on /v1 (Authorization: Bearer or X-API-Key).

Raw ASGI, like /v1: Litestar's per-request machinery would cost more than the decision.
"""

from __future__ import annotations

from typing import Final

from google.protobuf import json_format

from .. import limits
from ..api import problems
from ..api.auth import KeyRing, authorize
from ..errors import (
    Forbidden,
    InvalidRequest,
    LockgateError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    Unavailable,
)
from ..settings import Settings
from .asgi import Receive, Scope, Send, presented_key, read_body, send_json, send_problem
from .decision import Decider
from .headers import rate_limit_headers
from .policy import HttpSpec
from .proto.envoy.service.ratelimit.v3.rls_pb2 import RateLimitRequest
from .registry import PolicyRegistry
from .request_data import AmbiguousRequest, CheckHeaders, RequestData, descriptors_for
from .rls import request_from_proto, response_from_verdict, unknown_domain_response
from .telemetry import GatewayMetrics

CHECK_PATH: Final = "/check"
JSON_PATH: Final = "/json"
JSON_METHOD: Final = "POST"
JSON_OVER_LIMIT_STATUS: Final = 429
DOMAIN_HEADER: Final = "X-Lockgate-Domain"
KEY_HEADER: Final = "X-Lockgate-Key"

CHECK_CONTENT_TYPE: Final = "text/plain; charset=utf-8"
ALLOWED_BODY: Final = b""
DENIED_BODY: Final = b"rate limited\n"
AMBIGUOUS_BODY_PREFIX: Final = "refused, the original request is ambiguous: "

CHECK_ERRORS: Final = (Unauthorized, Forbidden, NotFound, InvalidRequest)
"""What the check answers as problem+json (the last: a bad hits_addend_header, or differing copies
of it, of X-Lockgate-Key or of X-Lockgate-Domain); /openapi.json lists them."""
JSON_ERRORS: Final = (Unauthorized, Forbidden, PayloadTooLarge, InvalidRequest, Unavailable)

_DOMAIN_HEADER: Final = DOMAIN_HEADER.lower().encode()
_KEY_HEADER: Final = KEY_HEADER.lower().encode()
_CONTENT_TYPE: Final = CHECK_CONTENT_TYPE.encode()


class GatewayHttp:
    def __init__(
        self,
        settings: Settings,
        keyring: KeyRing,
        registry: PolicyRegistry,
        decider: Decider,
        metrics: GatewayMetrics,
    ) -> None:
        self._settings = settings
        self._keyring = keyring
        self._registry = registry
        self._decider = decider
        self._metrics = metrics

    # --- /check ------------------------------------------------------------------------------
    async def check(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            headers = CheckHeaders(scope["headers"])
            if not self._keyring.open:
                presented = headers.get(_KEY_HEADER)
                principal = self._keyring.authenticate(presented.decode("latin-1") if presented else None)
                authorize(principal, limits.GATEWAY_NAMESPACE, "write")
            domain_name, rest = domain_and_rest(scope["path"], headers)
            domain = self._registry.get(domain_name)
            if domain is None:
                self._metrics.unknown_domain()
                raise NotFound(f"no gateway policy for domain {domain_name!r}")
            client = scope.get("client")
            request = RequestData(
                headers,
                scope["method"],
                rest,
                client[0] if client else None,
                trusted_hops=self._settings.forwarded_for_trusted_hops,
            )
            try:
                descriptors = descriptors_for(domain.http, request)
            except AmbiguousRequest as error:
                # The domain's denial, not a problem: it is the one answer every gateway recipe
                # passes on as it should (nginx's auth_request turns anything but 2xx, 401 and
                # 403 into a 500), and the client made it ambiguous. Nothing is charged.
                self._metrics.ambiguous(domain.name)
                body = f"{AMBIGUOUS_BODY_PREFIX}{error.detail}\n".encode()
                await _send_answer(send, domain.policy.deny_status, [], body)
                return
            verdict = await self._decider.decide(domain, descriptors, hits_addend=_hits_addend(domain.http, headers))
        except LockgateError as error:
            await send_problem(send, problems.problem_for(error))
            return
        status = 200 if verdict.allowed else domain.policy.deny_status
        response_headers = [(name.encode(), value.encode("latin-1")) for name, value in rate_limit_headers(verdict)]
        await _send_answer(send, status, response_headers, ALLOWED_BODY if verdict.allowed else DENIED_BODY)

    # --- /json ---------------------------------------------------------------------------------
    async def json(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope["headers"])
        try:
            if scope["method"] != JSON_METHOD:
                raise MethodNotAllowed(f"use {JSON_METHOD} for {JSON_PATH}")
            if not self._keyring.open:
                authorize(self._keyring.authenticate(presented_key(headers)), limits.GATEWAY_NAMESPACE, "write")
            body = await read_body(receive, headers, self._settings.max_body_bytes)
            try:
                message = json_format.Parse(body or b"{}", RateLimitRequest())
            except (json_format.ParseError, UnicodeDecodeError) as error:  # Parse decodes bytes as UTF-8
                raise InvalidRequest(f"not a RateLimitRequest: {error}") from error
            domain_name, descriptors, hits_addend = request_from_proto(message)
            domain = self._registry.get(domain_name)
            if domain is None:
                self._metrics.unknown_domain()
                response = unknown_domain_response(len(descriptors))
            else:
                verdict = await self._decider.decide(domain, descriptors, hits_addend=hits_addend)
                if verdict.store_failed and not verdict.allowed:
                    raise Unavailable(f"the store could not decide in time ({verdict.failure}); failure_mode deny")
                response = response_from_verdict(verdict)
        except LockgateError as error:
            await send_problem(send, problems.problem_for(error))
            return
        payload = json_format.MessageToJson(response, indent=None).encode()
        over_limit = response.overall_code == response.OVER_LIMIT
        await send_json(send, JSON_OVER_LIMIT_STATUS if over_limit else 200, payload)


async def _send_answer(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    headers.append((b"content-type", _CONTENT_TYPE))
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def domain_and_rest(path: str, headers: CheckHeaders) -> tuple[str, str]:
    """/check/{domain}/rest -> (domain, "/rest"); /check alone takes the domain from X-Lockgate-Domain."""
    tail = path[len(CHECK_PATH) :].lstrip("/")
    if tail:
        domain, slash, rest = tail.partition("/")
        return domain, slash + rest
    header = headers.get(_DOMAIN_HEADER)
    if not header:
        raise NotFound("name the domain in the path (/check/{domain}) or in X-Lockgate-Domain")
    return header.decode("latin-1"), "/"


def _hits_addend(spec: HttpSpec, headers: CheckHeaders) -> int:
    """1, unless the domain names a header the gateway sets (0 peeks); never from the query."""
    if spec.hits_addend_header is None:
        return 1
    raw = headers.get(spec.hits_addend_header.lower().encode())
    if raw is None:
        return 1
    if not raw.isdigit() or int(raw) > limits.RATE_COST_MAX:
        raise InvalidRequest(f"{spec.hits_addend_header} is a whole number from 0 to {limits.RATE_COST_MAX}")
    return int(raw)
