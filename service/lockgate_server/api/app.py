"""create_app(settings): Litestar for the service routes, the lean dispatcher for /v1."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, MediaType, Request, Response, get
from litestar.exceptions import HTTPException
from litestar.params import FromQuery
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..gateway.loader import PolicyError
from ..gateway.openapi import gateway_openapi
from ..gateway.service import Gateway
from ..heap import freeze_startup_heap
from ..runtime import Runtime
from ..settings import Settings, load_settings
from .auth import KeyRing
from .dispatch import Dispatcher, Receive, Scope, Send
from .forward import Forwarder
from .metrics import Metrics
from .openapi import ApiPart, openapi_document
from .problems import PROBLEM_BASE

log = logging.getLogger("lockgate")

_SERVICE_PATHS: dict[str, Any] = {
    "/healthz": {"get": {"operationId": "healthz", "summary": "The process is up", "tags": ["service"],
                         "security": [{}], "responses": {"200": {"description": "Alive"},
                                                          "503": {"description": "The node broke: restart it"}}}},
    "/readyz": {"get": {"operationId": "readyz", "summary": "Store reachable; shards loaded or relayed",
                        "tags": ["service"], "security": [{}],
                        "parameters": [{"name": "active", "in": "query", "required": False,
                                        "schema": {"type": "boolean"},
                                        "description": "Ready only if this node owns the shards itself"}],
                        "responses": {"200": {"description": "Ready"},
                                      "400": {"description": "active is not a boolean"},
                                      "503": {"description": "Not ready (loading, store away, or a standby with "
                                                              "no live node to relay to)"}}}},
    "/metrics": {"get": {"operationId": "metrics", "summary": "Prometheus metrics", "tags": ["service"],
                         "security": [{}], "responses": {"200": {"description": "Text exposition format"}}}},
    "/openapi.json": {"get": {"operationId": "openapi", "summary": "This document", "tags": ["service"],
                              "security": [{}], "responses": {"200": {"description": "OpenAPI 3.1"}}}},
}  # fmt: skip


_V1 = ("v1",)


class LockgateApp:
    """The ASGI callable the server runs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keyring = KeyRing(settings.api_keys)
        _refuse_open_non_loopback(settings, self.keyring)
        self.metrics = Metrics()
        self.runtime = Runtime(settings)
        self.dispatcher = Dispatcher(settings, self.keyring, self.runtime.current_engine, self.metrics)
        self.forwarder = Forwarder(settings, lambda: self.runtime.engine, self.metrics)
        try:
            self.gateway = Gateway(settings, self.keyring, self.runtime.current_engine, self.metrics, self.forwarder)
        except PolicyError as error:
            raise SystemExit(f"gateway policies: {error}") from error
        self.openapi = openapi_document(ApiPart(paths=_SERVICE_PATHS), gateway_openapi())
        self.litestar = self._build_litestar()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.forwarder.standing_by and self._relayed(scope["path"]):
            if self.forwarder.relayed_before(scope):
                await self.forwarder.refuse_relayed(scope, send)
            else:
                local = self.gateway if self.gateway.decides(scope["path"]) else None
                await self.forwarder(scope, receive, send, local)
        elif scope["type"] == "http" and self.gateway.handles(scope["path"]):
            await self.gateway(scope, receive, send)
        elif scope["type"] == "http" and scope["path"].startswith("/v1/"):
            self.metrics.http_requests.inc(_V1)
            await self.dispatcher(scope, receive, send)
        else:
            await self.litestar(scope, receive, send)  # type: ignore[arg-type]

    def _relayed(self, path: str) -> bool:
        """Object and gateway routes, which a standby relays to the active node."""
        return path.startswith("/v1/") or self.gateway.handles(path)

    def _build_litestar(self) -> Litestar:
        runtime, metrics, openapi, forwarder = self.runtime, self.metrics, self.openapi, self.forwarder

        @asynccontextmanager
        async def lifespan(_: Litestar) -> AsyncIterator[None]:
            if self.keyring.open:
                log.warning("no API keys configured: running OPEN, on loopback %s only", self.settings.host)
            async with runtime.running() as engine:
                metrics.bind(engine)
                async with self.gateway.running(runtime.store_url):
                    log.info("start-up heap frozen: %d objects the collector no longer walks", freeze_startup_heap())
                    try:
                        yield
                    finally:
                        await forwarder.close()

        @get("/healthz", media_type=MediaType.JSON, include_in_schema=False)
        async def healthz() -> Response[dict[str, str]]:
            engine = runtime.engine
            if engine is not None and engine.broken is not None:
                return Response({"status": "broken", "reason": engine.broken}, status_code=503)
            return Response({"status": "ok"})

        @get("/readyz", media_type=MediaType.JSON, include_in_schema=False)
        async def readyz(active: FromQuery[bool] = False) -> Response[dict[str, Any]]:
            """Ready when a request sent here now would be answered: by this node, or by the
            active node a standby relays to. `?active=1`: only the node that owns the shards."""
            engine = runtime.engine
            store_ok = False
            if engine is not None:
                try:
                    store_ok = await engine.store_reachable()
                except Exception:  # any failure to reach the store means "not ready"
                    store_ok = False
            shards_ready = engine is not None and engine.ready
            standby = engine is not None and engine.standing_by  # another live node owns the shards
            relays_to = await forwarder.owner_ready() if standby and store_ok and not active else None
            body = {
                "ready": store_ok and (shards_ready or relays_to is not None),
                "store_reachable": store_ok,
                "shards_loaded": shards_ready,
                "standby": standby,
                "relays_to": relays_to,
            }
            return Response(body, status_code=200 if body["ready"] else 503)

        @get("/metrics", include_in_schema=False)
        async def metrics_text() -> Response[bytes]:
            return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

        @get("/openapi.json", media_type=MediaType.JSON, include_in_schema=False)
        async def openapi_json() -> dict[str, Any]:
            return openapi

        def problem(_: Request[Any, Any, Any], error: HTTPException) -> Response[dict[str, Any]]:
            slug = {404: "not-found", 405: "method-not-allowed"}.get(error.status_code, "error")
            body = {"type": PROBLEM_BASE + slug, "title": str(error.detail), "status": error.status_code}
            return Response(body, status_code=error.status_code, media_type="application/problem+json")

        return Litestar(
            route_handlers=[healthz, readyz, metrics_text, openapi_json],
            lifespan=[lifespan],
            openapi_config=None,
            exception_handlers={HTTPException: problem},
            # Its default config would replace the CLI's: LOCKGATE_LOG_LEVEL and the format.
            logging_config=None,
        )


def _refuse_open_non_loopback(settings: Settings, keyring: KeyRing) -> None:
    if not keyring.open:
        return
    try:
        loopback = ipaddress.ip_address(settings.host).is_loopback
    except ValueError:
        loopback = settings.host == "localhost"
    if not loopback:
        raise SystemExit(f"refusing to listen on {settings.host} without API keys; configure LOCKGATE_API_KEYS")


def create_app(settings: Settings | None = None) -> LockgateApp:
    return LockgateApp(settings or load_settings())
