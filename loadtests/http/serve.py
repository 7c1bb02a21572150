"""Serve an ASGI app the way `lockgate-server` serves Lockgate: granian, one worker, uvloop.

python -m loadtests.http.serve loadtests.http.hello_asgi:app PORT
"""

from __future__ import annotations

import sys

from granian.constants import Interfaces, Loops
from granian.server import Server


def main(argv: list[str] | None = None) -> None:
    target, port = (argv or sys.argv[1:])[:2]
    # The settings of lockgate_server.cli, so the peers pay the same server costs.
    server = Server(
        target=target,
        address="127.0.0.1",
        port=int(port),
        interface=Interfaces.ASGI,
        loop=Loops.uvloop,
        workers=1,
        log_access=False,
    )
    server.serve()


if __name__ == "__main__":
    main()
