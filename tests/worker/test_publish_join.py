"""Pipelined publishes of one turn share a frame (``Channel.start_publish``): a run-start and the
step-start sent in the same turn go out as one ProtocolMessage (one frame and one ACK instead of
two), in call order, each with its own serial; a subscriber reads the same two messages in the same
order. Checked on the wire (a recording proxy) against the embedded server."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import msgpack
import pytest

from agent_worker.errors import TransportError
from agent_worker.protocol.headers import AI_RUN_START, AI_STEP_START, lifecycle_message
from agent_worker.protocol.wire import OutboundMessage
from agent_worker.server import EmbeddedServer
from agent_worker.server.testing import python_realtime
from agent_worker.transport.ably import _JOIN_MAX, Channel, _rough_size
from tests.runtime.runtime_support import fresh_channel
from tests.worker.test_lean_append import MESSAGE, _client_frames, _proxied_transport


def _lifecycle(name: str, run_id: str) -> OutboundMessage:
    return lifecycle_message(name, {"run-id": run_id, "invocation-id": f"inv-{run_id}"})


def _message_frames(streams: list[bytearray]) -> list[list[str | None]]:
    """The names of the messages in each MESSAGE frame the clients sent, frame by frame."""
    out = []
    for stream in streams:
        for payload in _client_frames(bytes(stream)):
            frame: dict[str, Any] = msgpack.unpackb(payload, raw=False)
            if frame.get("action") == MESSAGE:
                out.append([m.get("name") for m in frame["messages"]])
    return out


async def test_a_run_start_and_step_start_of_one_turn_share_a_frame(ably_server: EmbeddedServer) -> None:
    name = f"conversations:join-{uuid.uuid4().hex[:8]}"
    reader = python_realtime(ably_server, client_id="reader")
    received: list[Any] = []

    def on_message(msg: Any) -> None:
        received.append(msg)

    try:
        await reader.channels.get(name).subscribe(on_message)
        async with _proxied_transport(ably_server) as (transport, sent):
            channel = transport.channel(name)
            await channel.publish(OutboundMessage(name="before", data=None))  # attached, warm
            run_start = channel.start_publish(_lifecycle(AI_RUN_START, "r1"))
            step_start = channel.start_publish(_lifecycle(AI_STEP_START, "r1"))
            assert not isinstance(step_start, asyncio.Task)  # it joined the run-start's
            serials = [await run_start, await step_start]
            # Once that frame is written, the next call starts a frame of its own.
            alone = await channel.start_publish(_lifecycle("ai-run-end", "r1"))
        assert _message_frames(sent) == [["before"], [AI_RUN_START, AI_STEP_START], ["ai-run-end"]]
        assert serials[0] is not None and serials[1] is not None and alone is not None
        assert serials[0] < serials[1] < alone  # each its own serial, in wire order
        for _ in range(200):
            if len(received) >= 4:
                break
            await asyncio.sleep(0.01)
        assert [m.name for m in received] == ["before", AI_RUN_START, AI_STEP_START, "ai-run-end"]
        assert [m.serial for m in received[1:]] == [*serials, alone]
    finally:
        await reader.close()


async def test_messages_with_data_or_a_full_frame_start_their_own(ably_server: EmbeddedServer) -> None:
    async with _proxied_transport(ably_server) as (transport, sent):
        channel = transport.channel(f"conversations:join-{uuid.uuid4().hex[:8]}")
        await channel.publish(OutboundMessage(name="before", data=None))
        first = channel.start_publish(_lifecycle("a", "r1"))
        with_data = channel.start_publish(OutboundMessage(name="text", data="hello"))
        after_data = [channel.start_publish(_lifecycle(f"b{i}", "r1")) for i in range(_JOIN_MAX + 1)]
        assert all(await asyncio.gather(first, with_data, *after_data))
    names = _message_frames(sent)
    # A message with data neither joins nor is joined; a frame holds _JOIN_MAX messages at most.
    assert names == [["before"], ["a"], ["text"], [f"b{i}" for i in range(_JOIN_MAX)], [f"b{_JOIN_MAX}"]]


def test_a_large_message_is_not_joined() -> None:
    small = _lifecycle("ai-step-start", "r1")
    assert _rough_size(small) < 200
    big = lifecycle_message("ai-run-start", {"run-client-id": "x" * 10_000})
    assert _rough_size(big) > 8 * 1024
    other_shape = OutboundMessage(name="t", data=None, extras={"headers": {"k": 1}})
    assert _rough_size(other_shape) > 8 * 1024  # unknown shape: never joined


async def test_a_joined_message_shares_its_frames_failure(ably_server: EmbeddedServer) -> None:
    async with fresh_channel(ably_server, "join") as channel:
        await channel.publish(OutboundMessage(name="before", data=None))

        async def refused(self: Channel, msgs: Any, ids: Any) -> Any:
            why = "publish refused"
            raise TransportError(why, code=40160, status_code=401)

        channel._send_publish = refused.__get__(channel)  # type: ignore[method-assign]
        first = channel.start_publish(_lifecycle("a", "r1"))
        joined = channel.start_publish(_lifecycle("b", "r1"))
        for fut in (first, joined):
            with pytest.raises(TransportError) as info:
                await fut
            assert info.value.code == 40160


async def test_a_joined_message_is_cancelled_with_a_frame_never_sent(ably_server: EmbeddedServer) -> None:
    async with fresh_channel(ably_server, "join") as channel:
        await channel.publish(OutboundMessage(name="before", data=None))
        first = channel.start_publish(_lifecycle("a", "r1"))
        joined = channel.start_publish(_lifecycle("b", "r1"))
        first.cancel()  # before its first step: neither message is sent
        with pytest.raises(asyncio.CancelledError):
            await joined
        # The channel goes on: the next call starts a frame of its own.
        assert await channel.start_publish(_lifecycle("c", "r1")) is not None
        items = [m async for page in channel.history_pages() for m in page]
        assert [m.name for m in reversed(items)] == ["before", "c"]
