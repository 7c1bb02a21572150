"""unless_disconnected: a waiting request runs in the caller's task and ends when its client leaves."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from lockgate_server.api.dispatch import ClientLeft, unless_disconnected


class Answer(msgspec.Struct):
    value: int


class Client:
    """An ASGI receive whose http.disconnect comes when the test says so."""

    def __init__(self) -> None:
        self.gone = asyncio.get_running_loop().create_future()

    async def receive(self) -> dict[str, Any]:
        await self.gone
        return {"type": "http.disconnect"}

    def leave(self) -> None:
        self.gone.set_result(None)


async def test_the_answer_comes_back_while_the_client_stays() -> None:
    client = Client()
    assert await unless_disconnected(asyncio.sleep(0.01, Answer(1)), client.receive) == Answer(1)


async def test_a_client_that_leaves_ends_the_wait_and_the_work_sees_it() -> None:
    client, work_saw = Client(), []

    async def waits_forever() -> Answer:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            work_saw.append("cancelled")  # where the engine takes the caller out of line
            raise
        return Answer(0)

    asyncio.get_running_loop().call_later(0.01, client.leave)
    with pytest.raises(ClientLeft):
        await unless_disconnected(waits_forever(), client.receive)
    assert work_saw == ["cancelled"]
    current = asyncio.current_task()
    assert current is not None and current.cancelling() == 0  # the task serves the next request as usual
    await asyncio.sleep(0.01)


async def test_a_client_leaving_just_after_the_answer_cancels_nothing_that_follows() -> None:
    client = Client()

    async def answers_then_client_leaves() -> Answer:
        client.leave()  # the watcher's callback is scheduled, but the answer is already ours
        return Answer(2)

    async def request_then_more_work() -> str:
        answer = await unless_disconnected(answers_then_client_leaves(), client.receive)
        assert isinstance(answer, Answer)
        await asyncio.sleep(0.02)  # e.g. writing the answer, or the connection's next request
        return f"done {answer.value}"

    assert await asyncio.ensure_future(request_then_more_work()) == "done 2"


async def test_a_cancel_from_elsewhere_stays_a_cancel() -> None:
    client = Client()
    caller = asyncio.ensure_future(unless_disconnected(asyncio.Event().wait(), client.receive))
    await asyncio.sleep(0.01)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
