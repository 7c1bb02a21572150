"""The gRPC transport alone: grpcio's asyncio server against ours, with a handler that only answers.

Both serve ShouldRateLimit with one fixed OK response, on uvloop, in a process of their own, to
the same driver as the gateway benchmark. What each spends per call is what the transport costs
before any rate limiting is done: why the node serves gRPC with gateway/grpc_server.py.
"""

from __future__ import annotations

import multiprocessing
import time
from multiprocessing.synchronize import Event
from typing import Any

from lockgate_server.gateway.rls import METHOD_NAME, SERVICE_NAME

from .common import process_cpu_seconds

TRANSPORTS = ("grpcio", "lockgate")


def serve_fixed_answer(transport: str, port: int, ready: Event) -> None:
    """Serve until killed (runs in a spawned process)."""
    import uvloop

    from lockgate_server.gateway.proto.envoy.service.ratelimit.v3.rls_pb2 import RateLimitRequest, RateLimitResponse

    answer = RateLimitResponse(overall_code=RateLimitResponse.OK)

    async def handler(request: RateLimitRequest, context: Any) -> RateLimitResponse:
        return answer

    async def grpcio_server() -> None:
        import grpc

        method = grpc.unary_unary_rpc_method_handler(
            handler,
            request_deserializer=RateLimitRequest.FromString,
            response_serializer=RateLimitResponse.SerializeToString,
        )
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, {METHOD_NAME: method}),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        ready.set()
        await server.wait_for_termination()

    async def lockgate_server() -> None:
        import asyncio

        from lockgate_server.gateway.grpc_server import UnaryMethod
        from lockgate_server.gateway.rls import grpc_server

        method = UnaryMethod(RateLimitRequest.FromString, RateLimitResponse.SerializeToString, handler)
        server = grpc_server({f"/{SERVICE_NAME}/{METHOD_NAME}": method})
        await server.start("127.0.0.1", port)
        ready.set()
        await asyncio.Event().wait()

    uvloop.run(grpcio_server() if transport == "grpcio" else lockgate_server())


class ProcessUsage:
    """CPU one process used over the measured window, as % of one core."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.started = (0.0, 0.0)
        self.figures: dict[str, object] = {}

    async def open(self) -> None:
        self.started = (time.perf_counter(), process_cpu_seconds(self.pid) or 0.0)

    async def close(self) -> None:
        wall = time.perf_counter() - self.started[0]
        used = (process_cpu_seconds(self.pid) or 0.0) - self.started[1]
        self.figures = {"server_cpu_pct": round(100 * used / wall, 1), "server_cpu_s": used}


def start_fixed_answer(transport: str, port: int) -> multiprocessing.process.BaseProcess:
    context = multiprocessing.get_context("spawn")  # grpc must not be forked
    ready = context.Event()
    process = context.Process(target=serve_fixed_answer, args=(transport, port, ready), daemon=True)
    process.start()
    if not ready.wait(30):
        process.kill()
        raise RuntimeError(f"the {transport} gRPC server did not start")
    return process
