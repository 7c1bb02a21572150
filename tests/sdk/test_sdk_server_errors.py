"""What the SDK makes of the server's own failures: a 500 is not retried; 502/503/504 are.

The core's mapping on its own (no sockets, no clock), then one blocking call against a
server that answers 500 `internal` as the server's HTTP layer does (closing the connection).
"""

from __future__ import annotations

import json
import random
import socket
import threading
from collections.abc import Iterator

import pytest
from lockgate import Client, RetryPolicy, Timeouts, Unavailable, UnexpectedResponse
from lockgate import _core as core

POLICY = RetryPolicy(attempts=30, base_delay=0.05, max_delay=1.0)
INTERNAL = json.dumps(
    {
        "type": "https://lockgate.dev/problems/internal",
        "title": "Internal Server Error",
        "status": 500,
        "detail": "the server failed to answer",
    }
).encode()


def _problem(status: int, slug: str) -> core.Response:
    return core.Response(
        status,
        {"type": f"https://lockgate.dev/problems/{slug}", "title": "t", "status": status, "detail": "it failed"},
    )


def _attempts() -> core.Attempts[int]:
    return core.Attempts(core.counter_get_call("ns", "n"), POLICY, Timeouts(), random.Random(1), 100.0)


def test_the_servers_own_failure_is_not_retried() -> None:
    error = core.error_from(_problem(500, "internal"))
    assert isinstance(error, UnexpectedResponse) and not error.retryable
    assert (error.status, error.detail) == (500, "it failed")
    with pytest.raises(UnexpectedResponse):
        _attempts().answered(_problem(500, "internal"), 100.0)  # at once: no Sleep before a retry


def test_of_the_5xx_problems_of_unknown_type_only_gateway_ones_are_retried() -> None:
    for status in (500, 501, 502, 503, 504, 505, 599):
        error = core.error_from(_problem(status, "something-new"))
        retried = status in (502, 503, 504)
        assert error.retryable is retried, status
        assert isinstance(error, Unavailable if retried else UnexpectedResponse), status


class FailingServer:
    """Answers every request with a 500 `internal` problem and closes the connection; counts requests."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.requests = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        head = b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/problem+json\r\n"
        head += b"content-length: %d\r\nconnection: close\r\n\r\n" % len(INTERNAL)
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            with connection:
                connection.recv(65_536)
                self.requests += 1
                connection.sendall(head + INTERNAL)

    def stop(self) -> None:
        self._listener.close()


@pytest.fixture
def failing() -> Iterator[FailingServer]:
    server = FailingServer()
    yield server
    server.stop()


def test_a_blocking_call_answered_500_asks_once(failing: FailingServer) -> None:
    lg = Client(f"http://127.0.0.1:{failing.port}", timeouts=Timeouts(total=5.0))
    with lg, pytest.raises(UnexpectedResponse) as raised:
        lg.counter("c").add(1)
    assert raised.value.status == 500 and raised.value.detail == "the server failed to answer"
    assert failing.requests == 1
