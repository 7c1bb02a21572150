"""A batch answers each op on its own: one op's bad namespace or name fails that op alone.

Decoding a whole /v1/batch once refused every op with a 422 when a single op named a bad
object, and the SDK's auto-batching handed that refusal to every caller in the batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest

PROBLEMS = "https://lockgate.dev/problems/"
NS = "batchops"


@pytest.fixture(scope="module")
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=30) as http:
        yield http


def _add(name: str, *, namespace: str = NS) -> dict[str, Any]:
    return {"op": "counters.add", "namespace": namespace, "name": name, "args": {"delta": 1}}


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
def test_a_bad_namespace_or_name_fails_only_its_own_op(client: httpx.Client, encoding: str) -> None:
    counter = f"good-{encoding}"
    ops = [
        _add(counter),
        _add("bad name"),
        _add("x" * 300),  # longer than any name may be
        _add(counter, namespace="Bad NS"),
        _add(counter),
    ]
    if encoding == "json":
        response = client.post("/v1/batch", json={"ops": ops})
        results = response.json()["results"] if response.status_code == 200 else None
    else:
        headers = {"Content-Type": "application/msgpack", "Accept": "application/msgpack"}
        for op in ops:
            op["args"] = msgspec.Raw(msgspec.msgpack.encode(op["args"]))
        response = client.post("/v1/batch", content=msgspec.msgpack.encode({"ops": ops}), headers=headers)
        results = msgspec.msgpack.decode(response.content)["results"] if response.status_code == 200 else None
    assert response.status_code == 200, response.content[:500]
    assert results is not None
    first, bad_name, long_name, bad_namespace, last = results
    assert (first["status"], first["body"]["value"]) == (200, 1)
    assert (last["status"], last["body"]["value"]) == (200, 2)
    for item, field in ((bad_name, "name"), (long_name, "name"), (bad_namespace, "namespace")):
        problem = item["problem"]
        assert item["status"] == problem["status"] == 422, item
        assert problem["type"] == PROBLEMS + "invalid-request"
        assert problem["title"] and problem["detail"].startswith(f"{field} must match"), problem
    assert client.get(f"/v1/namespaces/{NS}/counters/{counter}").json()["value"] == 2
