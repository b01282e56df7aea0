"""``transport/eager.py``: a task whose first step runs in the caller's turn, and the append that
uses it (its frame is written before ``start_append`` returns, so a token leaves the worker in the
turn the model yielded it, as ably-js sends it)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agent_worker.protocol.wire import OutboundMessage
from agent_worker.server import EmbeddedServer
from agent_worker.transport.eager import eager_task
from tests.runtime.runtime_support import fresh_channel


async def test_the_first_step_runs_before_eager_task_returns_and_the_rest_in_the_task() -> None:
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[str] = loop.create_future()
    steps: list[str] = []

    async def work() -> str:
        steps.append("first")
        value = await gate
        steps.append("rest")
        return value + "!"

    task = eager_task(work())
    assert steps == ["first"]  # not on the next loop turn: now
    await asyncio.sleep(0)
    assert steps == ["first"] and not task.done()  # waits for what the first step awaited
    gate.set_result("acked")
    assert await task == "acked!"
    assert steps == ["first", "rest"]


async def test_a_coroutine_that_never_suspends_gives_its_value() -> None:
    async def work() -> int:
        return 7

    assert await eager_task(work()) == 7


async def test_what_the_first_step_raises_is_the_tasks_failure_not_the_callers() -> None:
    async def work() -> None:
        msg = "refused"
        raise ValueError(msg)

    task = eager_task(work())  # does not raise here
    with pytest.raises(ValueError, match="refused"):
        await task


async def test_a_yield_to_the_loop_in_the_first_step_resumes_in_the_task() -> None:
    steps: list[str] = []

    async def work() -> str:
        steps.append("a")
        await asyncio.sleep(0)
        steps.append("b")
        await asyncio.sleep(0)
        return "done"

    task = eager_task(work())
    assert steps == ["a"]
    assert await task == "done"
    assert steps == ["a", "b"]


@pytest.mark.parametrize("before_first_step", [True, False])
async def test_cancelling_reaches_the_coroutine_where_it_waits(before_first_step: bool) -> None:
    """Cancelled before the task took its (already taken) first step, or while it waits: either
    way the coroutine gets ``CancelledError`` at its await, as a task that stepped itself would."""
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[Any] = loop.create_future()
    seen: list[str] = []

    async def work() -> None:
        try:
            await gate
        except asyncio.CancelledError:
            seen.append("cancelled at the await")
            raise

    task = eager_task(work())
    if not before_first_step:
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == ["cancelled at the await"]
    assert task.cancelled()


async def test_an_append_is_on_the_wire_when_start_append_returns(ably_server: EmbeddedServer) -> None:
    """The msgSerial is assigned and the frame handed to the socket before ``start_append``
    returns (no loop turn in between); ACKed and resolved with its version as before."""
    async with fresh_channel(ably_server, "eager") as channel:
        serial = await channel.publish(OutboundMessage(name="t", data="a"))
        assert serial is not None
        manager = channel.client.connection.connection_manager
        await channel.acquire()
        before = manager.msg_serial
        tasks = [channel.start_append(serial, OutboundMessage(name="t", data=c)) for c in "bcd"]
        assert manager.msg_serial == before + 3  # all three sent, in call order, before any yield
        assert len(manager.pending_message_queue.messages) >= 3
        versions = await asyncio.gather(*tasks)
        assert all(isinstance(v, str) for v in versions)
        assert await channel.message_text(serial) == "abcd"


async def test_an_append_waiting_for_the_connection_is_not_overtaken(ably_server: EmbeddedServer) -> None:
    """Started while the connection is not ready, an append is a plain task that sends once it
    is; one started after the connection is ready again, before that task has run, must not go
    out eagerly ahead of it (a stream's text in call order)."""
    async with fresh_channel(ably_server, "eager-wait") as channel:
        serial = await channel.publish(OutboundMessage(name="t", data="a"))
        assert serial is not None
        manager = channel.client.connection.connection_manager
        conn = channel._conn
        await channel.acquire()
        before = manager.msg_serial
        conn._settled = False  # as between a reconnect and its re-sends being queued
        waiting = channel.start_append(serial, OutboundMessage(name="t", data="b"))
        assert manager.msg_serial == before  # not sent while not ready
        conn._settle()  # ready again, before the waiting task has taken its first step
        later = channel.start_append(serial, OutboundMessage(name="t", data="c"))
        assert manager.msg_serial == before  # not ahead of the waiting one
        await asyncio.gather(waiting, later)
        assert manager.msg_serial == before + 2
        assert await channel.message_text(serial) == "abc"
        eager = channel.start_append(serial, OutboundMessage(name="t", data="d"))
        assert manager.msg_serial == before + 3  # caught up: eager again
        await eager
