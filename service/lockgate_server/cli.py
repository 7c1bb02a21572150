"""`lockgate-server`: run the HTTP service (our HTTP/1.1 server on uvloop, one process)."""

from __future__ import annotations

import argparse
import logging
import os
import socket

from .settings import ENV_PREFIX, SettingsError, describe_settings, load_settings


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
    if args.port is not None:  # --port 0 is refused by the settings, not silently ignored
        os.environ[f"{ENV_PREFIX}PORT"] = str(args.port)
    try:
        settings = load_settings()
    except SettingsError as error:
        # A mistake in the operator's settings, not in the code: one line, no traceback.
        raise SystemExit(f"lockgate-server: {error}") from None
    for variable, port in ((f"{ENV_PREFIX}PORT", settings.port), (f"{ENV_PREFIX}GRPC_PORT", settings.grpc_port)):
        # Checked before the store starts and the shards are claimed, which a port found taken
        # only when the server binds would leave behind a long traceback.
        problem = _cannot_listen(settings.host, port) if port else None
        if problem is not None:
            raise SystemExit(f"lockgate-server: {variable}: cannot listen on {settings.host}:{port}: {problem}")
    # The engine forks to write snapshots and the child never touches gRPC: gRPC's fork
    # handlers have nothing to protect, and would only log (or stall) on every snapshot.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import uvloop

    from .api.app import create_app
    from .api.problems import PROBLEM_BASE
    from .serve import serve

    # One process, one event loop: a node owns every shard (a second node stands by and relays
    # to it; shards spread over several active nodes are not built yet).
    app = create_app(settings)
    try:
        uvloop.run(
            serve(
                app,
                settings.host,
                settings.port,
                body_bytes_max=settings.max_body_bytes,
                problem_base=PROBLEM_BASE,
                before_stop=app.runtime.begin_shutdown,
            )
        )
    except RuntimeError:
        if app.runtime.refusal is None:
            raise
        # The store was refused at start and the reason is logged in one line: the traceback of
        # the failed lifespan around it would only bury that line.
        raise SystemExit(1) from None


def _cannot_listen(host: str, port: int) -> str | None:
    """Why the servers could not bind (host, port), probed as asyncio binds: every address the
    host names, IPv6 sockets IPv6-only, SO_REUSEADDR."""
    try:
        for family, kind, protocol, _, address in socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        ):
            with socket.socket(family, kind, protocol) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                probe.bind(address)
    except OSError as error:
        return error.strerror or str(error)
    return None


if __name__ == "__main__":
    main()
