"""The `limits` library behind HTTP: the peer of Lockgate's rate-limit check route under Locust and wrk.

A bare ASGI app (served like Lockgate: our HTTP/1.1 server, uvloop; see loadtests/http/serve.py)
answering Lockgate's own check route, `POST /v1/namespaces/{namespace}/ratelimits/{key}/check`
with the same JSON body, by one `FixedWindowRateLimiter.hit` of limits' async Redis storage
(redis-py with hiredis, as in the other benchmarks) on the Valkey named by LIMITS_REDIS_URL.
Periods are whole seconds (limits' granularity). The answer carries `allowed` only: a limits
user who wants `remaining` pays a second round trip (`get_window_stats`), Lockgate does not.

    LIMITS_REDIS_URL=redis://127.0.0.1:6379/1 python -m loadtests.http.serve loadtests.scenarios.limits_app:app 8500
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

import limits
import limits.aio.storage
import limits.aio.strategies
import msgspec

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

POOL_CONNECTIONS = 256
"""redis-py connections: one per concurrent request up to the sweep's highest concurrency."""


class Check(msgspec.Struct, kw_only=True):
    limit: int
    period_ms: int
    cost: int = 1
    algorithm: str = "fixed_window"


class Decision(msgspec.Struct, kw_only=True):
    allowed: bool
    limit: int


_decoder = msgspec.json.Decoder(Check)
_encoder = msgspec.json.Encoder()
_OK = b'{"status":"ok"}'
_HEADERS = [(b"content-type", b"application/json")]


class _State:
    limiter: limits.aio.strategies.FixedWindowRateLimiter | None = None
    storage: Any = None
    items: dict[tuple[int, int], limits.RateLimitItem] = {}


def _item(limit: int, period_ms: int) -> limits.RateLimitItem:
    key = (limit, period_ms)
    item = _State.items.get(key)
    if item is None:
        item = _State.items[key] = limits.RateLimitItemPerSecond(limit, max(1, period_ms // 1000))
    return item


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            url = os.environ.get("LIMITS_REDIS_URL", "redis://127.0.0.1:6379/1")
            _State.storage = limits.aio.storage.RedisStorage(
                "async+" + url, implementation="redispy", max_connections=POOL_CONNECTIONS
            )
            _State.limiter = limits.aio.strategies.FixedWindowRateLimiter(_State.storage)
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            client: Any = _State.storage.bridge.storage if _State.storage is not None else None
            if client is not None:
                await client.aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _respond(send: Send, status: int, payload: bytes) -> None:
    headers = [*_HEADERS, (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    message = await receive()
    body: bytes = message.get("body", b"")
    while message.get("more_body", False):
        message = await receive()
        body += message.get("body", b"")
    path: str = scope["path"]
    if scope["method"] != "POST":
        await _respond(send, 200, _OK)
        return
    parts = path.split("/")  # "", "v1", "namespaces", ns, "ratelimits", key, "check"
    if len(parts) != 7 or parts[4] != "ratelimits" or parts[6] != "check":
        await _respond(send, 404, b'{"title":"not found"}')
        return
    try:
        check = _decoder.decode(body)
    except msgspec.DecodeError:
        await _respond(send, 422, b'{"title":"invalid request"}')
        return
    assert _State.limiter is not None
    allowed = await _State.limiter.hit(_item(check.limit, check.period_ms), parts[3], parts[5], cost=check.cost)
    await _respond(send, 200, _encoder.encode(Decision(allowed=allowed, limit=check.limit)))
