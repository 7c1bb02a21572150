"""The API key is checked once, when a client is made, and never shows up in an error.

Before, a key with a character outside latin-1 (a pasted smart quote) made the async client
put its whole request head, `Authorization: Bearer <key>` included, into a retryable
TransportError, and a key with a newline inside made http.client raise a ValueError holding
the key. Surrounding whitespace (a key read from a file with its newline) is stripped.
"""

from __future__ import annotations

import pytest
from lockgate import AsyncClient, Client, RetryPolicy
from lockgate import _core as core
from raw_http import VALUE_7, RawServer

SECRET = "sk_live_SECRET123"
BAD_KEYS = [
    SECRET + "\u2019",  # a smart quote: not latin-1
    SECRET + "\u00e9",  # latin-1, but not ASCII: the clients and the server would disagree on its bytes
    SECRET[:4] + "\n" + SECRET[4:],  # a newline inside: a second header line
    SECRET[:4] + "\r\nX-Evil: 1\r\n" + SECRET[4:],
    SECRET[:4] + " " + SECRET[4:],
    SECRET + "\x00",
    SECRET + "\x7f",
]


@pytest.mark.parametrize("key", BAD_KEYS)
@pytest.mark.parametrize("client_class", [Client, AsyncClient])
def test_a_bad_key_is_refused_when_the_client_is_made_without_repeating_it(
    client_class: type[Client] | type[AsyncClient], key: str
) -> None:
    with pytest.raises(ValueError, match="api_key") as refused:
        client_class("http://127.0.0.1:1", api_key=key)
    assert "SECRET" not in str(refused.value) and "SECRET" not in repr(refused.value)


def test_a_key_that_is_not_a_string_is_refused() -> None:
    with pytest.raises(TypeError, match="api_key"):
        Client("http://127.0.0.1:1", api_key=SECRET.encode())  # type: ignore[arg-type]


@pytest.mark.parametrize("key", [SECRET + "\n", f"  {SECRET}\r\n", f"\t{SECRET} "])
def test_sync_surrounding_whitespace_is_stripped(key: str) -> None:
    with RawServer([VALUE_7]) as server, Client(server.url, api_key=key, retry=RetryPolicy(attempts=1)) as lg:
        assert lg.counter("c").get() == 7
    assert server.header(0, "authorization") == f"Bearer {SECRET}"


@pytest.mark.parametrize("key", [SECRET + "\n", f"  {SECRET}\r\n"])
async def test_async_surrounding_whitespace_is_stripped(key: str) -> None:
    with RawServer([VALUE_7]) as server:
        async with AsyncClient(server.url, api_key=key, retry=RetryPolicy(attempts=1)) as lg:
            assert await lg.counter("c").get() == 7
    assert len(server.heads) == 1
    assert server.header(0, "authorization") == f"Bearer {SECRET}"
    assert b"\n" + SECRET.encode() not in server.heads[0]


@pytest.mark.parametrize("key", [None, "", " \n"])
async def test_no_key_sends_no_authorization(key: str | None) -> None:
    with RawServer([VALUE_7]) as server:
        async with AsyncClient(server.url, api_key=key, retry=RetryPolicy(attempts=1)) as lg:
            assert await lg.counter("c").get() == 7
    assert server.header(0, "authorization") is None


def test_checked_api_key() -> None:
    assert core.checked_api_key(None) is None
    assert core.checked_api_key("") is None
    assert core.checked_api_key(" k-1.A_b~c+/=\n") == "k-1.A_b~c+/="
    with pytest.raises(ValueError, match="character 3 is whitespace"):
        core.checked_api_key("ab cd")
    with pytest.raises(ValueError, match="character 2 is a control character"):
        core.checked_api_key("a\x01b")
    with pytest.raises(ValueError, match="character 2 is not ASCII"):
        core.checked_api_key("a\u2019b")
