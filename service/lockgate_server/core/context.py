"""What one sequenced op may read and produce besides its result."""

from __future__ import annotations

from .ops import Result


class Notice:
    """An answer for a caller queued by an earlier op (a grant or a timeout)."""

    __slots__ = ("key", "kind", "lease_id", "request_id", "result")

    def __init__(self, kind: str, key: str, lease_id: str, request_id: str | None, result: Result) -> None:
        self.kind = kind
        self.key = key  # "namespace/name" of the object the notice is about
        self.lease_id = lease_id
        self.request_id = request_id
        self.result = result


class Context:
    """Time and token source for one op; collects notices and new deadlines.

    Fencing tokens are shard LSNs: the op's own LSN for its first grant, and one more
    LSN for every further grant in the same op, so every lease has a token of its own
    and tokens only grow, whether or not the object survives in memory.
    """

    __slots__ = ("_token_taken", "earliest_deadline_ms", "key", "kind", "lsn", "notices", "now_ms")

    def __init__(self, now_ms: int, lsn: int) -> None:
        self.now_ms = now_ms
        self.kind = ""  # the object being changed, set by the shard before each object op
        self.key = ""
        self.lsn = lsn
        self._token_taken = False
        self.notices: list[Notice] = []
        self.earliest_deadline_ms: int | None = None

    def next_token(self) -> int:
        if self._token_taken:
            self.lsn += 1
        self._token_taken = True
        return self.lsn

    def notify(self, lease_id: str, request_id: str | None, result: Result) -> None:
        self.notices.append(Notice(self.kind, self.key, lease_id, request_id, result))

    def deadline(self, at_ms: int) -> None:
        if self.earliest_deadline_ms is None or at_ms < self.earliest_deadline_ms:
            self.earliest_deadline_ms = at_ms
