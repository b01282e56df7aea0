"""The official JS client with ``ResponsesCodec`` (``@ably/ai-transport/openai``: core ClientSession,
no UI framework) against this worker: every scenario folds to the official ``OpenAIMessage`` shape
(Responses items + per-call tool state), run statuses match, and the worker serves it alongside the
Vercel suites (same worker code, codec chosen from the session's codec headers)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

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
from tests.conformance.conformance_support import Conductor, last_user_text
from tests.conformance.test_official_client import open_streams, story, tokens, turns

pytestmark = pytest.mark.node


def get_weather(city: str) -> dict[str, Any]:
    """Current weather for a city.

    Args:
        city: The city name.
    """
    return {"city": city, "tempC": 21}


def items_of(view: list[dict[str, Any]], role: str = "assistant") -> list[dict[str, Any]]:
    return [i for m in view if m["role"] == role for i in m["items"]]


def item_types(view: list[dict[str, Any]]) -> list[str]:
    return [i["type"] for i in items_of(view)]


def function_outputs(request: ModelRequest) -> list[Any]:
    return [i["output"] for i in request.responses_input or [] if i.get("type") == "function_call_output"]


@pytest.mark.parametrize("protocol", ["msgpack", "json"])
async def test_plain_reply(make_stack: Any, protocol: str) -> None:
    stack = await make_stack(tokens("Hi", " there", "!"))
    result = await stack.scenario("openaiSend", protocol=protocol, texts=["Hello", "Again"])
    a = result["a"]
    assert turns(a["view"]) == [
        ("user", "Hello"),
        ("assistant", "Hi there!"),
        ("user", "Again"),
        ("assistant", "Hi there!"),
    ]
    assert a["sessionErrors"] == [] and [r["status"] for r in a["runs"]] == ["complete", "complete"]
    user = a["view"][0]["items"]
    assert user == [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello"}]}]
    (message,) = a["view"][1]["items"]
    assert message["type"] == "message" and message["status"] == "completed"
    assert message["content"] == [{"type": "output_text", "text": "Hi there!", "annotations": []}]
    # the second prompt carried the first turn as Responses items, exactly as the client folded it
    second = stack.provider.requests[1].responses_input
    assert second == [*user, message, *a["view"][2]["items"]]
    assert open_streams(result["wire"]) == []
    kinds = {(m["codec"] or {}).get("kind") for m in result["wire"] if m["name"] == "ai-output"}
    assert kinds == {"response.output_item.added", "output_text", "response.output_item.done"}


async def test_function_call_then_text_and_reasoning(make_stack: Any) -> None:
    async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
        if not function_outputs(request):
            yield ReasoningDelta("Need the ")
            yield ReasoningDelta("weather tool.")
            yield ToolCallStart("call_1", "get_weather")
            yield ToolCallDelta("call_1", '{"city":')
            yield ToolCallDelta("call_1", '"Paris"}')
            yield ToolCallEnd("call_1", "get_weather", '{"city":"Paris"}')
            return
        out = json.loads(function_outputs(request)[-1])
        yield f"It is {out['tempC']}°C in {out['city']}."

    stack = await make_stack(script, tools=ToolRegistry([Tool.from_function(get_weather)]))
    result = await stack.scenario("openaiSend", texts=["Weather in Paris?"])
    view = result["a"]["view"]
    assert item_types(view) == ["reasoning", "function_call", "function_call_output", "message"]
    reasoning, call, output, _ = items_of(view)
    assert reasoning["summary"] == [{"type": "summary_text", "text": "Need the weather tool."}]
    assert (call["name"], call["arguments"], call["status"]) == (
        "get_weather",
        '{"city":"Paris"}',
        "completed",
    )
    assert output == {
        "type": "function_call_output",
        "call_id": "call_1",
        "output": '{"city":"Paris","tempC":21}',
    }
    assert turns(view)[-1] == ("assistant", "It is 21°C in Paris.")


@pytest.mark.parametrize("via", ["session", "run"])
async def test_owner_cancel_keeps_partial_text(make_stack: Any, conductor: Conductor, via: str) -> None:
    async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
        if last_user_text(request) == "And now?":
            yield "Fresh answer."
            return
        async for token in story(conductor)(request):
            yield token

    stack = await make_stack(script)
    result = await stack.scenario("openaiCancelOwner", via=via)
    at_cancel = result["atCancel"]
    assert [r["status"] for r in at_cancel["runs"]] == ["cancelled"]
    assert turns(at_cancel["view"]) == [("user", "Tell me a long story"), ("assistant", "Once upon a time")]
    assert turns(result["a"]["view"])[-1] == ("assistant", "Fresh answer.")
    assert open_streams(result["wire"]) == []  # the cancelled stream was closed, not left streaming
    streamed = [m for m in result["wire"] if m["name"] == "ai-output" and m["transport"]["stream"] == "true"]
    assert streamed[0]["transport"]["status"] == "cancelled"
    # the follow-up's prompt leaves out the cancelled turn (question included), like the JS agent
    follow_up = stack.provider.requests[-1].responses_input or []
    assert [p["text"] for i in follow_up for p in i["content"]] == ["And now?"]


async def test_stranger_cancel_is_refused(make_stack: Any, conductor: Conductor) -> None:
    stack = await make_stack(story(conductor))
    result = await stack.scenario("openaiCancelRefused", clients=("alice", "mallory"))
    assert result["decided"]["ok"]
    for device in (result["a"], result["m"]):
        assert turns(device["view"]) == [
            ("user", "Tell me a long story"),
            ("assistant", "Once upon a time, the end."),
        ]
        assert [r["status"] for r in device["runs"]] == ["complete"]


@pytest.mark.parametrize("protocol", ["msgpack", "json"])
async def test_late_joiner_mid_stream(make_stack: Any, conductor: Conductor, protocol: str) -> None:
    async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
        for token in ("one ", "two ", "three "):
            yield token
        await conductor.gate("half")
        for token in ("four ", "five ", "six"):
            yield token

    stack = await make_stack(script)
    result = await stack.scenario("openaiLateJoiner", protocol=protocol, clients=("alice", "bob"))
    assert turns(result["bobAtJoin"]) == [("user", "Count to six"), ("assistant", "one two three ")]
    expected = [("user", "Count to six"), ("assistant", "one two three four five six")]
    assert turns(result["a"]["view"]) == turns(result["b"]["view"]) == expected
    assert result["b"]["view"] == result["a"]["view"]


async def test_regenerate_and_edit(make_stack: Any) -> None:
    calls: list[str] = []

    async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
        calls.append(last_user_text(request))
        n = len(calls)
        yield {1: "Joke 1", 2: "Joke 2", 3: "Answer 1", 4: "Answer 2"}[n]

    stack = await make_stack(script)
    result = await stack.scenario("openaiRegenerateEdit")
    assert turns(result["afterRegenerate"]["view"]) == [("user", "Tell me a joke"), ("assistant", "Joke 2")]
    assert result["regenerateSiblings"] == 2
    assert turns(result["a"]["view"]) == [
        ("user", "Tell me a joke"),
        ("assistant", "Joke 2"),
        ("user", "second question, edited"),
        ("assistant", "Answer 2"),
    ]
    assert result["editSiblings"] == {"count": 2, "index": 1}
    assert calls == ["Tell me a joke", "Tell me a joke", "second question", "second question, edited"]
    # the regenerated and the edited turns never reach the model
    last = stack.provider.requests[-1].responses_input or []
    texts = [p["text"] for i in last if i.get("type") == "message" for p in i["content"]]
    assert texts == ["Tell me a joke", "Joke 2", "second question, edited"]


def approval_script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
    async def gen() -> AsyncIterator[StreamEvent | str]:
        outputs = function_outputs(request)
        if not outputs:
            yield "Let me notify them."
            yield ToolCallStart("call_n", "send_notification")
            yield ToolCallEnd("call_n", "send_notification", '{"message":"hi"}')
            return
        yield f"Result: {outputs[-1]}"

    return gen()


@pytest.mark.parametrize("approved", [True, False])
async def test_approval_suspend_then_resume(make_stack: Any, approved: bool) -> None:
    tools = ToolRegistry([Tool.from_function(send_notification, requires_approval=True)])
    stack = await make_stack(approval_script, tools=tools)
    result = await stack.scenario("openaiApproval", approved=approved)
    assert result["pending"] == {
        "approval": "pending",
        "name": "send_notification",
        "arguments": '{"message":"hi"}',
    }
    assert [r["status"] for r in result["atSuspend"]["runs"]] == ["suspended"]
    a = result["a"]
    assert [r["status"] for r in a["runs"]] == ["complete"] and a["runs"][0]["runId"] == result[
        "suspendedRunId"
    ]
    expected = "Result: notification sent: hi" if approved else "Result: Tool execution was not approved."
    assert turns(a["view"])[-1] == ("assistant", expected)
    names = [m["name"] for m in result["wire"] if m["name"] and m["name"].startswith("ai-run")]
    assert names == ["ai-run-start", "ai-run-suspend", "ai-run-resume", "ai-run-end"]


async def test_client_side_function_call(make_stack: Any) -> None:
    async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
        outputs = function_outputs(request)
        if not outputs:
            yield ToolCallStart("call_loc", "get_client_location")
            yield ToolCallEnd("call_loc", "get_client_location", "{}")
            return
        yield f"You are in {json.loads(outputs[-1])['city']}."

    tools = ToolRegistry([Tool.from_function(get_client_location, client_side=True)])
    stack = await make_stack(script, tools=tools)
    result = await stack.scenario("openaiClientTool")
    assert [r["status"] for r in result["atSuspend"]["runs"]] == ["suspended"]
    a = result["a"]
    assert turns(a["view"])[-1] == ("assistant", "You are in Lisbon.")
    holder = next(m for m in a["view"] if m["toolCallStates"])
    assert holder["toolCallStates"] == {"call_loc": {"result": "ok"}}
    assert [r["status"] for r in a["runs"]] == ["complete"]


async def test_two_concurrent_runs(make_stack: Any, conductor: Conductor) -> None:
    async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
        which = last_user_text(request)
        yield f"{which}-a "
        conductor.record(f"{which}-waiting")
        await conductor.gate("both")
        yield f"{which}-b"

    stack = await make_stack(script)
    result = await stack.scenario("openaiConcurrent")
    assert len(result["bothActive"]) == 2
    assert sorted(t for r, t in turns(result["a"]["view"]) if r == "assistant") == [
        "first-a first-b",
        "second-a second-b",
    ]
    assert [r["status"] for r in result["a"]["runs"]] == ["complete", "complete"]
