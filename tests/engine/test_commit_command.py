"""The commit's EVALSHA is built by hand for speed; it must be the same RESP as the generic `pack`."""

from __future__ import annotations

import hiredis

from lockgate_server.storage.log import ShardAppend, commit_command, shard_keys
from lockgate_server.storage.resp import pack


def _parsed(command: bytes) -> list[bytes]:
    reader = hiredis.Reader()  # a RESP array of bulk strings reads the same as a reply
    reader.feed(command)
    parsed = reader.gets()
    assert reader.gets() is False, "exactly one command, nothing left over"
    return list(parsed)


def test_commit_command_is_the_generic_evalsha() -> None:
    appends = [
        ShardAppend(0, 1, 0, 3, b"first\r\nrecord"),
        ShardAppend(17, 12, 99, 100, b""),
        ShardAppend(4095, 2**40, 2**62, 2**62 + 5, bytes(range(256))),
    ]
    keys = [key for append in appends for key in shard_keys(append.shard)[:3]]
    args = [part for a in appends for part in (a.epoch, a.prev_lsn, a.last_lsn, a.record)]
    expected = pack(b"EVALSHA", "f" * 40, len(keys), *keys, *args)
    assert commit_command("f" * 40, appends) == expected
    parsed = _parsed(commit_command("f" * 40, appends))
    assert parsed[:3] == [b"EVALSHA", b"f" * 40, b"9"]
    assert parsed[3:6] == [b"{lg:0}:epoch", b"{lg:0}:lsn", b"{lg:0}:log"]
    assert parsed[-4:] == [b"%d" % 2**40, b"%d" % 2**62, b"%d" % (2**62 + 5), bytes(range(256))]
