"""Serve an ASGI app the way `lockgate-server` serves Lockgate: our HTTP/1.1 server, uvloop, one process.

python -m loadtests.http.serve loadtests.http.hello_asgi:app PORT
"""

from __future__ import annotations

import importlib
import logging
import sys

import uvloop

from lockgate_server.serve import serve

BODY_BYTES_MAX = 1_048_576  # lockgate-server's default max_body_bytes


def main(argv: list[str] | None = None) -> None:
    target, port = (argv or sys.argv[1:])[:2]
    module, _, name = target.partition(":")
    app = getattr(importlib.import_module(module), name)
    logging.basicConfig(level=logging.WARNING)
    # The server of lockgate_server.cli, so the peers pay the same server costs.
    uvloop.run(serve(app, "127.0.0.1", int(port), body_bytes_max=BODY_BYTES_MAX))


if __name__ == "__main__":
    main()
