"""RawServer: a tiny HTTP/1.1 peer on 127.0.0.1 (or ::1), port 0, that answers with canned bytes.

It serves from threads, so the blocking client can use it as well as the async one. Each
request gets the next answer of the list, sent as it is (malformed ones included), or the
answer returned by a callable given the socket; once the list is used up, a 500. Request
heads are recorded, so tests can check what the client sent.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Sequence

import msgspec

Answer = bytes | Callable[[socket.socket], None]


def ok(payload: object, *, extra_headers: bytes = b"") -> bytes:
    """A 200 carrying `payload` as msgpack, with a Content-Length."""
    body = msgspec.msgpack.encode(payload)
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/msgpack\r\n%scontent-length: %d\r\n\r\n"
    return head % (extra_headers, len(body)) + body


VALUE_7 = ok({"value": 7, "lsn": 1})


class RawServer:
    def __init__(self, answers: Sequence[Answer], *, host: str = "127.0.0.1", close_after: bool = False) -> None:
        self.answers = list(answers)
        self.heads: list[bytes] = []
        self.connections = 0
        self._close_after = close_after
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.socket(family)
        self._listener.bind((host, 0))
        self._listener.listen(16)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def __enter__(self) -> RawServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._listener.close()
        for connection in self._open:
            connection.close()

    def request_lines(self) -> list[str]:
        """The request line of every request received, e.g. 'GET /v1/... HTTP/1.1'."""
        return [head.split(b"\r\n", 1)[0].decode() for head in self.heads]

    def header(self, index: int, name: str) -> str | None:
        """Header `name` of request `index`, as sent (None when absent)."""
        for line in self.heads[index].split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower().encode():
                return value.strip().decode("latin-1")
        return None

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            self._open.append(connection)
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        buffered = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffered:
                    data = connection.recv(65536)
                    if not data:
                        return
                    buffered += data
                head, _, buffered = buffered.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    key, _, value = line.partition(b":")
                    if key.strip().lower() == b"content-length":
                        length = int(value)
                while len(buffered) < length:
                    buffered += connection.recv(65536)
                buffered = buffered[length:]
                self.heads.append(head)
                answer = self.answers.pop(0) if self.answers else b"HTTP/1.1 500 X\r\ncontent-length: 0\r\n\r\n"
                if callable(answer):
                    answer(connection)
                else:
                    connection.sendall(answer)
                if self._close_after:
                    return
        except OSError:
            return
        finally:
            connection.close()
