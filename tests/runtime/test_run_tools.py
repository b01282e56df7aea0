"""Tool calls through the agent loop: server-side execution, approvals (suspend → resume) and
client-side tools (suspend → fork)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from agent_worker.protocol.headers import AI_OUTPUT, AI_RUN_RESUME, AI_RUN_START, AI_RUN_SUSPEND
from agent_worker.protocol.model import ToolMessage, UserMessage
from agent_worker.providers.base import ModelRequest, StreamEvent, ToolCallDelta, ToolCallEnd, ToolCallStart
from agent_worker.providers.echo import ScriptedProvider
from agent_worker.tools.base import Tool
from agent_worker.tools.registry import ToolRegistry
from tests.runtime.runtime_support import ChatClient, Harness


def get_weather(city: str) -> dict[str, Any]:
    """Current weather for a city.

    Args:
        city: The city name.
    """
    return {"city": city, "tempC": 21}


def tool_results(request: ModelRequest) -> list[Any]:
    return [p for m in request.messages if isinstance(m, ToolMessage) for p in m.parts]


async def weather_script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
    results = tool_results(request)
    if not results:
        yield ToolCallStart("call_1", "get_weather")
        yield ToolCallDelta("call_1", '{"city":')
        yield ToolCallDelta("call_1", '"Paris"}')
        yield ToolCallEnd("call_1", "get_weather", '{"city":"Paris"}')
        return
    out = results[-1].output
    if isinstance(out, dict):
        yield f"It is {out['tempC']}°C in {out['city']}."
    else:
        yield f"No weather: {out}"


def find_tool_part(client: ChatClient, run_id: str, call_id: str) -> dict[str, Any] | None:
    for part in client.run_parts(run_id):
        if part.get("toolCallId") == call_id:
            return part
    return None


def message_holding(client: ChatClient, run_id: str, call_id: str) -> str:
    node = client.run_node(run_id)
    assert node is not None
    for cm in node.messages:
        if any(p.get("toolCallId") == call_id for p in cm.message.get("parts", [])):
            return cm.codec_message_id
    msg = "no message holds the tool call"
    raise AssertionError(msg)


async def test_server_tool_then_text(make_worker: Any, make_client: Any, session_name: str) -> None:
    """A server-side tool runs between two model calls of one assistant message; its output is on
    the wire and in the second request, and the final text follows."""
    provider = ScriptedProvider(weather_script)
    harness: Harness = await make_worker(provider, tools=ToolRegistry([Tool.from_function(get_weather)]))
    client: ChatClient = await make_client()
    sent = await client.send_text("Weather in Paris?")
    status, body = await harness.invoke(session_name, sent.event_id)
    assert status == 200
    end = await client.run_end_for(sent.codec_message_id)
    assert end.transport_headers["run-reason"] == "complete"
    run_id = body["runId"]
    part = find_tool_part(client, run_id, "call_1")
    assert part is not None
    assert part["type"] == "tool-get_weather"
    assert part["state"] == "output-available"
    assert part["input"] == {"city": "Paris"}
    assert part["output"] == {"city": "Paris", "tempC": 21}
    assert client.run_text(run_id) == "It is 21°C in Paris."
    assert len(provider.requests) == 2
    assert [p.output for p in tool_results(provider.requests[1])] == [{"city": "Paris", "tempC": 21}]
    # The tool-input stream id is the tool call id, as the Vercel decoder requires.
    tool_streams = [m for m in client.run_wires(run_id) if m.codec_headers.get("kind") == "tool-input"]
    assert tool_streams and all(m.transport_headers.get("stream-id") == "call_1" for m in tool_streams)
    # One assistant message: every output wire of the run shares one codec-message-id.
    cmids = {m.transport_headers["codec-message-id"] for m in client.run_wires(run_id) if m.name == AI_OUTPUT}
    assert len(cmids) == 1


async def test_unknown_tool_becomes_error_result(
    make_worker: Any, make_client: Any, session_name: str
) -> None:
    """A call to a tool the agent does not have is answered with an error result, not a crash."""
    provider = ScriptedProvider(weather_script)
    harness: Harness = await make_worker(provider)
    client: ChatClient = await make_client()
    sent = await client.send_text("Weather?")
    _, body = await harness.invoke(session_name, sent.event_id)
    end = await client.run_end_for(sent.codec_message_id)
    assert end.transport_headers["run-reason"] == "complete"
    part = find_tool_part(client, body["runId"], "call_1")
    assert part is not None and part["state"] == "output-error"
    assert "unknown tool" in part["errorText"]
    assert client.run_text(body["runId"]).startswith("No weather: unknown tool")


async def approval_script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
    results = tool_results(request)
    if not results:
        yield "Let me notify them."
        yield ToolCallEnd("call_n", "send_notification", '{"message":"hi"}')
        return
    yield f"Result: {results[-1].output}"


def send_notification(message: str) -> str:
    """Send a notification to the user's phone.

    Args:
        message: What to send.
    """
    return f"sent {message!r}"


async def test_approval_suspends_then_resumes(make_worker: Any, make_client: Any, session_name: str) -> None:
    """An approval-required tool suspends the run; the approval (a continuation carrying the run-id)
    resumes the same run with ai-run-resume, the tool runs, and the model continues."""
    provider = ScriptedProvider(approval_script)
    tools = ToolRegistry([Tool.from_function(send_notification, requires_approval=True)])
    harness: Harness = await make_worker(provider, tools=tools)
    client: ChatClient = await make_client()
    sent = await client.send_text("Please notify me")
    _, body = await harness.invoke(session_name, sent.event_id)
    run_id = body["runId"]
    suspends = await client.wait_for(lambda: client.for_input(AI_RUN_SUSPEND, sent.codec_message_id))
    assert suspends[0].transport_headers["run-id"] == run_id
    part = await client.wait_for(lambda: find_tool_part(client, run_id, "call_n"))
    assert part["state"] == "approval-requested"
    finish = [m for m in client.run_wires(run_id) if m.codec_headers.get("kind") == "finish"]
    assert finish[-1].codec_headers["finishReason"] == "tool-calls"
    assert client.run_node(run_id).status == "suspended"  # type: ignore[union-attr]

    holder = message_holding(client, run_id, "call_n")
    approval = await client.approve(run_id, holder, "call_n", approved=True)
    status, _ = await harness.invoke(session_name, approval.event_id)
    assert status == 200
    resumes = await client.wait_for(lambda: client.named(AI_RUN_RESUME))
    assert resumes[0].transport_headers["run-id"] == run_id
    assert "parent" not in resumes[0].transport_headers
    assert len(client.named(AI_RUN_START)) == 1
    end = await client.wait_for(
        lambda: [m for m in client.named("ai-run-end") if m.transport_headers.get("run-id") == run_id]
    )
    assert end[0].transport_headers["run-reason"] == "complete"
    await client.wait_for(lambda: find_tool_part(client, run_id, "call_n")["state"] == "output-available")  # type: ignore[index]
    assert find_tool_part(client, run_id, "call_n")["output"] == "sent 'hi'"  # type: ignore[index]
    assert client.run_text(run_id).endswith("Result: sent 'hi'")
    assert len(provider.requests) == 2
    assert [p.output for p in tool_results(provider.requests[1])] == ["sent 'hi'"]


async def test_denied_approval_tells_the_model(make_worker: Any, make_client: Any, session_name: str) -> None:
    """A denied approval does not run the tool; the model sees a denial result."""
    provider = ScriptedProvider(approval_script)
    ran: list[str] = []

    def notify(message: str) -> str:
        """Notify.

        Args:
            message: text.
        """
        ran.append(message)
        return "sent"

    tools = ToolRegistry([Tool.from_function(notify, name="send_notification", requires_approval=True)])
    harness: Harness = await make_worker(provider, tools=tools)
    client: ChatClient = await make_client()
    sent = await client.send_text("Please notify me")
    _, body = await harness.invoke(session_name, sent.event_id)
    run_id = body["runId"]
    await client.wait_for(lambda: client.for_input(AI_RUN_SUSPEND, sent.codec_message_id))
    await client.wait_for(lambda: find_tool_part(client, run_id, "call_n"))
    holder = message_holding(client, run_id, "call_n")
    denial = await client.approve(run_id, holder, "call_n", approved=False)
    await harness.invoke(session_name, denial.event_id)
    end = await client.wait_for(
        lambda: [m for m in client.named("ai-run-end") if m.transport_headers.get("run-id") == run_id]
    )
    assert end[0].transport_headers["run-reason"] == "complete"
    assert ran == []
    results = tool_results(provider.requests[-1])
    assert len(results) == 1 and results[0].is_error


async def location_script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
    results = tool_results(request)
    if not results:
        yield ToolCallEnd("call_loc", "get_client_location", "{}")
        return
    yield f"You are in {results[-1].output['city']}."


async def test_client_tool_suspends_then_fork_starts_new_run(
    make_worker: Any, make_client: Any, session_name: str
) -> None:
    """A client-side tool suspends the run; the client's tool result is a fork (run-less, role
    assistant, supersedes) that gets a fresh ai-run-start parented at the original input."""
    provider = ScriptedProvider(location_script)

    def get_client_location() -> dict[str, str]:
        """Where the user is (runs in the browser)."""
        msg = "client-side tools never run on the server"
        raise AssertionError(msg)

    tools = ToolRegistry([Tool.from_function(get_client_location, client_side=True)])
    harness: Harness = await make_worker(provider, tools=tools)
    client: ChatClient = await make_client()
    sent = await client.send_text("Where am I?")
    _, body = await harness.invoke(session_name, sent.event_id)
    first_run = body["runId"]
    await client.wait_for(lambda: client.for_input(AI_RUN_SUSPEND, sent.codec_message_id))
    part = await client.wait_for(lambda: find_tool_part(client, first_run, "call_loc"))
    assert part["state"] == "input-available"

    node = client.run_node(first_run)
    assert node is not None
    seed = [cm.message for cm in node.messages]
    fork = await client.tool_result_fork(
        suspended_run=first_run,
        parent=sent.codec_message_id,
        tool_call_id="call_loc",
        output={"city": "Lisbon"},
        seed=seed,
    )
    status, _ = await harness.invoke(session_name, fork.event_id)
    assert status == 200
    starts = await client.wait_for(lambda: client.for_input(AI_RUN_START, fork.codec_message_id))
    fork_run = starts[0].transport_headers["run-id"]
    assert fork_run != first_run
    assert starts[0].transport_headers["parent"] == sent.codec_message_id
    end = await client.run_end_for(fork.codec_message_id)
    assert end.transport_headers["run-reason"] == "complete"
    assert "You are in Lisbon." in client.run_text(fork_run)
    request = provider.requests[-1]
    assert isinstance(request.messages[0], UserMessage) and request.messages[0].text == "Where am I?"
    assert [p.output for p in tool_results(request)] == [{"city": "Lisbon"}]
    assert client.tree.is_superseded(first_run)
