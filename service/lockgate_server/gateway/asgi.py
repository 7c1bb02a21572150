"""The few ASGI helpers the gateway's raw endpoints share: body, key, problem answers."""

from __future__ import annotations

from typing import Any

import msgspec

from ..api import problems
from ..api.schemas import Problem
from ..errors import InvalidRequest, PayloadTooLarge

Scope = dict[str, Any]
Receive = Any  # ASGI callables, typed loosely like api/dispatch.py's
Send = Any

_encoder = msgspec.json.Encoder()


def presented_key(headers: dict[bytes, bytes]) -> str | None:
    """The API key as /v1 reads it: Authorization: Bearer, else X-API-Key."""
    authorization = headers.get(b"authorization")
    if authorization is not None and authorization[:7].lower() == b"bearer ":
        return authorization[7:].decode("latin-1").strip()
    key = headers.get(b"x-api-key")
    return key.decode("latin-1") if key is not None else None


async def read_body(receive: Receive, headers: dict[bytes, bytes], limit: int) -> bytes:
    declared = headers.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body may have at most {limit} bytes")
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidRequest("the client left before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body may have at most {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def send_json(send: Send, status: int, payload: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def send_problem(send: Send, problem: Problem) -> None:
    payload = _encoder.encode(problem)
    headers = [(b"content-type", b"application/problem+json"), (b"content-length", str(len(payload)).encode())]
    retry_after = problems.retry_after_header(problem)
    if retry_after is not None:
        headers.append((b"retry-after", retry_after.encode()))
    await send({"type": "http.response.start", "status": problem.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
