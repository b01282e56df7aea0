"""The stream writer's leading-edge window: a delta after a quiet window goes out at once, deltas
inside the window go out merged when it closes (the rule Ably's server-side rollup applies)."""

from __future__ import annotations

import asyncio
from typing import Any

from agent_worker.protocol.wire import AppendOp, OutboundMessage, PublishOp, UpdateOp
from agent_worker.runtime.streaming import StreamWriter


class RecordingChannel:
    """Acknowledges everything at once and records what was sent, in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    async def publish(self, msg: OutboundMessage) -> str | None:
        self.sent.append(("publish", msg.data))
        return "serial-1"

    async def acquire(self) -> None:
        return None

    def try_acquire(self) -> bool:
        return True

    def start_append(self, serial: str, msg: OutboundMessage) -> asyncio.Task[str | None]:
        self.sent.append(("append", msg.data))

        async def ack() -> str | None:
            return None

        return asyncio.create_task(ack())

    async def update(self, serial: str, msg: OutboundMessage) -> str | None:
        self.sent.append(("update", msg.data))
        return None


class NoEncoder:
    def cancel_open_streams(self) -> list[AppendOp]:
        return []

    def recovery_update(self, stream_key: str, *, streaming: bool = False) -> UpdateOp:
        msg = "no append failed"
        raise AssertionError(msg)


def _delta(text: str, *, closing: bool = False) -> AppendOp:
    return AppendOp("s", OutboundMessage(name="ai-output", data=text), closing=closing)


async def test_first_delta_goes_out_at_once_then_one_append_per_window() -> None:
    channel = RecordingChannel()
    writer = StreamWriter(channel, NoEncoder(), window_s=3600.0)  # a window no test run outlasts
    await writer.write([PublishOp(OutboundMessage(name="ai-output", data=""), stream_key="s")])
    await writer.write([_delta("a")])
    assert channel.sent == [("publish", ""), ("append", "a")]  # no wait for the window
    await writer.write([_delta("b"), _delta("c")])
    assert channel.sent[-1] == ("append", "a")  # inside the window: held
    await writer.write([_delta("d", closing=True)])  # the close carries the held text
    assert channel.sent[2:] == [("append", "bcd")]
    assert (writer.stats.deltas, writer.stats.appends) == (3, 2)
    await writer.aclose()


async def test_window_zero_sends_every_turns_deltas() -> None:
    channel = RecordingChannel()
    writer = StreamWriter(channel, NoEncoder(), window_s=0.0)
    await writer.write([PublishOp(OutboundMessage(name="ai-output", data=""), stream_key="s")])
    for text in ["a", "b", "c"]:
        await writer.write([_delta(text)])
        await asyncio.sleep(0.01)  # a later event-loop turn: the zero-delay flush has run
    await writer.flush()
    assert channel.sent == [("publish", ""), ("append", "a"), ("append", "b"), ("append", "c")]
    await writer.aclose()


async def test_window_zero_first_delta_of_a_turn_goes_at_once_the_rest_merge() -> None:
    """Coalescing off: a turn's first delta starts its append without waiting for a loop turn (no
    task or callback in between); the deltas after it in the same turn go as one append next turn."""
    channel = RecordingChannel()
    writer = StreamWriter(channel, NoEncoder(), window_s=0.0)
    await writer.write([PublishOp(OutboundMessage(name="ai-output", data=""), stream_key="s")])
    await asyncio.sleep(0.01)
    await writer.write([_delta("a")])
    assert channel.sent[-1] == ("append", "a")
    await writer.write([_delta("b")])
    await writer.write([_delta("c")])
    assert channel.sent[-1] == ("append", "a")  # same turn: held
    await asyncio.sleep(0.01)
    assert channel.sent[1:] == [("append", "a"), ("append", "bc")]
    await writer.write([_delta("d")])  # a later turn: at once again
    assert channel.sent[-1] == ("append", "d")
    assert (writer.stats.deltas, writer.stats.appends) == (4, 3)
    await writer.flush()
    await writer.aclose()
