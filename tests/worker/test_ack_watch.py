"""The appends' ACK deadline (``transport/ackwatch.py``): one timer per channel instead of an
``asyncio.timeout`` per append, with the same outcome (``TimeoutError``, mapped to a transport
error; any other cancellation stays a cancellation)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agent_worker.errors import TransportError
from agent_worker.protocol.wire import OutboundMessage
from agent_worker.server import EmbeddedServer
from agent_worker.transport.ackwatch import AckWatch
from tests.runtime.runtime_support import fresh_channel


def _watched(watch: AckWatch, waits_for: asyncio.Future[Any], timeout_s: float) -> asyncio.Task[str]:
    async def run() -> str:
        task = asyncio.current_task()
        assert task is not None
        watch.watch(task, timeout_s)
        try:
            await waits_for
        except asyncio.CancelledError:
            if watch.timed_out(task):
                raise TimeoutError from None
            raise
        return "acked"

    return asyncio.create_task(run())


async def test_an_unacked_task_times_out_and_acked_ones_do_not() -> None:
    loop = asyncio.get_running_loop()
    watch = AckWatch()
    acked = [loop.create_future() for _ in range(50)]
    never: asyncio.Future[Any] = loop.create_future()
    tasks = [_watched(watch, f, 0.05) for f in acked]
    for f in acked:
        f.set_result(None)
    assert await asyncio.gather(*tasks) == ["acked"] * 50
    stuck = _watched(watch, never, 0.05)
    after = loop.create_future()
    later = _watched(watch, after, 60.0)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(30):
            await stuck
    assert not later.done()  # its own deadline is far off
    after.set_result(None)
    assert await later == "acked"


async def test_another_cancellation_stays_a_cancellation() -> None:
    watch = AckWatch()
    task = _watched(watch, asyncio.get_running_loop().create_future(), 60.0)
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_append_whose_ack_never_comes_fails_as_a_transport_error(
    ably_server: EmbeddedServer,
) -> None:
    """The server applies the append but never ACKs it: the append fails (80003) once the channel's
    ACK timeout has passed, instead of waiting forever."""
    async with fresh_channel(ably_server, "ack") as channel:
        serial = await channel.publish(OutboundMessage(name="t", data="a"))
        assert serial is not None
        assert ably_server.withhold_acks("agent-worker") == 1
        channel.ack_timeout_s = 0.5
        await channel.acquire()
        task = channel.start_append(serial, OutboundMessage(name="t", data="b"))
        with pytest.raises(TransportError) as caught:
            async with asyncio.timeout(60):
                await task
        assert caught.value.code == 80003
        assert "TimeoutError" in caught.value.message
