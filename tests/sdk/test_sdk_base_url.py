"""A node's URL, read the same way by both clients (`_core.node_address`).

- a path in it is a prefix of every request (a server mounted under /lockgate/ behind a
  proxy); before, both clients dropped it and sent /v1/... to the proxy's root;
- the Host header is the hostname (bracketed if IPv6) and the port; before, the async client
  sent the URL's user:password in it;
- credentials, a query or a fragment in the URL are refused, without repeating the URL.
"""

from __future__ import annotations

import asyncio
import socket

import pytest
from lockgate import AsyncClient, Client, RetryPolicy
from lockgate import _core as core
from raw_http import VALUE_7, RawServer

ONCE = RetryPolicy(attempts=1)
PATH = "/lockgate/v1/namespaces/default/counters/c"


@pytest.mark.parametrize("suffix", ["/lockgate/", "/lockgate", "/lockgate//"])
async def test_async_a_path_prefix_is_kept(suffix: str) -> None:
    with RawServer([VALUE_7]) as server:
        async with AsyncClient(server.url + suffix, retry=ONCE) as lg:
            assert await lg.counter("c").get() == 7
    assert server.request_lines() == [f"GET {PATH} HTTP/1.1"]


async def test_async_a_batch_goes_under_the_prefix() -> None:
    batch = b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-type: application/msgpack\r\n\r\n\xc0"
    with RawServer([batch]) as server:
        async with AsyncClient(server.url + "/lockgate/", retry=ONCE) as lg:
            await asyncio.gather(lg.counter("a").get(), lg.counter("b").get(), return_exceptions=True)
    assert server.request_lines()[0] == "POST /lockgate/v1/batch HTTP/1.1"


@pytest.mark.parametrize("suffix", ["/lockgate/", "/lockgate"])
def test_sync_a_path_prefix_is_kept(suffix: str) -> None:
    with RawServer([VALUE_7]) as server, Client(server.url + suffix, retry=ONCE) as lg:
        assert lg.counter("c").get() == 7
    assert server.request_lines() == [f"GET {PATH} HTTP/1.1"]


@pytest.mark.parametrize("client_class", [Client, AsyncClient])
@pytest.mark.parametrize(
    "url", ["http://user:pw-SECRET@127.0.0.1:8420", "http://user@127.0.0.1:8420", "http://:pw-SECRET@h:1"]
)
def test_credentials_in_the_url_are_refused_without_repeating_them(
    client_class: type[Client] | type[AsyncClient], url: str
) -> None:
    with pytest.raises(ValueError, match="credentials") as refused:
        client_class(url)
    assert "SECRET" not in str(refused.value)


@pytest.mark.parametrize("url", ["http://h:1/?x=1", "http://h:1/#top", "https://h:1", "ftp://h"])
def test_what_is_not_a_node_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError):
        Client(url)
    with pytest.raises(ValueError):
        AsyncClient(url)


async def test_async_host_header() -> None:
    with RawServer([VALUE_7]) as server:
        async with AsyncClient(server.url, retry=ONCE) as lg:
            await lg.counter("c").get()
    assert server.header(0, "host") == f"127.0.0.1:{server.port}"


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback here")
async def test_async_host_header_of_an_ipv6_node_is_bracketed() -> None:
    with RawServer([VALUE_7], host="::1") as server:
        async with AsyncClient(server.url, retry=ONCE) as lg:
            assert await lg.counter("c").get() == 7
    assert server.header(0, "host") == f"[::1]:{server.port}"


def test_node_address() -> None:
    address = core.node_address("http://Example.COM:8420/lock gate/")
    assert (address.host, address.port, address.host_header) == ("example.com", 8420, "example.com:8420")
    assert address.target("/v1/batch") == "/lock%20gate/v1/batch"
    address = core.node_address("http://[::1]/")
    assert (address.host, address.port, address.host_header, address.path_prefix) == ("::1", 80, "[::1]", "")
    assert core.node_address("http://h/a%2Fb/").path_prefix == "/a%2Fb"  # already encoded: kept
    assert core.node_address("http://bücher.example").host == "xn--bcher-kva.example"
