"""The /v1 hot path: a plain ASGI callable serving the route table.

Litestar's per-request machinery costs about 115 µs here (6,200 req/s hello-world vs
22,000 for bare ASGI on one worker), more than the whole engine op. So /v1 skips it:
a segment-count bucketed matcher, prebuilt msgspec decoders and encoders per route,
and no per-request dependency resolution. Litestar serves everything else.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from .. import limits
from ..engine.node import Engine, Submitted
from ..errors import InvalidRequest, LockgateError, MethodNotAllowed, PayloadTooLarge
from ..settings import Settings
from . import problems, schemas
from .auth import KeyRing, Principal, authorize
from .metrics import Metrics
from .operations import BY_OPERATION, ROUTES, Call, Route
from .routing import RouteTable

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

JSON = b"application/json"
MSGPACK = b"application/msgpack"
PROBLEM_JSON = b"application/problem+json"

_NAMESPACE = re.compile(limits.NAMESPACE_PATTERN)
_NAME = re.compile(limits.NAME_PATTERN)
UNKNOWN_BATCH_OP = "batch.unknown"
"""The metrics label of a batch op whose name is not an operation."""
_json_encoder = msgspec.json.Encoder()
_msgpack_encoder = msgspec.msgpack.Encoder()


class _Decoders:
    __slots__ = ("json", "msgpack")

    def __init__(self, body_type: type[msgspec.Struct]) -> None:
        self.json = msgspec.json.Decoder(body_type)
        self.msgpack = msgspec.msgpack.Decoder(body_type)


class Dispatcher:
    def __init__(self, settings: Settings, keyring: KeyRing, engine: Callable[[], Engine], metrics: Metrics) -> None:
        self._settings = settings
        self._keyring = keyring
        self._engine = engine
        self._metrics = metrics
        self._routes = RouteTable(ROUTES)
        self._decoders: dict[str, _Decoders] = {
            route.operation: _Decoders(route.body) for route in ROUTES if route.body is not None
        }
        self._batch = _Decoders(schemas.BatchRequest)

    # --- ASGI --------------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        headers = dict(scope["headers"])
        wants_msgpack = MSGPACK in headers.get(b"accept", b"") or headers.get(b"content-type", b"").startswith(MSGPACK)
        operation = "api.unknown"
        try:
            principal = self._keyring.authenticate(_presented_key(headers))
            if scope["path"] == "/v1/batch":
                operation = "api.batch"
                if scope["method"] != "POST":
                    raise MethodNotAllowed("use POST for /v1/batch")
                body = await self._read_body(receive, headers)
                response: msgspec.Struct = await self._run_batch(principal, body, headers, receive)
            else:
                route, params = self._routes.match(scope["method"], scope["path"])
                operation = route.operation
                call = self._call_for(principal, route, params)
                argument = await self._argument(route, scope, receive, headers)
                if route.may_block and getattr(argument, "wait_ms", 0) > 0:
                    response = await unless_disconnected(route.handle(call, argument), receive)
                else:
                    response = await route.handle(call, argument)
        except ClientLeft:
            self._metrics.observe(operation, "client_left", time.perf_counter() - started)
            return
        except LockgateError as error:
            problem = problems.problem_for(error)
            self._metrics.observe(operation, problem.type.rsplit("/", 1)[1], time.perf_counter() - started)
            await send_problem(send, problem, wants_msgpack)
            return
        except (msgspec.ValidationError, _Malformed) as error:
            problem = _decode_problem(error)
            self._metrics.observe(operation, "invalid", time.perf_counter() - started)
            await send_problem(send, problem, wants_msgpack)
            return
        self._metrics.observe(operation, "ok", time.perf_counter() - started)
        await _send(send, 200, response, wants_msgpack)

    def _call_for(self, principal: Principal, route: Route, params: dict[str, str]) -> Call:
        namespace = params["namespace"]
        name = params.get("name", "")
        if not _NAMESPACE.match(namespace):
            raise InvalidRequest("namespace must match " + limits.NAMESPACE_PATTERN)
        if "name" in params and not _NAME.match(name):
            raise InvalidRequest(f"name must match {limits.NAME_PATTERN} (at most {limits.NAME_MAX_LENGTH} characters)")
        authorize(principal, namespace, route.right)
        return Call(self._engine(), self._settings, namespace, name)

    async def _argument(self, route: Route, scope: Scope, receive: Receive, headers: dict[bytes, bytes]) -> Any:
        if route.query is not None:
            return msgspec.convert(_query(scope), route.query, strict=False)
        body = await self._read_body(receive, headers)
        if route.body is None:
            if body.strip() not in (b"", b"{}"):
                raise InvalidRequest("this route takes no body")
            return None
        decoders = self._decoders[route.operation]
        if not body and route.body is schemas.RateReset:
            return None
        return _decode(decoders, body, headers)

    async def _read_body(self, receive: Receive, headers: dict[bytes, bytes]) -> bytes:
        limit = self._settings.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"the body may have at most {limit} bytes")
        message = await receive()
        body: bytes = message.get("body", b"")
        if not message.get("more_body", False):
            if len(body) > limit:
                raise PayloadTooLarge(f"the body may have at most {limit} bytes")
            return body
        chunks = [body]
        size = len(body)
        while message.get("more_body", False):
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientLeft()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the body may have at most {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    # --- batch --------------------------------------------------------------------------------------
    async def _run_batch(
        self, principal: Principal, body: bytes, headers: dict[bytes, bytes], receive: Receive
    ) -> msgspec.Struct:
        """Sequence every op first, in the order sent (they join one commit), then wait for
        each answer in order."""
        request = _decode(self._batch, body, headers)
        assert isinstance(request, schemas.BatchRequest)
        if len(request.ops) > self._settings.max_batch_ops:
            raise PayloadTooLarge(f"a batch may hold at most {self._settings.max_batch_ops} operations")
        msgpack_args = headers.get(b"content-type", b"").startswith(MSGPACK)
        engine = self._engine()
        started = time.perf_counter()
        prepared: list[_Prepared] = []
        for op in request.ops:
            try:
                route, call, argument = self._batch_op(principal, op, msgpack_args)
                if route.command is None:
                    prepared.append((route.operation, asyncio.ensure_future(route.handle(call, argument))))
                else:
                    prepared.append((route.operation, (route, engine.submit(route.command(call, argument)))))
            except (LockgateError, msgspec.ValidationError, _Malformed) as error:
                # The op's name becomes a metrics label: one the client made up must not add a series.
                prepared.append((op.op if op.op in BY_OPERATION else UNKNOWN_BATCH_OP, error))
        answers = _BatchAnswers(engine, prepared)
        try:
            if any(isinstance(item, tuple) and item[1].turn is not None for _, item in prepared):
                response = await unless_disconnected(answers.collect(), receive)  # one waits in line
            else:
                response = await answers.collect()
        except BaseException as error:
            answers.abandon(client_left=isinstance(error, ClientLeft))
            raise
        finally:
            seconds = time.perf_counter() - started
            for (operation, outcome), count in answers.outcomes.items():
                self._metrics.observe(operation, outcome, seconds, count)
        return response

    def _batch_op(self, principal: Principal, op: schemas.BatchOp, msgpack_args: bool) -> tuple[Route, Call, Any]:
        route = BY_OPERATION.get(op.op)
        if route is None:
            raise InvalidRequest(f"unknown op {op.op!r}; one of {', '.join(sorted(BY_OPERATION))}")
        params = {"namespace": op.namespace}
        if "{name}" in route.path:
            if op.name is None:
                raise InvalidRequest(f"{op.op} needs a name")
            params["name"] = op.name
        call = self._call_for(principal, route, params)
        raw = bytes(op.args)
        argument: Any = None
        if route.query is not None:
            decoded = _decode_with(msgspec.msgpack.decode if msgpack_args else msgspec.json.decode, raw) if raw else {}
            argument = msgspec.convert(decoded, route.query)
        elif route.body is not None and raw:
            decoders = self._decoders[route.operation]
            argument = _decode_with(decoders.msgpack.decode if msgpack_args else decoders.json.decode, raw)
        elif route.body is not None and route.body is not schemas.RateReset:
            raise InvalidRequest(f"{op.op} needs args")
        return route, call, argument


_Prepared = tuple[str, "BaseException | asyncio.Future[msgspec.Struct] | tuple[Route, Submitted]"]


class _BatchAnswers:
    """A batch's answers, collected in order; whatever was not collected is given up."""

    def __init__(self, engine: Engine, prepared: list[_Prepared]) -> None:
        self._engine = engine
        self._prepared = prepared
        self.results: list[schemas.BatchItem] = []
        self.outcomes: dict[tuple[str, str], int] = {}

    async def collect(self) -> schemas.BatchResponse:
        for operation, item in self._prepared:
            try:
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, asyncio.Future):
                    answer = await item
                else:
                    route, submitted = item
                    assert route.render is not None
                    answer = route.render(*await self._engine.finish(submitted))
                self.results.append(schemas.BatchItem(status=200, body=answer))
                outcome = "ok"
            except LockgateError as error:
                problem = problems.problem_for(error)
                self.results.append(schemas.BatchItem(status=problem.status, problem=problem))
                outcome = problem.type.rsplit("/", 1)[1]
            except (msgspec.ValidationError, _Malformed) as error:
                problem = _decode_problem(error)
                self.results.append(schemas.BatchItem(status=problem.status, problem=problem))
                outcome = "invalid"
            self.outcomes[(operation, outcome)] = self.outcomes.get((operation, outcome), 0) + 1
        return schemas.BatchResponse(results=self.results)

    def abandon(self, *, client_left: bool) -> None:
        """The client left (or the node failed) before the batch was answered: queued acquires
        leave their line or give back what they were granted meanwhile (nobody will hear of
        it), and listings stop. The one being awaited cleaned up itself. An op that did not
        queue keeps its answer, as a single request does: a retry with its request_id gets it."""
        awaited = len(self.results)
        for index, (operation, item) in enumerate(self._prepared):
            if client_left and index >= awaited:  # applied or not, no answer reached anyone
                self.outcomes[(operation, "client_left")] = self.outcomes.get((operation, "client_left"), 0) + 1
            if index == awaited:
                continue
            if isinstance(item, asyncio.Future):
                if index > awaited:
                    item.cancel()
            elif isinstance(item, tuple):
                self._engine.give_up(item[1])


class ClientLeft(Exception):
    """The client hung up before its answer was ready: nobody is left to answer."""


class _Malformed(Exception):
    pass


async def unless_disconnected(work: Awaitable[msgspec.Struct], receive: Receive) -> msgspec.Struct:
    """A waiting acquire whose client hangs up leaves the line and is never granted.

    The work runs in this task, and a watcher cancels the task if the client leaves while
    it waits. A task of its own raced by asyncio.wait cost two more loop turns between a
    grant and its answer, and a contended lock hands off at the pace of those turns.
    """
    me = asyncio.current_task()
    assert me is not None
    watching, left = True, False

    def client_left(_: object) -> None:
        nonlocal left
        if watching:  # a watcher that ends after the work did must not cancel what comes next
            left = True
            me.cancel()

    watcher = asyncio.ensure_future(wait_disconnect(receive))
    watcher.add_done_callback(client_left)
    try:
        return await work  # on our cancel the engine takes the caller out of line (or gives back its grant)
    except asyncio.CancelledError:
        if not left:
            raise
        me.uncancel()
        raise ClientLeft() from None
    finally:
        watching = False
        watcher.cancel()


async def wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def _presented_key(headers: dict[bytes, bytes]) -> str | None:
    authorization = headers.get(b"authorization")
    if authorization is not None and authorization[:7].lower() == b"bearer ":
        return authorization[7:].decode("latin-1").strip()
    key = headers.get(b"x-api-key")
    return key.decode("latin-1") if key is not None else None


def _query(scope: Scope) -> dict[str, str]:
    from urllib.parse import parse_qsl

    return dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))


def _decode(decoders: _Decoders, body: bytes, headers: dict[bytes, bytes]) -> Any:
    msgpack = headers.get(b"content-type", b"").startswith(MSGPACK)
    return _decode_with(decoders.msgpack.decode if msgpack else decoders.json.decode, body)


def _decode_with(decode: Callable[[bytes], Any], data: bytes) -> Any:
    """Any way a body can fail to parse is the client's 400, never our 500."""
    try:
        return decode(data)
    except msgspec.ValidationError:
        raise
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as error:
        raise _Malformed(f"{type(error).__name__}: {error}"[:500]) from error


def _decode_problem(error: Exception) -> schemas.Problem:
    if isinstance(error, _Malformed):
        return problems.malformed(str(error))
    return problems.problem_for(InvalidRequest(str(error)))


async def _send(send: Send, status: int, body: msgspec.Struct, msgpack: bool) -> None:
    payload = _msgpack_encoder.encode(body) if msgpack else _json_encoder.encode(body)
    content_type = MSGPACK if msgpack else JSON
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), (b"content-length", str(len(payload)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": payload})


async def send_problem(send: Send, problem: schemas.Problem, msgpack: bool) -> None:
    payload = _msgpack_encoder.encode(problem) if msgpack else _json_encoder.encode(problem)
    headers = [
        (b"content-type", MSGPACK if msgpack else PROBLEM_JSON),
        (b"content-length", str(len(payload)).encode()),
    ]
    retry_after = problems.retry_after_header(problem)
    if retry_after is not None:
        headers.append((b"retry-after", retry_after.encode()))
    await send({"type": "http.response.start", "status": problem.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
