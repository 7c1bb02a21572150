"""The HTTP ceiling: a bare ASGI app doing a rate check's msgspec decode and encode, nothing else.

Any POST decodes its body as Lockgate's own RateCheck and answers an encoded RateDecision,
with the same structs, decoder and encoder kinds as the /v1 dispatcher; GET answers a
fixed body (the readiness probe).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from lockgate_server.api.schemas import RateCheck, RateDecision

_decoder = msgspec.json.Decoder(RateCheck)
_encoder = msgspec.json.Encoder()
_OK = b'{"status":"ok"}'

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    message = await receive()
    body: bytes = message.get("body", b"")
    while message.get("more_body", False):
        message = await receive()
        body += message.get("body", b"")
    if scope["method"] == "POST":
        check = _decoder.decode(body)
        payload = _encoder.encode(
            RateDecision(
                allowed=True,
                limit=check.limit,
                remaining=check.limit - check.cost,
                reset_after_ms=check.period_ms,
                retry_after_ms=0,
                lsn=0,
            )
        )
    else:
        payload = _OK
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": payload})
