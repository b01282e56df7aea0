"""End-to-end runs over the embedded server: invocation → run-start → streamed reply → run-end."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from agent_worker.protocol.headers import AI_OUTPUT, AI_RUN_END, AI_RUN_START, AI_STEP_END, AI_STEP_START
from agent_worker.providers.base import ModelRequest, ReasoningDelta, StreamEvent, UsageUpdate
from agent_worker.providers.echo import EchoProvider, ScriptedProvider
from tests.runtime.runtime_support import ChatClient, Harness


async def test_plain_reply_streams_echo_and_ends_complete(
    make_worker: Any, make_client: Any, session_name: str
) -> None:
    """The echo provider's reply arrives as one streamed text part inside a step, bracketed by
    run-start/run-end that echo the trigger's identity."""
    harness: Harness = await make_worker(EchoProvider())
    client: ChatClient = await make_client()
    sent = await client.send_text("Hello there, agent")
    status, body = await harness.invoke(session_name, sent.event_id)
    assert status == 200
    assert set(body) == {"runId", "invocationId"}

    end = await client.run_end_for(sent.codec_message_id)
    headers = end.transport_headers
    assert headers["run-reason"] == "complete"
    assert headers["run-id"] == body["runId"]
    assert headers["invocation-id"] == body["invocationId"]
    assert headers["input-client-id"] == "user-abc"
    assert headers["run-client-id"] == "user-abc"

    run_id = body["runId"]
    start = client.for_input(AI_RUN_START, sent.codec_message_id)[0].transport_headers
    assert start["parent"] == sent.codec_message_id
    assert client.run_text(run_id) == "Hello there, agent"
    names = [m.name for m in client.run_wires(run_id) if m.action == "message.create"]
    assert names[0] == AI_RUN_START and names[1] == AI_STEP_START and names[-1] == AI_RUN_END
    assert names[-2] == AI_STEP_END
    # Every streamed output was closed complete; the step end references the step start's serial.
    streamed = [
        m
        for m in client.run_wires(run_id)
        if m.name == AI_OUTPUT and m.transport_headers.get("stream") == "true"
    ]
    assert streamed, "expected a streamed text part"
    step_start = next(m for m in client.run_wires(run_id) if m.name == AI_STEP_START)
    step_end = next(m for m in client.run_wires(run_id) if m.name == AI_STEP_END)
    assert step_end.transport_headers["step-start-serial"] == step_start.serial
    assert step_end.transport_headers["step-reason"] == "complete"
    # Every output of the step follows its step-start on the channel and names it (the opening
    # chunks, batched while the model is called, too).
    creates = [m for m in client.run_wires(run_id) if m.action == "message.create"]
    outputs = [m for m in creates if m.name == AI_OUTPUT]
    assert [m.codec_headers.get("kind") for m in outputs[:3]] == ["start", "start-step", "text"]
    assert creates.index(outputs[0]) > creates.index(step_start)
    assert {m.transport_headers.get("step-start-serial") for m in outputs} == {step_start.serial}
    node = client.run_node(run_id)
    assert node is not None and node.status == "complete"
    await harness.worker.run_until_idle()
    assert harness.worker.runs_completed == 1


async def test_reasoning_then_text_are_separate_parts(
    make_worker: Any, make_client: Any, session_name: str
) -> None:
    """Reasoning deltas stream as a reasoning part, closed before the answer's text part starts."""

    async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
        yield UsageUpdate(input_tokens=5)
        yield ReasoningDelta("The user greets; ")
        yield ReasoningDelta("greet back.")
        yield "Hello!"
        yield UsageUpdate(output_tokens=3)

    harness: Harness = await make_worker(ScriptedProvider(script))
    client: ChatClient = await make_client()
    sent = await client.send_text("hi")
    _, body = await harness.invoke(session_name, sent.event_id)
    end = await client.run_end_for(sent.codec_message_id)
    assert end.transport_headers["run-reason"] == "complete"
    parts = [p for p in client.run_parts(body["runId"]) if p.get("type") in ("reasoning", "text")]
    assert [(p["type"], p["text"]) for p in parts] == [
        ("reasoning", "The user greets; greet back."),
        ("text", "Hello!"),
    ]
    kinds = [
        m.codec_headers.get("kind") for m in client.run_wires(body["runId"]) if m.action == "message.create"
    ]
    assert kinds.index("reasoning") < kinds.index("text")
