"""`lockgate-server`: run the HTTP service (granian, one worker, uvloop)."""

from __future__ import annotations

import argparse
import logging
import os

from .settings import ENV_PREFIX, describe_settings, load_settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="lockgate-server",
        description="Durable locks, semaphores, counters and rate limits over HTTP.",
        epilog=describe_settings(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help=f"TOML settings file (also {ENV_PREFIX}CONFIG)")
    parser.add_argument("--host", help=f"overrides {ENV_PREFIX}HOST")
    parser.add_argument("--port", type=int, help=f"overrides {ENV_PREFIX}PORT")
    args = parser.parse_args(argv)
    # The worker process reads its settings from the environment: pass the overrides on.
    if args.config:
        os.environ[f"{ENV_PREFIX}CONFIG"] = args.config
    if args.host:
        os.environ[f"{ENV_PREFIX}HOST"] = args.host
    if args.port:
        os.environ[f"{ENV_PREFIX}PORT"] = str(args.port)
    settings = load_settings()
    # The engine forks to write snapshots and the child never touches gRPC: gRPC's fork
    # handlers have nothing to protect, and would only log (or stall) on every snapshot.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from granian.constants import Interfaces, Loops
    from granian.server import Server

    # One worker: a node is one event loop owning every shard (a second node stands by and
    # relays to it; shards spread over several active nodes are not built yet). granian +
    # uvloop measured fastest here for ASGI; uvicorn + httptools was no faster in bench-http.
    server = Server(
        target="lockgate_server.api.app:create_app",
        factory=True,
        address=settings.host,
        port=settings.port,
        interface=Interfaces.ASGI,
        loop=Loops.uvloop,
        workers=1,
        log_access=False,
    )
    server.serve()


if __name__ == "__main__":
    main()
