"""The gateway as the app runs it: its paths, and what it starts in the app's lifespan."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Final

import msgspec

from .. import limits
from ..api.auth import KeyRing
from ..api.forward import Forwarder
from ..api.metrics import Metrics
from ..engine.node import Engine
from ..errors import LockgateError
from ..settings import Settings
from .admin import ADMIN_PATH, PolicyAdmin
from .asgi import Receive, Scope, Send
from .decision import Decider, relay_timeout_s
from .http_check import CHECK_PATH, JSON_PATH, GatewayHttp, domain_and_rest
from .loader import load_policy_files
from .registry import PolicyRegistry
from .request_data import CheckHeaders
from .rls import RateLimitService, start_server
from .rls_relay import RlsRelay
from .telemetry import GatewayMetrics

_PREFIXES: Final = (CHECK_PATH, JSON_PATH, ADMIN_PATH)


class Gateway:
    """Policy files are read here, so a bad file stops the server before it listens."""

    def __init__(
        self,
        settings: Settings,
        keyring: KeyRing,
        engine: Callable[[], Engine],
        metrics: Metrics,
        forwarder: Forwarder | None = None,
    ) -> None:
        self.settings = settings
        self.registry = PolicyRegistry(load_policy_files(settings.policy_files))
        gateway_metrics = GatewayMetrics(metrics)
        self.decider = Decider(engine, gateway_metrics)
        self.http = GatewayHttp(settings, keyring, self.registry, self.decider, gateway_metrics)
        self.admin = PolicyAdmin(settings, keyring, self.registry, self.decider)
        relay = RlsRelay(forwarder) if forwarder is not None else None
        self.rls = RateLimitService(self.registry, self.decider, keyring, gateway_metrics, relay)

    @staticmethod
    def decides(path: str) -> bool:
        """A rate-limit decision (not the admin API): what a standby can answer by failure_mode."""
        return path in (JSON_PATH, CHECK_PATH) or path.startswith(CHECK_PATH + "/")

    def relay_timeout_s(self, scope: Scope, body: bytes) -> float:
        """How long a standby waits for the active node's decision on this request."""
        return relay_timeout_s(self.registry.get(_domain_of(scope, body)))

    @staticmethod
    def handles(path: str) -> bool:
        if not path.startswith(_PREFIXES):
            return False
        return path in (CHECK_PATH, JSON_PATH, ADMIN_PATH) or path.startswith((CHECK_PATH + "/", ADMIN_PATH + "/"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if path.startswith(CHECK_PATH):
            await self.http.check(scope, receive, send)
        elif path == JSON_PATH:
            await self.http.json(scope, receive, send)
        else:
            await self.admin(scope, receive, send)

    @contextlib.asynccontextmanager
    async def running(self, store_url: str) -> AsyncIterator[None]:
        """Runtime policies from the store, their watcher, and the gRPC server (if its port is not 0)."""
        await self.registry.start(store_url)
        watcher = asyncio.create_task(self.registry.watch(), name="lockgate-policy-watch")
        server = None
        try:
            if self.settings.grpc_port:
                server = await start_server(self.rls, host=self.settings.host, port=self.settings.grpc_port)
            yield
        finally:
            if server is not None:
                await server.stop(limits.GRPC_STOP_GRACE_S)
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await self.registry.stop()


class _Named(msgspec.Struct):
    domain: str = ""


def _domain_of(scope: Scope, body: bytes) -> str:
    """The domain a /check or /json request names ("" if it names none, or not readably)."""
    if scope["path"] == JSON_PATH:
        try:
            return msgspec.json.decode(body or b"{}", type=_Named).domain
        except msgspec.MsgspecError:
            return ""
    try:
        return domain_and_rest(scope["path"], CheckHeaders(scope["headers"]))[0]
    except LockgateError:
        return ""
