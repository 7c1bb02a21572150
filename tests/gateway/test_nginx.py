"""A real nginx in front of a tiny upstream, asking Lockgate through auth_request.

The recipe of docs/gateways.md: auth_request only accepts 2xx, 401 and 403 from the check
(anything else becomes a 500), so the domain denies with 403 and nginx turns that into 429
with error_page; auth_request_set + add_header ... always pass the rate-limit headers on.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import StartServer
from .support import GatewayServer, free_port

NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
NGINX_MISSING = "nginx is not installed (Debian: apt-get install -y nginx; .ci/run installs it as root)"
pytestmark = pytest.mark.skipif(NGINX is None, reason=NGINX_MISSING)

POLICY = """
domain: web
deny_status: 403
descriptors:
  - key: remote_address
    rate_limit: {unit: day, requests_per_unit: 3}
  - key: path
    value: /expensive/*
    rate_limit: {unit: day, requests_per_unit: 1}
http:
  descriptors:
    - entries: [{key: remote_address, source: client_ip}]
    - entries: [{key: path, source: path}]
"""

PASSED_HEADERS = {
    "RateLimit-Policy": "ratelimit_policy",
    "RateLimit": "ratelimit",
    "X-RateLimit-Limit": "x_ratelimit_limit",
    "X-RateLimit-Remaining": "x_ratelimit_remaining",
    "X-RateLimit-Reset": "x_ratelimit_reset",
    "Retry-After": "retry_after",
}


def nginx_conf(prefix: Path, *, port: int, upstream_port: int, lockgate_url: str) -> str:
    capture = "\n".join(f"      auth_request_set $lg_{name} $upstream_http_{name};" for name in PASSED_HEADERS.values())
    add = "\n".join(f"      add_header {header} $lg_{name} always;" for header, name in PASSED_HEADERS.items())
    user = "user root;" if os.geteuid() == 0 else ""  # workers must reach our tmp folder
    return f"""
daemon off;
{user}
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fastcgi;
  uwsgi_temp_path {prefix}/uwsgi;
  scgi_temp_path {prefix}/scgi;
  log_format seen '$request_uri';

  server {{  # the upstream: logs what reaches it
    listen 127.0.0.1:{upstream_port};
    access_log {prefix}/upstream.log seen;
    location / {{ return 200 "upstream saw $request_uri\\n"; }}
  }}

  server {{
    listen 127.0.0.1:{port};
    location / {{
      auth_request /_lockgate;
{capture}
{add}
      error_page 403 =429 @ratelimited;
      proxy_pass http://127.0.0.1:{upstream_port};
    }}
    location = /_lockgate {{
      internal;
      proxy_pass {lockgate_url}/check/web;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URI $request_uri;
      proxy_set_header X-Original-Method $request_method;
      proxy_set_header X-Forwarded-For $remote_addr;
    }}
    location @ratelimited {{
{add}
      return 429 "rate limited\\n";
    }}
  }}
}}
"""


@pytest.fixture
def nginx(start_server: StartServer, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    lockgate: GatewayServer = start_server({"policy.yaml": POLICY}, env={"LOCKGATE_GRPC_PORT": "0"})
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    port, upstream_port = free_port(), free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_conf(prefix, port=port, upstream_port=upstream_port, lockgate_url=lockgate.url))
    if NGINX is None:  # other modules use this fixture without this module's skip mark
        pytest.skip(NGINX_MISSING)
    process = subprocess.Popen(
        [NGINX, "-e", str(prefix / "error.log"), "-p", str(prefix), "-c", str(conf)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait_listening(port, process, prefix)
        yield f"http://127.0.0.1:{port}", prefix / "upstream.log"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _wait_listening(port: int, process: subprocess.Popen[bytes], prefix: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited with {process.returncode}: {(prefix / 'error.log').read_text()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nginx did not listen on {port}: {(prefix / 'error.log').read_text()}")


def seen_upstream(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def test_beyond_the_limit_nginx_answers_429_with_the_headers_and_the_upstream_never_sees_it(
    nginx: tuple[str, Path],
) -> None:
    url, upstream_log = nginx
    with httpx.Client(base_url=url, timeout=10) as client:
        for remaining in (2, 1, 0):
            allowed = client.get("/page?n=1")
            assert allowed.status_code == 200, allowed.text
            assert allowed.text == "upstream saw /page?n=1\n"
            assert allowed.headers["RateLimit-Policy"] == '"remote_address";q=3;w=86400'
            assert allowed.headers["RateLimit"].startswith(f'"remote_address";r={remaining};t=')
            assert allowed.headers["X-RateLimit-Remaining"] == str(remaining)
        denied = client.get("/page?n=2")
        assert denied.status_code == 429
        assert denied.text == "rate limited\n"
        assert denied.headers["X-RateLimit-Limit"] == "3"
        assert denied.headers["X-RateLimit-Remaining"] == "0"
        assert denied.headers["RateLimit"].startswith('"remote_address";r=0;t=')
        assert 0 < int(denied.headers["Retry-After"]) <= 86_400
    assert seen_upstream(upstream_log) == ["/page?n=1"] * 3

    # Another client (another loopback address) has its own allowance, but not its own path limit
    # (one state per path the wildcard matches; the query is not part of the path).
    other = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(base_url=url, timeout=10, transport=other) as client:
        assert client.get("/expensive/report").status_code == 200
        refused = client.get("/expensive/report?x=1")
        assert refused.status_code == 429
        assert refused.headers["RateLimit-Policy"] == '"remote_address";q=3;w=86400, "path_/expensive/*";q=1;w=86400'
        assert client.get("/expensive/other-report").status_code == 200
    assert seen_upstream(upstream_log)[3:] == ["/expensive/report", "/expensive/other-report"]
