"""A node freezes its start-up heap once it serves (lockgate_server/heap.py says why)."""

from __future__ import annotations

import re

from lockgate_server.harness import ServerProcess


def test_a_serving_node_has_frozen_its_start_up_heap(server: ServerProcess) -> None:
    frozen = re.search(r"start-up heap frozen: (\d+) objects", server.log_path.read_text())
    assert frozen is not None, "the node did not freeze its start-up heap"
    assert int(frozen.group(1)) > 10_000  # Litestar, msgspec, redis-py, protobuf: tens of thousands
