"""``Channel._append_now``: on a ready connection a pipelined text append is written in the caller's
turn without a coroutine or a task (ably-python's send steps done in place, the outcome taken from
its ACK future by a callback), with the outcomes the task path gives: the version serial, a NACK
as the server's refusal, a lost ACK as a timeout, a cancellation by the caller. Where a send would
have to wait (flow control) it is the task path's. The frames it writes are the SDK's, byte for
byte: ``tests/worker/test_lean_append.py`` compares them on the wire."""

from __future__ import annotations

import asyncio

import pytest

from agent_worker.errors import TransportError
from agent_worker.protocol.wire import OutboundMessage
from agent_worker.server import EmbeddedServer
from tests.runtime.runtime_support import fresh_channel


async def test_a_direct_append_is_written_before_it_returns_and_resolves_with_its_version(
    ably_server: EmbeddedServer,
) -> None:
    async with fresh_channel(ably_server, "direct") as channel:
        serial = await channel.publish(OutboundMessage(name="t", data="a"))
        assert serial is not None
        manager = channel.client.connection.connection_manager
        before = manager.msg_serial
        futures = [channel.start_append(serial, OutboundMessage(name="t", data=c)) for c in "bcd"]
        assert not any(isinstance(f, asyncio.Task) for f in futures)  # no task per append
        assert manager.msg_serial == before + 3  # each msgSerial taken, in call order
        assert len(manager.pending_message_queue.messages) >= 3  # in the SDK's own ACK queue
        versions = await asyncio.gather(*futures)
        assert all(isinstance(v, str) for v in versions)
        assert len(set(versions)) == 3
        assert not manager.pending_message_queue.messages  # the SDK's ACK handling took them off
        assert await channel.message_text(serial) == "abcd"


async def test_a_refused_direct_append_fails_with_the_servers_code(ably_server: EmbeddedServer) -> None:
    async with fresh_channel(ably_server, "direct") as channel:
        serial = await channel.publish(OutboundMessage(name="t", data="a"))
        assert serial is not None
        refused = channel.start_append("01-no-such-serial@0", OutboundMessage(name="t", data="b"))
        assert not isinstance(refused, asyncio.Task)
        with pytest.raises(TransportError) as info:
            await refused
        assert info.value.code // 1000 == 40  # the NACK's refusal, not a timeout
        assert "append on conversations:direct-" in info.value.message
        assert await channel.start_append(serial, OutboundMessage(name="t", data="c")) is not None
        assert await channel.message_text(serial) == "ac"


async def test_a_direct_append_whose_ack_never_comes_times_out(ably_server: EmbeddedServer) -> None:
    async with fresh_channel(ably_server, "direct") as channel:
        serial = await channel.publish(OutboundMessage(name="t", data="a"))
        assert serial is not None
        folded: list[object] = []
        assert channel.on_local(folded.append, lambda _why: None)
        assert ably_server.withhold_acks("agent-worker") == 1
        channel.ack_timeout_s = 0.3
        lost = channel.start_append(serial, OutboundMessage(name="t", data="b"))
        assert not isinstance(lost, asyncio.Task)
        with pytest.raises(TransportError) as info:
            async with asyncio.timeout(30):
                await lost
        assert info.value.code == 80003
        assert "TimeoutError" in info.value.message
        assert channel.local_gaps == {serial}  # the local echo folds nothing after the failed append
        assert folded == []


async def test_a_direct_append_cancelled_by_its_caller_stays_cancelled(ably_server: EmbeddedServer) -> None:
    async with fresh_channel(ably_server, "direct") as channel:
        serial = await channel.publish(OutboundMessage(name="t", data="a"))
        assert serial is not None
        folded: list[object] = []
        assert channel.on_local(folded.append, lambda _why: None)
        errors: list[dict[str, object]] = []
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        fut = channel.start_append(serial, OutboundMessage(name="t", data="b"))
        fut.cancel()
        after = channel.start_append(serial, OutboundMessage(name="t", data="c"))
        assert isinstance(await after, str)  # its ACK came after the cancelled one's
        assert fut.cancelled()
        assert channel.local_gaps == {serial}  # its outcome is unknown to the writer: a gap, as a task's
        assert folded == []  # nothing after the gap is folded (the writer's repair will be)
        assert errors == []
        assert await channel.message_text(serial) == "abc"  # it was sent all the same


async def test_an_append_that_would_wait_for_flow_control_takes_the_task_path(
    ably_server: EmbeddedServer,
) -> None:
    async with fresh_channel(ably_server, "direct") as channel:
        serial = await channel.publish(OutboundMessage(name="t", data="a"))
        assert serial is not None
        ws = channel.client.connection.connection_manager.transport.websocket
        ws.pause_writing()  # as when the socket's write buffer is over its high-water mark
        try:
            waiting = channel.start_append(serial, OutboundMessage(name="t", data="b"))
            assert isinstance(waiting, asyncio.Task)
            await asyncio.sleep(0.05)
            assert not waiting.done()  # the SDK's send waits in websockets' drain
        finally:
            ws.resume_writing()
        assert isinstance(await waiting, str)
        direct = channel.start_append(serial, OutboundMessage(name="t", data="c"))
        assert not isinstance(direct, asyncio.Task)
        assert isinstance(await direct, str)
        assert await channel.message_text(serial) == "abc"
