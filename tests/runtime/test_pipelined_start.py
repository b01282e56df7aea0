"""Not waiting for ACKs nobody needs: a run's handler starts once its ``ai-run-start`` is *sent* (not
ACKed), and a message's discrete opening chunks go out as one batch while the model is called —
while everything still goes on the wire in order, and failures still end the run properly. ACKs
are held by the test, so nothing here depends on timing."""

from __future__ import annotations

import asyncio

import pytest

from agent_worker.errors import TransportError
from agent_worker.protocol.headers import RunLifecycle
from agent_worker.protocol.tree import ConversationTree
from agent_worker.protocol.wire import AppendOp, OutboundMessage, PublishOp
from agent_worker.runtime.run import LONG_CONVERSATION_NODES, Run, RunPhase
from agent_worker.runtime.streaming import StreamWriter
from tests.runtime.test_stream_windows import NoEncoder


class HeldAckChannel:
    """Records what is sent, in order; pipelined publishes are ACKed when the test says so."""

    name = "conversations:pipelined"

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.acks: list[asyncio.Future[str | None]] = []
        self.tag_appends = False
        self.outputs: list[tuple[str, str | None]] = []
        """Each ``ai-output`` create: its codec kind and the step-start serial it names."""

    def _label(self, msg: OutboundMessage) -> str:
        if msg.name == "ai-output" and msg.extras:
            ai = msg.extras["ai"]
            self.outputs.append((ai["codec"]["kind"], ai["transport"].get("step-start-serial")))
        return msg.name or f"data:{msg.data}"

    async def publish(self, msg: OutboundMessage) -> str | None:
        self.sent.append(self._label(msg))
        return f"serial-{len(self.sent)}"

    async def acquire(self, *, defer: bool = False) -> None:
        return None

    def try_acquire(self) -> bool:
        return True

    def start_publish(self, msg: OutboundMessage) -> asyncio.Task[str | None]:
        ack: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self.acks.append(ack)
        label = self._label(msg)

        async def run() -> str | None:
            self.sent.append(label)  # the frame is written on the task's first step
            return await ack

        return asyncio.create_task(run())

    def start_append(self, serial: str, msg: OutboundMessage) -> asyncio.Task[str | None]:
        self.sent.append(f"append:{serial}:{msg.data}" if self.tag_appends else f"append:{msg.data}")

        async def ack() -> str | None:
            return None

        return asyncio.create_task(ack())

    async def update(self, serial: str, msg: OutboundMessage) -> str | None:
        self.sent.append(f"update:{msg.data}")
        return None


class Host:
    def __init__(self, channel: HeldAckChannel) -> None:
        self.name = channel.name
        self.channel = channel
        self.tree = ConversationTree()
        self.deregistered: list[Run] = []

    def deregister(self, run: Run) -> None:
        self.deregistered.append(run)


async def test_the_handler_starts_before_the_run_start_ack_and_its_step_follows_on_the_wire() -> None:
    channel = HeldAckChannel()
    run = Run(Host(channel), event_id="e1")
    await run.start(pipelined=True)
    # Not even sent yet (its task's first step writes the frame), and not acknowledged: the run is
    # active (the handler may open a message) already.
    assert channel.sent == [] and run.started and run.phase is RunPhase.ACTIVE
    await asyncio.sleep(0)
    assert channel.sent == ["ai-run-start"]
    assert run.started and run.phase is RunPhase.ACTIVE
    assert not channel.acks[0].done()

    message = run.open_message()
    # The step-start is pipelined too: the first chunk is held for its ACK and the handler goes
    # on (to call the model) at once.
    await message.send({"type": "start"})
    for _ in range(10):
        await asyncio.sleep(0)
    assert channel.sent == ["ai-run-start", "ai-step-start"]
    # The output waits for both ACKs (the run-start's, then the step-start's, whose serial it names).
    channel.acks[1].set_result("serial-step-start")
    for _ in range(10):
        await asyncio.sleep(0)
    assert channel.sent == ["ai-run-start", "ai-step-start"]
    channel.acks[0].set_result("serial-run-start")
    closing = asyncio.ensure_future(message.close())
    await asyncio.wait_for(asyncio.shield(closing), 10)
    assert channel.sent[:3] == ["ai-run-start", "ai-step-start", "ai-output"]  # the message's start chunk
    assert channel.sent[3:] == ["ai-step-end"]
    assert channel.outputs == [("start", "serial-step-start")]
    await run.end("complete")
    assert channel.sent[-2:] == ["ai-step-end", "ai-run-end"]


async def test_a_long_conversations_run_start_is_written_before_the_handler_builds_its_prompt() -> None:
    """A long conversation's prompt costs milliseconds to build in the handler's first turn: the
    run-start's frame is written first (one yield); a short one's is not worth a loop turn."""
    channel = HeldAckChannel()
    host = Host(channel)
    for i in range(LONG_CONVERSATION_NODES):
        host.tree.apply_run_lifecycle(
            RunLifecycle(
                type="start", run_id=f"old-{i}", client_id="agent", invocation_id=f"i{i}", serial=f"s{i:04}"
            )
        )
    assert host.tree.node_count == LONG_CONVERSATION_NODES
    run = Run(host, event_id="e1")
    await run.start(pipelined=True)
    assert channel.sent == ["ai-run-start"] and not channel.acks[0].done()
    assert run.started and run.phase is RunPhase.ACTIVE

    short = HeldAckChannel()
    await Run(Host(short), event_id="e1").start(pipelined=True)
    assert short.sent == []  # written on the loop's next turn (the test above)


async def test_chunks_sent_while_the_step_start_is_unacknowledged_keep_their_order() -> None:
    channel = HeldAckChannel()
    run = Run(Host(channel), event_id="e1")
    await run.start(pipelined=True)
    channel.acks[0].set_result("serial-run-start")
    message = run.open_message()
    await message.send({"type": "start"})
    await message.send({"type": "start-step"})
    # A later chunk (the model's first text) waits for the held ones, which wait for the ACK.
    await message.send({"type": "text-start", "id": "t"})
    await message.send({"type": "text-delta", "id": "t", "delta": "hi"})
    text = asyncio.ensure_future(message.send({"type": "text-delta", "id": "t", "delta": "!"}))
    for _ in range(10):
        await asyncio.sleep(0)
    assert channel.sent == ["ai-run-start", "ai-step-start"]
    channel.acks[1].set_result("serial-step-start")
    await asyncio.wait_for(text, 10)
    await message.close()
    assert channel.sent[2:5] == ["ai-output", "ai-output", "ai-output"]
    assert channel.sent[5:] == ["append:hi", "append:!", "ai-step-end"]
    assert channel.outputs == [(k, "serial-step-start") for k in ("start", "start-step", "text")]


async def test_a_step_start_refused_for_rate_is_published_again_before_its_chunks() -> None:
    channel = HeldAckChannel()
    run = Run(Host(channel), event_id="e1")
    await run.start(pipelined=True)
    channel.acks[0].set_result("serial-run-start")
    message = run.open_message()
    await message.send({"type": "start"})
    channel.acks[1].set_exception(TransportError("rate limit", code=42911, status_code=429))
    await message.close()
    # Refused (not applied), so sent again, acknowledged, before the output that names it.
    assert channel.sent == ["ai-run-start", "ai-step-start", "ai-step-start", "ai-output", "ai-step-end"]
    assert channel.outputs == [("start", "serial-3")]


async def test_a_step_start_refused_for_rate_with_its_run_start_is_not_sent_before_it() -> None:
    """A run-start and step-start of one turn share a frame (Channel.start_publish), so a 429 refuses
    both: the step-start is not published again ahead of the run-start; the run fails, and its end
    follows a run-start published again."""
    channel = HeldAckChannel()
    run = Run(Host(channel), event_id="e1")
    await run.start(pipelined=True)
    message = run.open_message()
    await message.send({"type": "start"})
    refused = TransportError("rate limit", code=42911, status_code=429)
    channel.acks[0].set_exception(refused)
    channel.acks[1].set_exception(refused)
    with pytest.raises(TransportError):
        await message.close()
    await message.close_after_abort("error")
    await run.end("error")
    assert channel.sent == ["ai-run-start", "ai-step-start", "ai-run-start", "ai-run-end"]
    assert channel.outputs == []


async def test_a_failed_pipelined_run_start_is_published_again_before_the_run_end() -> None:
    channel = HeldAckChannel()
    run = Run(Host(channel), event_id="e1")
    await run.start(pipelined=True)
    channel.acks[0].set_exception(TransportError("publish refused", code=42911, status_code=429))
    await run.end("error")
    # The refused run-start is not taken for granted: the run-end follows an acknowledged one.
    assert channel.sent == ["ai-run-start", "ai-run-start", "ai-run-end"]
    assert run.phase is RunPhase.ENDED


async def test_a_failed_pipelined_run_start_fails_the_first_step() -> None:
    channel = HeldAckChannel()
    run = Run(Host(channel), event_id="e1")
    await run.start(pipelined=True)
    channel.acks[0].set_exception(TransportError("publish refused", code=42911, status_code=429))
    message = run.open_message()
    await message.send({"type": "start"})  # held for the step-start's ACK
    channel.acks[1].set_result("serial-step-start")
    with pytest.raises(TransportError):
        await message.close()  # the held chunk's failure: the run-start's
    assert not run.started  # so the run's terminal publishes a run-start first
    await message.close_after_abort("error")
    await run.end("error")
    # Found failed by the step, not by the end: the run-end still follows an acknowledged run-start,
    # and the held chunk never went out.
    assert channel.sent == ["ai-run-start", "ai-step-start", "ai-step-end", "ai-run-start", "ai-run-end"]
    assert run.phase is RunPhase.ENDED and run.outcome == "error"


async def test_a_failed_step_start_fails_the_run_and_nothing_of_the_message_goes_out() -> None:
    channel = HeldAckChannel()
    run = Run(Host(channel), event_id="e1")
    await run.start(pipelined=True)
    channel.acks[0].set_result("serial-run-start")
    message = run.open_message()
    await message.send({"type": "start"})
    channel.acks[1].set_exception(TransportError("refused", code=40160, status_code=401))
    with pytest.raises(TransportError):
        await message.close()
    await message.close_after_abort("error")
    await run.end("error")
    # No serial to name: no output and no step-end; the run ends with its error.
    assert channel.sent == ["ai-run-start", "ai-step-start", "ai-run-end"]


async def test_a_cancelled_step_start_publish_fails_the_message_not_the_run_task() -> None:
    channel = HeldAckChannel()
    run = Run(Host(channel), event_id="e1")
    await run.start(pipelined=True)
    channel.acks[0].set_result("serial-run-start")
    message = run.open_message()
    await message.send({"type": "start"})
    channel.acks[1].cancel()  # e.g. its task cancelled at shutdown
    with pytest.raises(TransportError) as caught:
        await message.close()  # a transport failure (the run ends error), not a CancelledError
    assert caught.value.code == 80003
    await message.close_after_abort("error")
    assert channel.sent == ["ai-run-start", "ai-step-start"]


class BatchChannel(HeldAckChannel):
    """Also has ``publish_batch``, ACKed when the test says so."""

    def __init__(self) -> None:
        super().__init__()
        self.tag_appends = True
        self.batches: list[list[str]] = []
        self.batch_acks: list[asyncio.Future[None]] = []

    async def publish_batch(self, msgs: list[OutboundMessage]) -> list[str | None]:
        self.batches.append([self._label(m) for m in msgs])
        self.sent.extend(self._label(m) for m in msgs)
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.batch_acks.append(ack)
        await ack
        return [f"serial-{i}" for i, _ in enumerate(msgs)]


def _discrete(name: str) -> PublishOp:
    return PublishOp(OutboundMessage(name=name, data=""), stream_key=None)


async def test_a_turns_discrete_chunks_go_as_one_batch_and_the_next_op_waits_for_its_ack() -> None:
    channel = BatchChannel()
    writer = StreamWriter(channel, NoEncoder(), window_s=0.0)
    # Both return at once: the caller (the model call) is not held by their round trips.
    await writer.write([_discrete("start")])
    await writer.write([_discrete("start-step")])
    assert channel.sent == []
    for _ in range(5):
        await asyncio.sleep(0)
    assert channel.batches == [["start", "start-step"]]  # one atomic publish, in order
    text_start = PublishOp(OutboundMessage(name="text-start", data=""), stream_key="s")
    opening = asyncio.ensure_future(writer.write([text_start]))
    for _ in range(10):
        await asyncio.sleep(0)
    assert not opening.done() and channel.sent == ["start", "start-step"]  # nothing overtakes the batch
    channel.batch_acks[0].set_result(None)
    await asyncio.wait_for(opening, 10)
    assert channel.sent == ["start", "start-step", "text-start"]
    await writer.flush()
    await writer.aclose()


async def test_a_stream_create_written_with_the_opening_chunks_goes_last_in_their_batch() -> None:
    channel = BatchChannel()
    writer = StreamWriter(channel, NoEncoder(), window_s=0.0)
    text_start = PublishOp(OutboundMessage(name="text-start", data=""), stream_key="s")
    delta = AppendOp("s", OutboundMessage(name="text", data="hi"))
    # One loop turn (a pipelined step-start's held chunks, the model's first text already among them).
    await writer.write([_discrete("start")])
    await writer.write([_discrete("start-step")])
    await writer.write([text_start])
    appended = asyncio.ensure_future(writer.write([delta]))
    for _ in range(10):
        await asyncio.sleep(0)
    assert channel.batches == [["start", "start-step", "text-start"]]
    assert not appended.done() and channel.sent == ["start", "start-step", "text-start"]
    channel.batch_acks[0].set_result(None)
    await asyncio.wait_for(appended, 10)
    await writer.flush()
    # The append names the create's serial from the batch's ACK (the third message of it).
    assert channel.sent[-1] == "append:serial-2:hi"
    assert writer.open_serials == {"s": "serial-2"}
    await writer.aclose()


async def test_a_stream_create_alone_is_published_not_batched() -> None:
    channel = BatchChannel()
    writer = StreamWriter(channel, NoEncoder(), window_s=0.0)
    await writer.write([PublishOp(OutboundMessage(name="text-start", data=""), stream_key="s")])
    assert channel.batches == [] and channel.sent == ["text-start"]  # awaited as before
    await writer.aclose()


async def test_a_failed_batch_fails_the_writers_next_operation() -> None:
    channel = BatchChannel()
    writer = StreamWriter(channel, NoEncoder(), window_s=0.0)
    await writer.write([_discrete("start")])
    for _ in range(5):
        await asyncio.sleep(0)
    channel.batch_acks[0].set_exception(TransportError("refused", code=40160, status_code=401))
    with pytest.raises(TransportError) as caught:
        await writer.write([_discrete("finish")])
    assert caught.value.code == 40160
    assert channel.sent == ["start"]  # the operation after the failure was not sent
    await writer.aclose()


async def test_a_large_discrete_publish_is_not_batched() -> None:
    """Ably's message size limit applies to a whole publish: only small chunks share one."""
    channel = BatchChannel()
    writer = StreamWriter(channel, NoEncoder(), window_s=0.0)
    await writer.write([_discrete("start")])
    big = asyncio.ensure_future(
        writer.write([PublishOp(OutboundMessage(name="tool-output", data="x" * 5000), stream_key=None)])
    )
    for _ in range(5):
        await asyncio.sleep(0)
    assert channel.batches == [["start"]]  # the big one waits for the batch, then goes alone
    channel.batch_acks[0].set_result(None)
    await asyncio.wait_for(big, 10)
    assert channel.sent == ["start", "tool-output"] and channel.batches == [["start"]]
    await writer.flush()
    await writer.aclose()


class PipelinedBatchChannel(HeldAckChannel):
    """Has ``send_batch`` (the caller took the rate tokens; the frame is written in its first step),
    ACKed when the test says so; takes rate tokens through ``acquire`` (counted)."""

    def __init__(self) -> None:
        super().__init__()
        self.tag_appends = True
        self.batches: list[list[str]] = []
        self.batch_acks: list[asyncio.Future[None]] = []
        self.tokens = 0

    async def acquire(self, *, defer: bool = False) -> None:
        self.tokens += 1

    async def send_batch(self, msgs: list[OutboundMessage]) -> list[str | None]:
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.batch_acks.append(ack)
        labels = [self._label(m) for m in msgs]
        self.batches.append(labels)
        self.sent.extend(labels)  # the frame is written in the first step
        await ack
        return [f"batch-{i}" for i, _ in enumerate(msgs)]


async def test_a_stream_create_goes_behind_the_opening_batch_without_waiting_for_its_ack() -> None:
    """The model's first text after the opening chunks went out: its stream's create follows the
    batch on the wire at once (one round trip before the first append, not two)."""
    channel = PipelinedBatchChannel()
    writer = StreamWriter(channel, NoEncoder(), window_s=0.0)
    await writer.write([_discrete("start")])
    await writer.write([_discrete("start-step")])
    for _ in range(5):
        await asyncio.sleep(0)
    assert channel.batches == [["start", "start-step"]] and channel.tokens == 2  # a token per message
    text_start = PublishOp(OutboundMessage(name="text-start", data=""), stream_key="s")
    delta = AppendOp("s", OutboundMessage(name="text", data="hi"))
    writing = asyncio.ensure_future(writer.write([text_start, delta]))
    for _ in range(10):
        await asyncio.sleep(0)
    # Sent behind the batch, neither ACKed yet; the append waits for the create's serial.
    assert channel.sent == ["start", "start-step", "text-start"] and channel.tokens == 3
    assert not channel.batch_acks[0].done() and not writing.done()
    channel.batch_acks[0].set_result(None)
    channel.acks[0].set_result("serial-create")
    await asyncio.wait_for(writing, 10)
    await writer.flush()
    assert channel.sent == ["start", "start-step", "text-start", "append:serial-create:hi"]
    assert writer.open_serials == {"s": "serial-create"}
    await writer.aclose()


async def test_a_failed_opening_batch_behind_which_a_stream_opened_still_knows_the_stream() -> None:
    """The batch's failure is raised once the create behind it is acknowledged: the stream is
    known, so the failing run can still close it (``cancel_streams``)."""
    channel = PipelinedBatchChannel()
    writer = StreamWriter(channel, NoEncoder(), window_s=0.0)
    await writer.write([_discrete("start")])
    for _ in range(5):
        await asyncio.sleep(0)
    text_start = PublishOp(OutboundMessage(name="text-start", data=""), stream_key="s")
    writing = asyncio.ensure_future(writer.write([text_start]))
    for _ in range(10):
        await asyncio.sleep(0)
    assert channel.sent == ["start", "text-start"]
    channel.batch_acks[0].set_exception(TransportError("refused", code=40160, status_code=401))
    channel.acks[0].set_result("serial-create")
    with pytest.raises(TransportError) as caught:
        await asyncio.wait_for(writing, 10)
    assert caught.value.code == 40160
    assert writer.open_serials == {"s": "serial-create"}
    await writer.aclose()


async def test_a_stream_create_waits_for_a_batch_still_waiting_for_its_rate_tokens() -> None:
    """Before the batch's frame is written (its rate tokens not all taken), a create could overtake
    it: it waits for the batch's ACK as before."""
    channel = PipelinedBatchChannel()
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def slow_acquire(*, defer: bool = False) -> None:
        channel.tokens += 1
        await gate

    channel.acquire = slow_acquire  # type: ignore[method-assign]
    writer = StreamWriter(channel, NoEncoder(), window_s=0.0)
    await writer.write([_discrete("start")])
    text_start = PublishOp(OutboundMessage(name="text-start", data=""), stream_key="s")
    for _ in range(5):
        await asyncio.sleep(0)
    writing = asyncio.ensure_future(writer.write([text_start]))
    for _ in range(10):
        await asyncio.sleep(0)
    assert channel.sent == [] and not writing.done()
    gate.set_result(None)
    for _ in range(10):
        await asyncio.sleep(0)
    assert channel.sent == ["start"]  # the create waits for the batch's ACK
    channel.batch_acks[0].set_result(None)
    await asyncio.wait_for(writing, 10)
    assert channel.sent == ["start", "text-start"]
    await writer.aclose()
