"""``openai-responses`` sessions through the worker: Responses events on the wire, codec chosen per
session from the trigger's codec headers (or pinned), mixed sessions refused, approvals."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from agent_worker.config import config_from_mapping
from agent_worker.errors import ConfigError
from agent_worker.protocol.codecs import CODECS, OPENAI_RESPONSES, VERCEL
from agent_worker.protocol.headers import AI_OUTPUT
from agent_worker.providers.base import ModelRequest, StreamEvent, ToolCallEnd, ToolCallStart
from agent_worker.providers.echo import ScriptedProvider
from agent_worker.tools.base import Tool
from agent_worker.tools.registry import ToolRegistry
from tests.runtime.runtime_support import ChatClient, Harness
from tests.runtime.test_run_tools import get_weather, weather_script


async def hello(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
    yield "Hello "
    yield "there."


async def ask(harness: Harness, client: ChatClient, text: str, session: str) -> tuple[str, str]:
    sent = await client.send_text(text)
    status, body = await harness.invoke(session, sent.event_id)
    assert status == 200, body
    end = await client.run_end_for(sent.codec_message_id)
    return str(body["runId"]), end.transport_headers["run-reason"]


async def test_plain_reply_is_responses_events(make_worker: Any, make_client: Any, session_name: str) -> None:
    provider = ScriptedProvider(hello)
    harness = await make_worker(provider)
    client = await make_client(codec=OPENAI_RESPONSES)
    run_id, reason = await ask(harness, client, "Hi", session_name)
    assert reason == "complete"
    kinds = [m.codec_headers.get("kind") for m in client.run_wires(run_id) if m.name == AI_OUTPUT]
    assert "response.output_item.added" in kinds and "output_text" in kinds
    assert not {"start", "text", "finish"} & set(kinds)
    assert client.run_text(run_id) == "Hello there."
    (message,) = client.run_items(run_id)
    assert message["type"] == "message" and message["status"] == "completed"
    # the model saw the prompt both as neutral messages and as Responses input items
    assert provider.requests[0].responses_input == [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]}
    ]
    session = harness.worker.sessions[session_name]
    assert session.tree.codecs.adapter_tag == OPENAI_RESPONSES


async def test_function_call_then_text_round_trips_items(
    make_worker: Any, make_client: Any, session_name: str
) -> None:
    provider = ScriptedProvider(weather_script)
    harness = await make_worker(provider, tools=ToolRegistry([Tool.from_function(get_weather)]))
    client = await make_client(codec=OPENAI_RESPONSES)
    run_id, reason = await ask(harness, client, "Weather in Paris?", session_name)
    assert reason == "complete"
    items = client.run_items(run_id)
    assert [i["type"] for i in items] == ["function_call", "function_call_output", "message"]
    assert items[0]["arguments"] == '{"city":"Paris"}' and items[0]["call_id"] == "call_1"
    assert items[1] == {
        "type": "function_call_output",
        "call_id": "call_1",
        "output": '{"city":"Paris","tempC":21}',
    }
    assert client.run_text(run_id) == "It is 21°C in Paris."
    # the second model call got the first step's items back verbatim, as the client folded them
    second = provider.requests[1].responses_input
    assert second is not None and second[1:] == items[:2]
    # a follow-up turn resends the whole branch as items
    run2, _ = await ask(harness, client, "Thanks", session_name)
    third = provider.requests[2].responses_input
    assert third is not None and third[1:4] == items and third[-1]["content"][0]["text"] == "Thanks"
    assert run2 != run_id


async def test_one_worker_serves_both_codecs(make_worker: Any, make_client: Any, session_name: str) -> None:
    harness = await make_worker(ScriptedProvider(hello))
    openai_client = await make_client(codec=OPENAI_RESPONSES)
    vercel_session = f"{session_name}-v"
    vercel_client = await make_client(session=vercel_session)
    run_o, reason_o = await ask(harness, openai_client, "Hi", session_name)
    run_v, reason_v = await ask(harness, vercel_client, "Hi", vercel_session)
    assert reason_o == reason_v == "complete"
    assert openai_client.run_text(run_o) == vercel_client.run_text(run_v) == "Hello there."
    assert [p["type"] for p in vercel_client.run_parts(run_v)] == ["step-start", "text"]
    sessions = harness.worker.sessions
    assert sessions[session_name].tree.codecs.adapter_tag == OPENAI_RESPONSES
    assert sessions[vercel_session].tree.codecs.adapter_tag == VERCEL


async def test_mixed_codec_session_is_a_clear_run_error(
    make_worker: Any, make_client: Any, session_name: str
) -> None:
    harness = await make_worker(ScriptedProvider(hello))
    vercel_client = await make_client()
    openai_client = await make_client(client_id="user-xyz", codec=OPENAI_RESPONSES)
    _, reason = await ask(harness, vercel_client, "Hi", session_name)
    assert reason == "complete"
    sent = await openai_client.send_text("Hi from another codec", parent=None)
    status, body = await harness.invoke(session_name, sent.event_id)
    assert status == 200, body
    end = await openai_client.run_end_for(sent.codec_message_id)
    assert end.transport_headers["run-reason"] == "error"
    assert end.transport_headers["error-code"] == "40003"
    assert "must not mix codecs" in end.transport_headers["error-message"]
    # the worker keeps serving the session's own codec
    _, reason = await ask(harness, vercel_client, "Still there?", session_name)
    assert reason == "complete"


async def test_pinned_codec_refuses_the_other_codec(
    make_worker: Any, make_client: Any, session_name: str
) -> None:
    harness = await make_worker(ScriptedProvider(hello), codec=OPENAI_RESPONSES)
    vercel_client = await make_client()
    sent = await vercel_client.send_text("Hi")
    status, _ = await harness.invoke(session_name, sent.event_id)
    assert status == 200
    end = await vercel_client.run_end_for(sent.codec_message_id)
    assert end.transport_headers["run-reason"] == "error"
    assert VERCEL in end.transport_headers["error-message"]


async def test_approval_suspend_then_resume(make_worker: Any, make_client: Any, session_name: str) -> None:
    async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
        if request.responses_input and request.responses_input[-1].get("type") == "function_call_output":
            yield f"Done: {request.responses_input[-1]['output']}"
            return
        yield ToolCallStart("call_n", "notify")
        yield ToolCallEnd("call_n", "notify", '{"message":"hi"}')

    def notify(message: str) -> str:
        """Notify the user.

        Args:
            message: What to say.
        """
        return f"sent {message}"

    tools = ToolRegistry([Tool.from_function(notify, requires_approval=True)])
    harness = await make_worker(ScriptedProvider(script), tools=tools)
    client = await make_client(codec=OPENAI_RESPONSES)
    sent = await client.send_text("Notify me")
    status, body = await harness.invoke(session_name, sent.event_id)
    assert status == 200, body
    run_id = body["runId"]
    await client.wait_for(lambda: client.named("ai-run-suspend"))
    node = client.run_node(run_id)
    assert node is not None
    (holder,) = [cm for cm in node.messages if "toolCallStates" in cm.message]
    assert holder.message["toolCallStates"]["call_n"] == {
        "approval": "pending",
        "name": "notify",
        "arguments": '{"message":"hi"}',
    }
    approval = await client.approve(run_id, holder.codec_message_id, "call_n", True)
    status, _ = await harness.invoke(session_name, approval.event_id)
    assert status == 200
    await client.wait_for(lambda: "Done: sent hi" in client.run_text(run_id))
    items = client.run_items(run_id)
    assert {"type": "function_call_output", "call_id": "call_n", "output": "sent hi"} in items


def test_codec_pin_is_validated() -> None:
    assert set(CODECS) == {VERCEL, OPENAI_RESPONSES}  # the config's Literal lists every codec
    assert config_from_mapping({"worker": {"codec": OPENAI_RESPONSES}}).worker.codec == OPENAI_RESPONSES
    with pytest.raises(ConfigError, match="codec"):
        config_from_mapping({"worker": {"codec": "bogus"}})
