"""The official JS client (@ably/ai-transport 0.8.0: ClientSession, Vercel ChatTransport and the AI
SDK's useChat engine) against this worker on the embedded server.

Each test scripts the provider, runs one Node scenario (tests/js/conformance/scenario-defs.mjs) and
asserts what the official client folded — its session view, useChat's messages, run statuses — and
what the provider was asked (the prompt the worker rebuilt from the channel).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from agent_worker.errors import ProviderConnectionError
from agent_worker.protocol.model import ToolMessage, UserMessage
from agent_worker.providers.base import (
    ModelRequest,
    ReasoningDelta,
    StreamEvent,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
)
from agent_worker.tools.base import Tool
from agent_worker.tools.builtin import get_client_location, send_notification
from agent_worker.tools.registry import ToolRegistry
from tests.conformance.conformance_support import Conductor, last_user_text, transcript
from tests.runtime.runtime_support import sdk_nacks

pytestmark = pytest.mark.node

ScriptFn = Callable[[ModelRequest], AsyncIterator[StreamEvent | str]]


# --- helpers -----------------------------------------------------------------------------------------


def turns(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(m["role"], m["text"]) for m in messages]


def tool_parts(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in message["parts"] if p["type"].startswith("tool-") or p["type"] == "dynamic-tool"]


def tool_outputs(request: ModelRequest) -> list[Any]:
    return [p.output for m in request.messages if isinstance(m, ToolMessage) for p in m.parts]


def open_streams(wire: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Streamed outputs whose stored (latest) version is still ``status: streaming``."""
    return [
        m
        for m in wire
        if m["name"] == "ai-output"
        and (m["transport"] or {}).get("stream") == "true"
        and (m["transport"] or {}).get("status") == "streaming"
    ]


def names(wire: list[dict[str, Any]], run_id: str) -> list[str]:
    return [
        m["name"] for m in wire if (m["transport"] or {}).get("run-id") == run_id and m["name"] != "ai-output"
    ]


def assert_chat_matches_view(device: dict[str, Any]) -> None:
    """useChat's messages (streamed + synced the useMessageSync way) equal the session view."""
    assert [(m["id"], m["role"], m["text"]) for m in device["chat"]] == [
        (m["id"], m["role"], m["text"]) for m in device["view"]
    ]


def tokens(*parts: str) -> ScriptFn:
    async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
        for token in parts:
            yield token

    return script


def story(conductor: Conductor) -> ScriptFn:
    """Three tokens, then waits for gate ``finish``; records how the provider stream ended."""

    async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
        try:
            for token in ("Once", " upon", " a time"):
                yield token
            await conductor.gate("finish")
            yield ", the end."
        except (asyncio.CancelledError, GeneratorExit):
            conductor.record("provider-closed")
            raise
        conductor.record("provider-finished")

    return script


# --- plain reply ---------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["msgpack", "json"])
async def test_plain_reply(make_stack: Any, protocol: str) -> None:
    stack = await make_stack(tokens("Hi", " there", ", ", "alice", "!"))
    result = await stack.scenario("send", protocol=protocol)
    a = result["a"]
    assert turns(a["view"]) == [("user", "Hello there"), ("assistant", "Hi there, alice!")]
    assert_chat_matches_view(a)
    assert a["chatStatus"] == "ready" and a["chatError"] is None and a["sessionErrors"] == []
    [run] = a["runs"]
    assert run["status"] == "complete" and run["clientId"] == "alice"
    assert transcript(stack.provider.requests[0]) == [("user", "Hello there")]
    assert len(stack.provider.requests) == 1
    assert names(result["wire"], run["runId"]) == [
        "ai-run-start",
        "ai-step-start",
        "ai-step-end",
        "ai-run-end",
    ]
    assert open_streams(result["wire"]) == []


async def test_reply_over_the_message_size_limit(make_stack: Any) -> None:
    """~100 KiB produced faster than one append per coalescing window (the writer merges it):
    every append stays within Ably's 64 KiB maxMessageSize, and the official client gets it whole."""
    chunks = [f"{i:04d}" + "y" * 1019 + " " for i in range(100)]
    stack = await make_stack(tokens(*chunks))
    result = await stack.scenario("send")
    a = result["a"]
    assert turns(a["view"]) == [("user", "Hello there"), ("assistant", "".join(chunks))]
    assert [r["status"] for r in a["runs"]] == ["complete"]
    assert a["sessionErrors"] == []
    assert open_streams(result["wire"]) == []


async def test_multi_turn_prompt_carries_history(make_stack: Any) -> None:
    async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
        yield f"Reply to {last_user_text(request)}"

    stack = await make_stack(script)
    result = await stack.scenario("send", texts=["one", "two"])
    assert turns(result["a"]["view"]) == [
        ("user", "one"),
        ("assistant", "Reply to one"),
        ("user", "two"),
        ("assistant", "Reply to two"),
    ]
    assert transcript(stack.provider.requests[1]) == [
        ("user", "one"),
        ("assistant", "Reply to one"),
        ("user", "two"),
    ]


async def test_reasoning_and_file_parts(make_stack: Any) -> None:
    """A user file part reaches the provider; reasoning and text stream as separate parts."""

    async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
        yield ReasoningDelta("The user sent ")
        yield ReasoningDelta("a picture.")
        yield "Nice picture."

    stack = await make_stack(script)
    image = "data:image/png;base64,iVBORw0KGgo="
    files = [{"type": "file", "mediaType": "image/png", "url": image}]
    result = await stack.scenario("send", texts=["What is this?"], files=files)
    a = result["a"]
    user, assistant = a["view"]
    assert [p["type"] for p in user["parts"]] == ["file", "text"]
    assert user["parts"][0]["url"] == image
    assert [p["type"] for p in assistant["parts"]] == ["step-start", "reasoning", "text"]
    assert assistant["parts"][1]["text"] == "The user sent a picture."
    assert assistant["text"] == "Nice picture."
    assert_chat_matches_view(a)
    [prompt_user] = stack.provider.requests[0].messages
    assert isinstance(prompt_user, UserMessage)
    kinds = [
        (type(p).__name__, getattr(p, "url", None) or getattr(p, "text", None)) for p in prompt_user.parts
    ]
    assert kinds == [("FilePart", image), ("TextPart", "What is this?")]
    assert prompt_user.parts[0].media_type == "image/png"  # type: ignore[union-attr]


# --- server-side tool --------------------------------------------------------------------------


def get_weather(city: str) -> dict[str, Any]:
    """Current weather for a city.

    Args:
        city: The city name.
    """
    return {"city": city, "tempC": 21}


async def weather_script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
    outputs = tool_outputs(request)
    if not outputs:
        yield ToolCallStart("call_1", "get_weather")
        yield ToolCallDelta("call_1", '{"city":')
        yield ToolCallDelta("call_1", '"Paris"}')
        yield ToolCallEnd("call_1", "get_weather", '{"city":"Paris"}')
        return
    yield f"It is {outputs[-1]['tempC']}°C in {outputs[-1]['city']}."


async def test_server_tool_then_text(make_stack: Any) -> None:
    stack = await make_stack(weather_script, tools=ToolRegistry([Tool.from_function(get_weather)]))
    result = await stack.scenario("send", texts=["Weather in Paris?"])
    a = result["a"]
    assert_chat_matches_view(a)
    _user, assistant = a["view"]
    assert assistant["text"] == "It is 21°C in Paris."
    [tool] = tool_parts(assistant)
    assert tool["type"] == "tool-get_weather"
    assert tool["state"] == "output-available"
    assert tool["input"] == {"city": "Paris"}
    assert tool["output"] == {"city": "Paris", "tempC": 21}
    # The AI SDK shape: a step per model call, the tool part in the first, the text in the second.
    assert [p["type"] for p in assistant["parts"]] == ["step-start", "tool-get_weather", "step-start", "text"]
    [run] = a["runs"]
    assert run["status"] == "complete"
    assert len(stack.provider.requests) == 2
    assert tool_outputs(stack.provider.requests[1]) == [{"city": "Paris", "tempC": 21}]
    assert open_streams(result["wire"]) == []


# --- cancel ------------------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["stop", "session"])
async def test_owner_cancel_mid_stream(make_stack: Any, conductor: Conductor, via: str) -> None:
    story_script = story(conductor)

    async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
        if last_user_text(request) == "And now?":
            yield "Fresh answer"
            return
        async for item in story_script(request):
            yield item

    stack = await make_stack(script)
    result = await stack.scenario("cancelOwner", via=via)
    at_cancel = result["atCancel"]
    [run] = at_cancel["runs"]
    assert run["status"] == "cancelled"
    # The text streamed so far is kept, in the view and in useChat's message.
    assert turns(at_cancel["view"]) == [("user", "Tell me a long story"), ("assistant", "Once upon a time")]
    assert result["chatTextBeforeStop"] == "Once upon a time"
    assert at_cancel["chat"][-1]["text"] == "Once upon a time"
    assert at_cancel["chatStatus"] == "ready"
    assert at_cancel["sessionErrors"] == []
    # The provider stream was closed by the cancel, never finished.
    assert "provider-closed" in conductor.log and "provider-finished" not in conductor.log
    assert open_streams(result["wire"]) == []
    streamed = [
        m
        for m in result["wire"]
        if m["name"] == "ai-output"
        and (m["transport"] or {}).get("stream") == "true"
        and m["transport"]["run-id"] == run["runId"]
    ]
    assert streamed and all(m["transport"]["status"] == "cancelled" for m in streamed)
    ends = [m for m in result["wire"] if m["name"] == "ai-run-end"]
    assert ends[0]["transport"]["run-reason"] == "cancelled"
    [cancel] = [m for m in result["wire"] if m["name"] == "ai-cancel"]
    if via == "session":
        assert cancel["transport"]["run-id"] == run["runId"]
    else:
        assert "input-codec-message-id" in cancel["transport"]
    # The follow-up's prompt leaves out the cancelled turn (question included), like the JS agent.
    assert transcript(stack.provider.requests[-1]) == [("user", "And now?")]
    assert turns(result["a"]["view"])[-2:] == [("user", "And now?"), ("assistant", "Fresh answer")]
    await stack.worker.run_until_idle()
    assert stack.worker.runs_cancelled == 1


async def test_cancel_from_another_client_is_refused(make_stack: Any, conductor: Conductor) -> None:
    stack = await make_stack(story(conductor))
    result = await stack.scenario("cancelRefused", clients=("alice", "mallory"))
    assert result["decided"]["ok"] is True
    for device in (result["a"], result["m"]):
        [run] = device["runs"]
        assert run["status"] == "complete"
        assert turns(device["view"]) == [
            ("user", "Tell me a long story"),
            ("assistant", "Once upon a time, the end."),
        ]
    assert "provider-finished" in conductor.log and "provider-closed" not in conductor.log
    cancels = [m for m in result["wire"] if m["name"] == "ai-cancel"]
    assert len(cancels) == 1 and cancels[0]["clientId"] == "mallory"


# --- provider error ----------------------------------------------------------------------------


async def failing_script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
    yield "Partial"
    yield " answer"
    msg = "upstream stream broke"
    raise ProviderConnectionError(msg)


async def test_provider_error_mid_stream(make_stack: Any) -> None:
    stack = await make_stack(failing_script)
    result = await stack.scenario("providerError")
    a = result["a"]
    [run] = a["runs"]
    assert run["status"] == "error"
    assert run["error"]["code"] == 104008
    assert "upstream stream broke" in run["error"]["message"]
    # useChat surfaces the failure; the text streamed so far stays in the view.
    assert a["chatStatus"] == "error"
    assert a["chatError"] is not None
    assert any(e["code"] == 104008 for e in a["sessionErrors"])
    assert turns(a["view"]) == [("user", "Explain quantum physics"), ("assistant", "Partial answer")]
    # No stream is left "streaming" for late joiners replaying history.
    assert open_streams(result["wire"]) == []
    end = next(m for m in result["wire"] if m["name"] == "ai-run-end")
    assert end["transport"]["run-reason"] == "error"
    assert end["transport"]["error-code"] == "104008"


# --- late joiner ---------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["msgpack", "json"])
async def test_late_joiner_mid_stream_sees_complete_text(
    make_stack: Any, conductor: Conductor, protocol: str
) -> None:
    async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
        for token in ("one ", "two ", "three "):
            yield token
        await conductor.gate("half")
        for token in ("four ", "five ", "six"):
            yield token

    stack = await make_stack(script)
    result = await stack.scenario("lateJoiner", protocol=protocol, clients=("alice", "bob"))
    a, b = result["a"], result["b"]
    # bob joined while the reply was streaming: he saw the partial text from history ...
    assert turns(result["bobAtJoin"]) == [("user", "Count to six"), ("assistant", "one two three ")]
    # ... and ends with exactly what alice has.
    expected = [("user", "Count to six"), ("assistant", "one two three four five six")]
    assert turns(a["view"]) == expected
    assert turns(b["view"]) == expected
    assert [m["parts"] for m in b["view"]] == [m["parts"] for m in a["view"]]
    assert [r["status"] for r in b["runs"]] == ["complete"]


@pytest.mark.parametrize("drop", ["agent-worker", "alice"])
async def test_connection_drop_mid_stream(make_stack: Any, conductor: Conductor, drop: str) -> None:
    async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
        for token in ("one ", "two ", "three "):
            yield token
        await conductor.gate("half")
        for token in ("four ", "five ", "six"):
            yield token

    stack = await make_stack(script)
    result = await stack.scenario("dropMidStream", dropClient=drop)
    assert result["dropped"]["dropped"] >= 1
    a = result["a"]
    assert turns(a["view"]) == [("user", "Count to six"), ("assistant", "one two three four five six")]
    assert_chat_matches_view(a)
    assert [r["status"] for r in a["runs"]] == ["complete"]
    assert a["sessionErrors"] == []
    assert open_streams(result["wire"]) == []
    stored = [m for m in result["wire"] if m["name"] == "ai-output" and m["codec"].get("kind") == "text"]
    assert [m["data"] for m in stored] == ["one two three four five six"]


async def test_worker_drop_without_resume_after_an_unacked_append(
    make_stack: Any, conductor: Conductor
) -> None:
    """The server applied "four " but its ACK never reached the worker, whose connection then could
    not be resumed: the official client still shows every word once, and history stores the same."""

    async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
        for token in ("one ", "two ", "three "):
            yield token
        await conductor.gate("held")
        yield "four "
        await conductor.gate("half")
        for token in ("five ", "six"):
            yield token

    stack = await make_stack(script)
    result = await stack.scenario("dropUnackedNoResume")
    assert result["held"]["held"] == 1 and result["dropped"]["dropped"] == 1
    a = result["a"]
    assert turns(a["view"]) == [("user", "Count to six"), ("assistant", "one two three four five six")]
    assert_chat_matches_view(a)
    assert [r["status"] for r in a["runs"]] == ["complete"]
    assert open_streams(result["wire"]) == []
    stored = [m for m in result["wire"] if m["name"] == "ai-output" and m["codec"].get("kind") == "text"]
    assert [m["data"] for m in stored] == ["one two three four five six"]


async def test_a_refused_append_reaches_the_official_client_while_streaming(
    make_stack: Any, conductor: Conductor
) -> None:
    """The server NACKs the worker's append of "four " and the reply goes on: before "five " the
    worker sends the text so far as a ``streaming`` update, which the official decoder applies as a
    prefix extension, so the view reads "one two three four five " while the run is still active
    (a repair only after the close would be ignored: the closed stream would keep the gap)."""

    async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
        for token in ("one ", "two ", "three "):
            yield token
        await conductor.gate("refuse")
        yield "four "  # NACKed
        await nacks.wait()  # the worker has seen the NACK
        yield "five "
        await conductor.gate("half")
        yield "six"

    stack = await make_stack(script)
    with sdk_nacks() as nacks:
        result = await stack.scenario("nackMidStream")
    assert result["refused"]["armed"] == 1
    assert result["whileStreaming"] == ["active"]
    a = result["a"]
    assert turns(a["view"]) == [("user", "Count to six"), ("assistant", "one two three four five six")]
    assert_chat_matches_view(a)
    assert [r["status"] for r in a["runs"]] == ["complete"]
    assert open_streams(result["wire"]) == []
    stored = [m for m in result["wire"] if m["name"] == "ai-output" and m["codec"].get("kind") == "text"]
    assert [m["data"] for m in stored] == ["one two three four five six"]


# --- regenerate and edit -------------------------------------------------------------------------


def numbered(prefix: str) -> ScriptFn:
    calls = [0]

    async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
        calls[0] += 1
        yield f"{prefix} {calls[0]}"

    return script


async def test_regenerate(make_stack: Any) -> None:
    stack = await make_stack(numbered("Joke"))
    result = await stack.scenario("regenerate")
    assert turns(result["before"]["view"]) == [("user", "Tell me a joke"), ("assistant", "Joke 1")]
    a = result["a"]
    assert turns(a["view"]) == [("user", "Tell me a joke"), ("assistant", "Joke 2")]
    assert_chat_matches_view(a)
    # The regenerated reply is a navigable sibling of the first.
    assert result["siblings"] == {"has": True, "count": 2, "index": 1}
    # The prompt stops before the regenerated message: the old answer is not in it.
    assert transcript(stack.provider.requests[1]) == [("user", "Tell me a joke")]
    assert sorted(r["status"] for r in a["runs"]) == ["complete"] * len(a["runs"])


async def test_edit(make_stack: Any) -> None:
    stack = await make_stack(numbered("Answer"))
    result = await stack.scenario("edit")
    assert turns(result["before"]["view"]) == [
        ("user", "first question"),
        ("assistant", "Answer 1"),
        ("user", "second question"),
        ("assistant", "Answer 2"),
    ]
    a = result["a"]
    assert turns(a["view"]) == [
        ("user", "first question"),
        ("assistant", "Answer 1"),
        ("user", "second question, edited"),
        ("assistant", "Answer 3"),
    ]
    assert_chat_matches_view(a)
    assert result["siblings"] == {"has": True, "count": 2, "index": 1}
    # The edited prompt replaces the old question and drops its answer.
    assert transcript(stack.provider.requests[2]) == [
        ("user", "first question"),
        ("assistant", "Answer 1"),
        ("user", "second question, edited"),
    ]


# --- approval: suspend → resume ------------------------------------------------------------------


async def approval_script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
    outputs = tool_outputs(request)
    if not outputs:
        yield "Let me notify them."
        yield ToolCallEnd("call_n", "send_notification", '{"message":"hi"}')
        return
    yield f"Result: {outputs[-1]}"


@pytest.mark.parametrize("approved", [True, False], ids=["approved", "denied"])
async def test_approval_suspend_then_resume(make_stack: Any, approved: bool) -> None:
    tools = ToolRegistry([Tool.from_function(send_notification, requires_approval=True)])
    stack = await make_stack(approval_script, tools=tools)
    result = await stack.scenario("approval", approved=approved)
    at_suspend = result["atSuspend"]
    [requested] = tool_parts(at_suspend["view"][-1])
    assert requested["state"] == "approval-requested"
    assert requested["input"] == {"message": "hi"}
    assert [r["status"] for r in at_suspend["runs"]] == ["suspended"]

    a = result["a"]
    # One run, resumed in place (ai-run-resume, not a second run-start).
    [run] = a["runs"]
    assert run["runId"] == result["suspendedRunId"] and run["status"] == "complete"
    assert names(result["wire"], run["runId"]).count("ai-run-start") == 1
    assert "ai-run-suspend" in names(result["wire"], run["runId"])
    assert "ai-run-resume" in names(result["wire"], run["runId"])
    assistants = [m for m in a["view"] if m["role"] == "assistant"]
    [tool] = [p for m in assistants for p in tool_parts(m)]
    if approved:
        assert tool["state"] == "output-available"
        assert tool["output"] == "notification sent: hi"
        assert assistants[-1]["text"].endswith("Result: notification sent: hi")
        assert tool_outputs(stack.provider.requests[-1]) == ["notification sent: hi"]
    else:
        assert tool["state"] == "output-denied"
        assert len(stack.provider.requests) == 2
        [denial] = tool_outputs(stack.provider.requests[-1])
        assert "denied" in str(denial).lower()
    assert open_streams(result["wire"]) == []


# --- client-side tool: suspend → fork ------------------------------------------------------------


async def location_script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
    outputs = tool_outputs(request)
    if not outputs:
        yield ToolCallEnd("call_loc", "get_client_location", "{}")
        return
    yield f"You are in {outputs[-1]['city']}."


async def test_client_tool_result_forks_a_new_run(make_stack: Any) -> None:
    tools = ToolRegistry([Tool.from_function(get_client_location, client_side=True)])
    stack = await make_stack(location_script, tools=tools)
    result = await stack.scenario("clientTool")
    [call] = tool_parts(result["atSuspend"]["view"][-1])
    assert call["state"] == "input-available" and call["toolCallId"] == "call_loc"

    a = result["a"]
    statuses = {r["runId"]: r["status"] for r in a["runs"]}
    assert statuses.get(result["forkRunId"]) == "complete"
    assert result["forkRunId"] != result["suspendedRunId"]
    # The fork opened with a fresh ai-run-start; the suspended run was never resumed.
    assert names(result["wire"], result["forkRunId"])[0] == "ai-run-start"
    assert "ai-run-resume" not in names(result["wire"], result["suspendedRunId"])
    # One linear conversation: the seeded tool call with its output, then the answer.
    assert [m["role"] for m in a["view"]] == ["user", "assistant", "assistant"]
    assert_chat_matches_view(a)
    parts = [p for m in a["view"] if m["role"] == "assistant" for p in m["parts"]]
    [tool] = [p for p in parts if p.get("toolCallId") == "call_loc"]
    assert tool["state"] == "output-available" and tool["output"] == {"city": "Lisbon"}
    assert a["view"][-1]["text"] == "You are in Lisbon."
    # The prompt: the original question, the call, its client-supplied result.
    request = stack.provider.requests[-1]
    assert transcript(request)[0] == ("user", "Where am I?")
    assert tool_outputs(request) == [{"city": "Lisbon"}]


# --- steering ------------------------------------------------------------------------------------


async def test_steering_is_answered_by_a_second_pass(make_stack: Any, conductor: Conductor) -> None:
    async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
        if last_user_text(request) == "Write a poem":
            yield "Roses are red"
            await conductor.gate("steer")
            yield ", violets are blue."
        else:
            yield "Cats purr softly."

    stack = await make_stack(script)
    result = await stack.scenario("steering")
    assert result["posted"]["status"] == 200
    assert result["outcome"] == {"consumed": True, "runTerminalReason": "complete"}
    [run] = result["a"]["runs"]
    assert run["runId"] == result["runId"] and run["status"] == "complete"
    # The steering message joined the run; the second pass answered it.
    assert len(stack.provider.requests) == 2
    assert transcript(stack.provider.requests[1]) == [
        ("user", "Write a poem"),
        ("assistant", "Roses are red, violets are blue."),
        ("user", "Make it about cats"),
    ]
    texts = turns(result["a"]["view"])
    assert texts[0] == ("user", "Write a poem")
    assert ("user", "Make it about cats") in texts
    assert texts[-1] == ("assistant", "Cats purr softly.")
    stamped = [
        m
        for m in result["wire"]
        if m["name"] == "ai-output" and "steer-codec-message-ids" in (m["transport"] or {})
    ]
    assert stamped, "the second pass stamps the steer it answered"


# --- concurrent runs -----------------------------------------------------------------------------


async def test_two_concurrent_runs(make_stack: Any, conductor: Conductor) -> None:
    async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
        which = last_user_text(request)
        yield f"{which}-a "
        conductor.record(f"{which}-waiting")
        await conductor.gate("both")
        yield f"{which}-b"

    stack = await make_stack(script)
    result = await stack.scenario("concurrent")
    assert [p["status"] for p in result["posts"]] == [200, 200]
    assert len(result["bothActive"]) == 2
    first, second = result["runs"]
    assert first["runId"] != second["runId"]
    assert first["status"] == second["status"] == "complete"
    assert [m["text"] for m in first["messages"] if m["role"] == "assistant"] == ["first-a first-b"]
    assert [m["text"] for m in second["messages"] if m["role"] == "assistant"] == ["second-a second-b"]
    # Each run's outputs name its own trigger, so the two streams never mix.
    for run in (first, second):
        outputs = [
            m
            for m in result["wire"]
            if (m["transport"] or {}).get("run-id") == run["runId"] and not m["name"].startswith("ai-step")
        ]
        assert outputs
        assert {m["transport"].get("input-codec-message-id") for m in outputs} == {run["inputCodecMessageId"]}
    assert open_streams(result["wire"]) == []


# --- two devices ---------------------------------------------------------------------------------


async def test_two_devices_end_with_identical_conversations(make_stack: Any) -> None:
    async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
        yield "Reply to "
        yield last_user_text(request)

    stack = await make_stack(script)
    result = await stack.scenario("twoDevices", clients=("alice", "bob", "carol"))
    expected = [
        ("user", "Q1 from alice"),
        ("assistant", "Reply to Q1 from alice"),
        ("user", "Q2 from bob"),
        ("assistant", "Reply to Q2 from bob"),
        ("user", "Q3 from alice"),
        ("assistant", "Reply to Q3 from alice"),
    ]
    a, b, c = result["a"], result["b"], result["c"]
    for device in (a, b, c):
        assert turns(device["view"]) == expected
        assert [r["status"] for r in device["runs"]] == ["complete"] * 3
    assert a["view"] == b["view"] == c["view"]
    assert_chat_matches_view(a)
    assert_chat_matches_view(b)
    assert [r["clientId"] for r in a["runs"]] == ["alice", "bob", "alice"]
    # bob's question was answered with alice's first turn in the prompt.
    assert transcript(stack.provider.requests[1]) == expected[:3]
    assert transcript(stack.provider.requests[2]) == expected[:5]
