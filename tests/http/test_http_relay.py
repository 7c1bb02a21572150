"""A standby relays every request to the active node, so any node of a deployment answers.

Two real server processes on one real Valkey: the active node serves the shards, the
standby relays to it over HTTP, and answers exactly what the active node answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from lockgate_server import limits
from lockgate_server.api.forward import FORWARDED_BY, Forwarder, _read_answer
from lockgate_server.api.metrics import Metrics
from lockgate_server.harness import ServerProcess
from lockgate_server.settings import Settings
from lockgate_server.storage.embedded import EmbeddedValkey

LOCKS = "/v1/namespaces/relay/locks"
POLICY = """
domain: relayed
failure_timeout_ms: 3000  # the relayed answer, not failure_mode, even on a loaded machine
descriptors:
  - key: remote_address
    rate_limit: {unit: hour, requests_per_unit: 2}
http:
  descriptors:
    - entries: [{key: remote_address, source: client_ip}]
"""


@dataclass
class Pair:
    active: ServerProcess
    standby: ServerProcess
    valkey: EmbeddedValkey


@contextlib.contextmanager
def running_pair(tmp_path: Path, **settings: str) -> Iterator[Pair]:
    valkey = EmbeddedValkey(tmp_path / "valkey")
    valkey.start()
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    env = {"LOCKGATE_REDIS_URL": valkey.url, "LOCKGATE_STANDBY_POLL_MS": "100", "LOCKGATE_POLICY_FILES": str(policy)}
    env.update({f"LOCKGATE_{name.upper()}": value for name, value in settings.items()})
    active = ServerProcess(tmp_path / "active", env=env)
    standby = ServerProcess(tmp_path / "standby", env=env)
    try:
        active.start()
        standby.start(until="/readyz")  # ready as soon as it can relay
        yield Pair(active, standby, valkey)
    finally:
        standby.stop()
        active.stop()
        valkey.stop()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    with running_pair(tmp_path) as started:
        yield started


def test_a_standby_relays_writes_and_answers_what_the_active_node_answered(pair: Pair) -> None:
    with httpx.Client(timeout=10) as client:
        first = client.post(f"{pair.standby.url}{LOCKS}/job/acquire", json={"ttl_ms": 60_000, "holder": "a"})
        assert first.status_code == 200, first.text
        assert first.headers[FORWARDED_BY.decode()]
        # The lock lives on the active node: it is held there, and a second acquire is refused there.
        status = client.get(f"{pair.active.url}{LOCKS}/job").json()
        assert status["held"] is True and status["token"] == first.json()["token"]
        taken = client.post(f"{pair.standby.url}{LOCKS}/job/acquire", json={"ttl_ms": 1000})
        assert taken.status_code == 409 and taken.headers["content-type"].startswith("application/problem+json")
        released = client.post(f"{pair.standby.url}{LOCKS}/job/release", json={"lease_id": first.json()["lease_id"]})
        assert released.status_code == 200 and released.json()["released"] is True
        batch = client.post(
            f"{pair.standby.url}/v1/batch",
            json={"ops": [{"op": "counters.add", "namespace": "relay", "name": "n", "args": {"delta": 2}}] * 3},
        )
        assert [item["body"]["value"] for item in batch.json()["results"]] == [2, 4, 6]
        assert client.get(f"{pair.active.url}/v1/namespaces/relay/counters/n").json()["value"] == 6
        # Bad input is the active node's 4xx, relayed as it is.
        bad = client.post(f"{pair.standby.url}{LOCKS}/job/acquire", json={"ttl_ms": -5})
        assert bad.status_code == 422 and bad.json()["status"] == 422
    assert pair.standby.metric("lockgate_relayed_requests_total", 'outcome="answered"') == 5


def test_gateway_checks_keep_their_status_and_headers_through_a_standby(pair: Pair) -> None:
    caller = {"X-Real-IP": "203.0.113.9"}
    with httpx.Client(timeout=10) as client:
        answers = [client.get(f"{pair.standby.url}/check/relayed", headers=caller) for _ in range(2)]
        assert [answer.status_code for answer in answers] == [200, 200]
        denied = client.get(f"{pair.standby.url}/check/relayed", headers=caller)
        assert denied.status_code == 429
        assert denied.headers["X-RateLimit-Remaining"] == "0" and int(denied.headers["Retry-After"]) > 0
        assert "RateLimit-Policy" in denied.headers
        # One limit, kept on the active node: asked directly, the caller is over it too.
        assert client.get(f"{pair.active.url}/check/relayed", headers=caller).status_code == 429


def test_a_caller_that_leaves_a_relayed_blocking_acquire_leaves_the_queue_on_the_active_node(pair: Pair) -> None:
    with httpx.Client(timeout=10) as client:
        held = client.post(f"{pair.active.url}{LOCKS}/busy/acquire", json={"ttl_ms": 60_000})
        assert held.status_code == 200

        def wait_then_leave() -> None:
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(f"{pair.standby.url}{LOCKS}/busy/acquire", json={"ttl_ms": 1000, "wait_ms": 30_000},
                           timeout=1.5)  # fmt: skip

        waiter = threading.Thread(target=wait_then_leave)
        waiter.start()
        deadline = time.monotonic() + 5
        while client.get(f"{pair.active.url}{LOCKS}/busy").json()["waiters"] != 1:
            assert time.monotonic() < deadline, "the relayed acquire never queued on the active node"
            time.sleep(0.05)
        waiter.join()
        while client.get(f"{pair.active.url}{LOCKS}/busy").json()["waiters"] != 0:
            assert time.monotonic() < deadline + 5, "the active node kept the departed caller queued"
            time.sleep(0.05)


def test_a_standby_with_every_relay_connection_busy_answers_503_at_once(tmp_path: Path) -> None:
    settings = {"forward_connections_max": "1", "forward_connect_timeout_ms": "200"}
    with running_pair(tmp_path, **settings) as busy, httpx.Client(timeout=10) as client:
        assert client.post(f"{busy.active.url}{LOCKS}/held/acquire", json={"ttl_ms": 60_000}).status_code == 200
        waiter = threading.Thread(
            target=lambda: client.post(
                f"{busy.standby.url}{LOCKS}/held/acquire", json={"ttl_ms": 1000, "wait_ms": 3000}
            )
        )
        waiter.start()  # holds the standby's one relay connection for 3 s
        deadline = time.monotonic() + 5
        while client.get(f"{busy.active.url}{LOCKS}/held").json()["waiters"] != 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        started = time.monotonic()
        refused = client.get(f"{busy.standby.url}{LOCKS}/held")
        assert refused.status_code == 503 and "busy" in refused.json()["detail"], refused.text
        assert time.monotonic() - started < 2.0  # not after the blocking acquire's 3 s
        waiter.join()
        assert client.get(f"{busy.standby.url}{LOCKS}/held").status_code == 200  # free again


def test_a_relayed_request_is_never_relayed_again(pair: Pair) -> None:
    with httpx.Client(timeout=10) as client:
        # As the active node would see it if it were a standby too (during a takeover).
        refused = client.get(f"{pair.standby.url}{LOCKS}/job", headers={FORWARDED_BY.decode(): "another-node"})
        assert refused.status_code == 503 and "standby" in refused.json()["detail"], refused.text
        assert "retry-after" in refused.headers


def test_a_forged_relay_header_does_not_get_a_gateway_check_past_its_limit(pair: Pair) -> None:
    """Anyone can send the header (nginx and Traefik pass a client's headers on to the check):
    on a standby it must not make the check fall back to the domain's failure_mode (allow)."""
    caller = {"X-Real-IP": "203.0.113.30", FORWARDED_BY.decode(): "forged"}
    with httpx.Client(timeout=10) as client:
        answers = [client.get(f"{pair.standby.url}/check/relayed", headers=caller) for _ in range(4)]
    assert [answer.status_code for answer in answers] == [503] * 4, [answer.text for answer in answers]
    assert "X-Lockgate-Failure" not in answers[0].headers


def test_a_standby_is_not_ready_while_the_active_node_is_gone_then_serves_itself(pair: Pair) -> None:
    with httpx.Client(timeout=10) as client:
        assert client.get(f"{pair.standby.url}/readyz").json()["relays_to"] == pair.active.url
        pair.active.kill()  # its ownership (and announced URL) outlive it by up to a lease
        gone = client.get(f"{pair.standby.url}/readyz")
        assert gone.status_code == 503 and gone.json()["relays_to"] is None, gone.text
        relayed = client.get(f"{pair.standby.url}{LOCKS}/job")
        assert relayed.status_code == 503 or "lockgate-forwarded-by" not in relayed.headers  # taken over already
        pair.standby.wait_ready()  # takes over once the lease runs out
        served = client.get(f"{pair.standby.url}{LOCKS}/job")
        assert served.status_code == 200 and "lockgate-forwarded-by" not in served.headers


def test_a_standby_that_cannot_reach_the_store_answers_a_retryable_503(pair: Pair) -> None:
    pair.valkey.kill()
    time.sleep(limits.FORWARD_OWNER_CACHE_MS / 1000 + 0.2)  # so the standby must look the owner up again
    with httpx.Client(timeout=10) as client:
        answer = client.get(f"{pair.standby.url}{LOCKS}/job")
        assert answer.status_code == 503, answer.text
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert "retry-after" in answer.headers
        # A gateway check answers by its domain's failure_mode (deny, by default), as on the active node.
        check = client.get(f"{pair.standby.url}/check/relayed", headers={"X-Real-IP": "192.0.2.1"})
        assert check.status_code == 429 and check.headers["X-Lockgate-Failure"] == "store-unavailable", check.text
        assert client.get(f"{pair.standby.url}/readyz").status_code == 503


def test_a_relayed_request_carries_the_callers_address_for_gateway_keys() -> None:
    forwarder = Forwarder(Settings(), lambda: None, Metrics())
    scope = {"method": "GET", "path": "/check/x", "query_string": b"", "client": ("198.51.100.7", 4000),
             "headers": [(b"host", b"standby:8420"), (b"connection", b"keep-alive"), (b"x-api-key", b"k")]}  # fmt: skip
    head = forwarder._request_head(scope, "active:8420", 0).decode()
    assert "x-real-ip: 198.51.100.7" in head and "x-api-key: k" in head
    assert "host: active:8420" in head and "standby:8420" not in head and "keep-alive" not in head
    # A caller that says who it is (or a proxy in front that did) is taken at its word.
    scope["headers"].append((b"x-forwarded-for", b"203.0.113.1"))
    assert "x-real-ip" not in forwarder._request_head(scope, "active:8420", 0).decode()


# Far more than the active node takes to answer these, far less than the relay waits for an
# answer by default (a blocking acquire's longest wait and its commit, over a minute): a relay
# stuck reading the wrong framing fails the test instead of stalling it.
PROMPT_S = 5.0
# Interim answers (RFC 9110 15.2) come ahead of the final one, each ending at its head.
INTERIM_THEN_OK = (
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n"
    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
)


def test_a_head_request_through_a_standby_gets_the_active_nodes_answer_at_once(pair: Pair) -> None:
    caller = {"X-Real-IP": "203.0.113.20"}
    with httpx.Client(timeout=PROMPT_S) as client:
        # An answer to HEAD has no body, whatever length it declares (RFC 9112 6.3).
        for _ in range(2):
            assert client.head(f"{pair.standby.url}/check/relayed", headers=caller).status_code == 200
        denied = client.head(f"{pair.standby.url}/check/relayed", headers=caller)
        # The active node's 429, not the domain's failure_mode decided here after a timeout.
        assert denied.status_code == 429 and FORWARDED_BY.decode() in denied.headers, denied.headers
        assert "X-Lockgate-Failure" not in denied.headers and denied.headers["X-RateLimit-Remaining"] == "0"
        direct = client.head(f"{pair.active.url}{LOCKS}/job")
        relayed = client.head(f"{pair.standby.url}{LOCKS}/job")
        assert relayed.status_code == direct.status_code == 405, relayed.headers
        assert relayed.headers["content-length"] == direct.headers["content-length"]  # what a GET's body would be
        # The keep-alive connection the standby read that answer on is still in step.
        assert client.get(f"{pair.standby.url}{LOCKS}/job").json()["held"] is False


def test_a_write_that_expects_100_continue_through_a_standby_gets_its_answer(pair: Pair) -> None:
    with httpx.Client(timeout=PROMPT_S) as client:
        acquired = client.post(
            f"{pair.standby.url}{LOCKS}/expecting/acquire", json={"ttl_ms": 60_000}, headers={"Expect": "100-continue"}
        )
        assert acquired.status_code == 200 and FORWARDED_BY.decode() in acquired.headers, acquired.text
        assert client.get(f"{pair.active.url}{LOCKS}/expecting").json()["token"] == acquired.json()["token"]


def test_a_relayed_answer_carries_one_date(pair: Pair) -> None:
    with httpx.Client(timeout=PROMPT_S) as client:
        relayed = client.get(f"{pair.standby.url}{LOCKS}/job")
        assert relayed.status_code == 200 and FORWARDED_BY.decode() in relayed.headers
        assert len(relayed.headers.get_list("date")) == 1, relayed.headers  # RFC 9110 6.6.1: one value


@pytest.mark.parametrize(
    ("method", "answer", "status", "body"),
    [
        ("POST", INTERIM_THEN_OK, 200, b"ok"),
        # No body after a 204 or a 304, nor after any answer to HEAD (RFC 9112 6.3).
        ("GET", b"HTTP/1.1 204 No Content\r\ncontent-length: 2\r\n\r\n", 204, b""),
        ("GET", b"HTTP/1.1 304 Not Modified\r\ncontent-length: 2\r\n\r\n", 304, b""),
        ("HEAD", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n", 200, b""),
        ("HEAD", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", 200, b""),
    ],
)
async def test_an_answer_from_the_active_node_ends_where_http_says(
    method: str, answer: bytes, status: int, body: bytes
) -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(answer + b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nnext")  # the next answer on the connection
    assert (await _read_answer(reader, method=method))[::2] == (status, body)
    assert (await _read_answer(reader, method="GET"))[::2] == (200, b"next")
