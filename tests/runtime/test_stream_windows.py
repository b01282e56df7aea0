"""The stream writer's leading-edge window: a delta after a quiet window goes out at once, deltas
inside the window go out merged when it closes (the rule Ably's server-side rollup applies)."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from agent_worker.protocol.wire import AppendOp, OutboundMessage, PublishOp, UpdateOp
from agent_worker.runtime.streaming import StreamWriter, pacing_s


class RecordingChannel:
    """Acknowledges everything at once and records what was sent, in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    async def publish(self, msg: OutboundMessage) -> str | None:
        self.sent.append(("publish", msg.data))
        return "serial-1"

    async def acquire(self, *, defer: bool = False) -> None:
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


class TimedChannel(RecordingChannel):
    """Also records the loop time of each append and wakes a waiter on each one."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []
        self.appended = asyncio.Event()

    def start_append(self, serial: str, msg: OutboundMessage) -> asyncio.Task[str | None]:
        self.times.append(asyncio.get_running_loop().time())
        self.appended.set()
        return super().start_append(serial, msg)


async def test_a_delta_that_comes_while_the_windows_flush_awaits_waits_for_the_next_window() -> None:
    """The window's timer starts its append, then yields; a delta written then (the model's next
    token) used to go out at once in the same flush, two appends well inside one window, so Ably's
    rollup held it — and, its window timed from that publish, the stream's next appends too."""
    channel = TimedChannel()
    window = 0.05
    writer = StreamWriter(channel, NoEncoder(), window_s=window)
    await writer.write([PublishOp(OutboundMessage(name="ai-output", data=""), stream_key="s")])
    await writer.write([_delta("a")])  # leading edge: at once
    await writer.write([_delta("b")])  # inside the window: the timer sends it
    channel.appended.clear()
    await channel.appended.wait()  # woken by the timer's append of "b", before its flush resumes
    assert channel.sent[-1] == ("append", "b")
    channel.appended.clear()
    await writer.write([_delta("c")])
    await channel.appended.wait()
    assert channel.sent[1:] == [("append", "a"), ("append", "b"), ("append", "c")]
    # on the loop's own clock (timers never fire early on it): one paced window between b and c
    assert channel.times[2] - channel.times[1] >= pacing_s(window) - 1e-6
    await writer.flush()
    await writer.aclose()


async def test_a_fast_streams_appends_go_a_margin_more_than_the_rollup_window_apart() -> None:
    """Appends exactly one rollup window apart reach Ably a little less apart whenever the first
    one is delayed more than the second, and Ably holds them; a margin over the window absorbs that
    jitter (and undoes a hold within an append or two)."""
    assert pacing_s(0.04) == pytest.approx(0.042)
    assert pacing_s(0.008) == pytest.approx(0.009)
    assert pacing_s(0.0) == 0.0
    channel = TimedChannel()
    window = 0.02
    writer = StreamWriter(channel, NoEncoder(), window_s=window)
    await writer.write([PublishOp(OutboundMessage(name="ai-output", data=""), stream_key="s")])
    for i in range(60):  # faster than one delta per window: every append but the first is timed
        await writer.write([_delta(str(i % 10))])
        await asyncio.sleep(0.002)
    await writer.flush()
    assert "".join(str(d) for _, d in channel.sent[1:]) == "".join(str(i % 10) for i in range(60))
    timed = channel.times[:-1]  # the last append, flush()'s, goes at once
    gaps = [b - a for a, b in itertools.pairwise(timed)]
    assert len(gaps) >= 2
    assert min(gaps) >= pacing_s(window) - 1e-6 > window
    await writer.aclose()
