"""The blocking client bounds each attempt, not each read: a server trickling its answer one
byte at a time cannot keep a call going past its timeouts."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from lockgate import Client, RetryPolicy, Timeouts, TransportError

TIMEOUTS = Timeouts(connect=1.0, read=1.0, total=2.0)
SLACK = 1.0  # generous: this bounds behaviour, it does not measure speed


class TricklingServer:
    """Sends an answer's head at once, then a few bytes of its body 0.2 s apart, and never the rest."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._trickle, args=(connection,), daemon=True).start()

    def _trickle(self, connection: socket.socket) -> None:
        with connection:
            try:
                connection.recv(65_536)
                connection.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/msgpack\r\nContent-Length: 1000\r\n\r\n"
                )
                for _ in range(15):  # 3 s of trickle, longer than any timeout here
                    if self._stopped.wait(0.2):
                        return
                    connection.sendall(b"\x00")
                self._stopped.wait()
            except OSError:
                return  # the client gave up and closed

    def stop(self) -> None:
        self._stopped.set()
        self._listener.close()


@pytest.fixture
def trickling() -> Iterator[TricklingServer]:
    server = TricklingServer()
    yield server
    server.stop()


@pytest.mark.parametrize("attempts", [1, 30], ids=["one-attempt", "with-retries"])
def test_a_trickled_answer_ends_the_call_within_its_timeouts(trickling: TricklingServer, attempts: int) -> None:
    lg = Client(f"http://127.0.0.1:{trickling.port}", timeouts=TIMEOUTS, retry=RetryPolicy(attempts=attempts))
    bound = (TIMEOUTS.read if attempts == 1 else TIMEOUTS.total) + SLACK
    started = time.monotonic()
    with lg, pytest.raises(TransportError):
        lg.counter("c").get()
    assert time.monotonic() - started < bound
