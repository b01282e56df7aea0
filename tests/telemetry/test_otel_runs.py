"""Spans and metrics of real runs (worker + embedded server + ably-python client), recorded by the
SDK's in-memory exporters: a plain reply, a tool call, a cancelled run, a provider error, a
suspended approval, and a caller's traceparent continued."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import structlog
from opentelemetry.trace import SpanKind, StatusCode

from agent_worker import telemetry
from agent_worker.errors import ProviderConnectionError
from agent_worker.logs import configure_logging, get_logger
from agent_worker.protocol.headers import AI_RUN_START, AI_RUN_SUSPEND
from agent_worker.protocol.model import ToolMessage
from agent_worker.providers.base import ModelRequest, StreamEvent, ToolCallEnd, UsageUpdate
from agent_worker.providers.echo import ScriptedProvider
from agent_worker.tools.base import Tool
from agent_worker.tools.registry import ToolRegistry
from tests.runtime.runtime_support import ChatClient, Harness
from tests.telemetry.telemetry_support import Otel, attrs, events


async def reply_script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
    yield "Hello "
    yield "there."
    yield UsageUpdate(input_tokens=12, output_tokens=2)


def tool_results(request: ModelRequest) -> list[Any]:
    return [p for m in request.messages if isinstance(m, ToolMessage) for p in m.parts]


async def weather_script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
    results = tool_results(request)
    if not results:
        yield ToolCallEnd("call_1", "get_weather", '{"city":"Paris"}')
        yield UsageUpdate(input_tokens=20, output_tokens=7)
        return
    yield f"It is {results[-1].output['tempC']}°C."
    yield UsageUpdate(input_tokens=30, output_tokens=5)


def get_weather(city: str) -> dict[str, Any]:
    """Current weather for a city.

    Args:
        city: The city name.
    """
    return {"city": city, "tempC": 21}


async def ask(harness: Harness, client: ChatClient, session: str, text: str, **post: Any) -> dict[str, Any]:
    sent = await client.send_text(text)
    status, body = await harness.invoke(session, sent.event_id, **post)
    assert status == 200, body
    await client.run_end_for(sent.codec_message_id)
    await harness.worker.run_until_idle()
    return dict(body)


async def test_plain_reply_span_tree_and_metrics(
    otel: Otel, make_worker: Any, make_client: Any, session_name: str
) -> None:
    """One invoke_agent span (session = gen_ai.conversation.id, run/invocation ids, the verified
    clientId, outcome) with one chat span under it (provider, model, tokens, finish reason, first
    chunk event); the GenAI metrics record the same call; no message content by default."""
    harness: Harness = await make_worker(ScriptedProvider(reply_script))
    client: ChatClient = await make_client("user-abc")
    body = await ask(harness, client, session_name, "Hi")

    run = otel.one("invoke_agent")
    assert run.parent is None and run.kind is SpanKind.INTERNAL
    a = attrs(run)
    assert a["gen_ai.operation.name"] == "invoke_agent"
    assert a["gen_ai.conversation.id"] == session_name
    assert a["agent_worker.run.id"] == body["runId"]
    assert a["agent_worker.invocation.id"] == body["invocationId"]
    assert a["agent_worker.client_id"] == "user-abc"
    assert a["agent_worker.run.outcome"] == "complete"
    assert a["gen_ai.provider.name"] == "scripted"
    assert run.status.status_code is StatusCode.UNSET

    (chat,) = otel.children(run)
    assert chat.name.startswith("chat") and chat.kind is SpanKind.CLIENT
    c = attrs(chat)
    assert c["gen_ai.operation.name"] == "chat"
    assert c["gen_ai.provider.name"] == "scripted"
    assert c["gen_ai.usage.input_tokens"] == 12 and c["gen_ai.usage.output_tokens"] == 2
    assert c["gen_ai.response.finish_reasons"] == ("stop",)
    (first,) = events(chat, "agent_worker.first_chunk")
    assert 0 <= first["gen_ai.response.time_to_first_chunk"] <= (chat.end_time - chat.start_time) / 1e9  # type: ignore[operator]
    assert not any(k.startswith(("gen_ai.input", "gen_ai.output", "gen_ai.system")) for k in c)

    usage = {p.attributes["gen_ai.token.type"]: p for p in otel.points("gen_ai.client.token.usage")}
    assert usage["input"].sum == 12 and usage["output"].sum == 2
    assert usage["input"].attributes["gen_ai.operation.name"] == "chat"
    durations = {
        p.attributes["gen_ai.operation.name"]: p for p in otel.points("gen_ai.client.operation.duration")
    }
    assert durations["chat"].count == 1 and durations["invoke_agent"].count == 1
    assert "error.type" not in durations["chat"].attributes
    (ttfc,) = otel.points("gen_ai.client.operation.time_to_first_chunk")
    assert ttfc.count == 1
    (active,) = otel.points("agent_worker.runs.active")
    assert active.value == 0  # up at the start, down at the end


async def test_tool_call_spans_and_opt_in_content(
    otel: Otel, make_worker: Any, make_client: Any, session_name: str
) -> None:
    """chat (tool-calls) → execute_tool → chat under one invoke_agent; with content capture on, the
    prompt, completion, tool arguments and result are on the spans."""
    telemetry.set_capture_content(True)
    tools = ToolRegistry([Tool.from_function(get_weather)])
    harness: Harness = await make_worker(
        ScriptedProvider(weather_script), tools=tools, system_prompt="Be brief."
    )
    client: ChatClient = await make_client()
    await ask(harness, client, session_name, "Weather in Paris?")

    run = otel.one("invoke_agent")
    children = otel.children(run)
    assert [s.name.split(" ")[0] for s in children] == ["chat", "execute_tool", "chat"]
    first_chat, tool, second_chat = children
    assert attrs(first_chat)["gen_ai.response.finish_reasons"] == ("tool-calls",)
    t = attrs(tool)
    assert tool.name == "execute_tool get_weather"
    assert t["gen_ai.tool.name"] == "get_weather" and t["gen_ai.tool.call.id"] == "call_1"
    assert t["gen_ai.tool.type"] == "function" and t["agent_worker.tool.execution"] == "server"
    assert t["gen_ai.tool.description"].startswith("Current weather")
    assert json.loads(t["gen_ai.tool.call.arguments"]) == {"city": "Paris"}
    assert json.loads(t["gen_ai.tool.call.result"]) == {"city": "Paris", "tempC": 21}
    assert tool.status.status_code is StatusCode.UNSET

    c2 = attrs(second_chat)
    inputs = json.loads(c2["gen_ai.input.messages"])
    assert inputs[0] == {"role": "user", "parts": [{"type": "text", "content": "Weather in Paris?"}]}
    assert inputs[-1]["role"] == "tool"
    assert inputs[-1]["parts"][0]["type"] == "tool_call_response"
    assert json.loads(c2["gen_ai.system_instructions"]) == [{"type": "text", "content": "Be brief."}]
    (out,) = json.loads(c2["gen_ai.output.messages"])
    assert out["parts"] == [{"type": "text", "content": "It is 21°C."}]
    usage = {p.attributes["gen_ai.token.type"]: p for p in otel.points("gen_ai.client.token.usage")}
    assert usage["input"].sum == 50 and usage["input"].count == 2


class SlowScript:
    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def __call__(self, request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
        for i in range(400):
            self.started.set()
            yield f"w{i} "
            await asyncio.sleep(0.01)


async def test_cancelled_run_records_who_asked_and_the_decision(
    otel: Otel, make_worker: Any, make_client: Any, session_name: str
) -> None:
    """A stranger's refused cancel and the owner's honoured cancel are both events on the run span
    (who asked, allowed or not); the run ends ``cancelled`` without an error status and the open
    chat span is marked cancelled."""
    script = SlowScript()
    harness: Harness = await make_worker(ScriptedProvider(script))
    owner: ChatClient = await make_client("user-abc")
    stranger: ChatClient = await make_client("mallory")
    sent = await owner.send_text("A long story please")
    await harness.invoke(session_name, sent.event_id)
    starts = await owner.wait_for(lambda: owner.for_input(AI_RUN_START, sent.codec_message_id))
    run_id = starts[0].transport_headers["run-id"]
    await owner.wait_for(lambda: "w3" in owner.run_text(run_id))
    await stranger.cancel(run_id=run_id)
    await owner.cancel(run_id=run_id)
    end = await owner.run_end_for(sent.codec_message_id)
    assert end.transport_headers["run-reason"] == "cancelled"
    await harness.worker.run_until_idle()

    run = otel.one("invoke_agent")
    assert attrs(run)["agent_worker.run.outcome"] == "cancelled"
    assert run.status.status_code is StatusCode.UNSET
    cancels = sorted(events(run, "agent_worker.cancel"), key=lambda e: e["agent_worker.cancel.allowed"])
    assert cancels == [
        {
            "agent_worker.cancel.source": "client",
            "agent_worker.cancel.requested_by": "mallory",
            "agent_worker.cancel.allowed": False,
        },
        {
            "agent_worker.cancel.source": "client",
            "agent_worker.cancel.requested_by": "user-abc",
            "agent_worker.cancel.allowed": True,
        },
    ]
    (chat,) = otel.children(run)
    assert attrs(chat)["agent_worker.cancelled"] is True
    assert chat.status.status_code is StatusCode.UNSET


async def test_provider_error_marks_chat_and_run(
    otel: Otel, make_worker: Any, make_client: Any, session_name: str
) -> None:
    """A provider failure: the chat span has ERROR status, error.type and the exception; the run span
    carries the same Ably/AIT code as ai-run-end; the duration metric is tagged with error.type."""

    async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
        yield "Once "
        msg = "the vendor stream broke"
        raise ProviderConnectionError(msg)

    harness: Harness = await make_worker(ScriptedProvider(script))
    client: ChatClient = await make_client()
    sent = await client.send_text("story")
    await harness.invoke(session_name, sent.event_id)
    end = await client.run_end_for(sent.codec_message_id)
    await harness.worker.run_until_idle()
    code = int(end.transport_headers["error-code"])

    run = otel.one("invoke_agent")
    a = attrs(run)
    assert a["agent_worker.run.outcome"] == "error"
    assert a["agent_worker.error.code"] == code and a["error.type"] == str(code)
    assert run.status.status_code is StatusCode.ERROR
    assert "the vendor stream broke" in (run.status.description or "")
    (chat,) = otel.children(run)
    c = attrs(chat)
    assert chat.status.status_code is StatusCode.ERROR
    assert c["error.type"] == "ProviderConnectionError" and c["agent_worker.error.code"] == code
    (exc,) = events(chat, "exception")
    assert "the vendor stream broke" in exc["exception.message"]
    durations = {
        p.attributes["gen_ai.operation.name"]: p for p in otel.points("gen_ai.client.operation.duration")
    }
    assert durations["chat"].attributes["error.type"] == "ProviderConnectionError"
    assert durations["invoke_agent"].attributes["error.type"] == str(code)


async def approval_script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
    results = tool_results(request)
    if not results:
        yield ToolCallEnd("call_n", "send_notification", '{"message":"hi"}')
        return
    yield f"Result: {results[-1].output}"


def send_notification(message: str) -> str:
    """Send a notification to the user's phone.

    Args:
        message: What to send.
    """
    return f"sent {message!r}"


async def test_suspended_approval_then_resumed_run(
    otel: Otel, make_worker: Any, make_client: Any, session_name: str
) -> None:
    """The approval-gated call is an execute_tool span marked suspended (with a suspend event), the
    run span ends ``suspended``; the approval's continuation is a second invoke_agent span (resumed,
    same conversation and run id) whose execute_tool runs the approved call."""
    tools = ToolRegistry([Tool.from_function(send_notification, requires_approval=True)])
    harness: Harness = await make_worker(ScriptedProvider(approval_script), tools=tools)
    client: ChatClient = await make_client()
    sent = await client.send_text("Please notify me")
    _, body = await harness.invoke(session_name, sent.event_id)
    run_id = body["runId"]
    await client.wait_for(lambda: client.for_input(AI_RUN_SUSPEND, sent.codec_message_id))
    await harness.worker.run_until_idle()

    suspended = otel.one("invoke_agent")
    assert attrs(suspended)["agent_worker.run.outcome"] == "suspended"
    assert events(suspended, "agent_worker.suspend") == [{"agent_worker.run.id": run_id}]
    chat, gated = otel.children(suspended)
    assert chat.name.startswith("chat") and gated.name == "execute_tool send_notification"
    g = attrs(gated)
    assert g["agent_worker.tool.execution"] == "approval" and g["agent_worker.tool.suspended"] is True
    assert events(gated, "agent_worker.suspend") == [{"agent_worker.suspend.reason": "approval"}]

    holder = next(
        cm.codec_message_id
        for cm in client.run_node(run_id).messages  # type: ignore[union-attr]
        if any(p.get("toolCallId") == "call_n" for p in cm.message.get("parts", []))
    )
    approval = await client.approve(run_id, holder, "call_n", approved=True)
    status, _ = await harness.invoke(session_name, approval.event_id)
    assert status == 200
    await client.wait_for(
        lambda: [m for m in client.named("ai-run-end") if m.transport_headers.get("run-id") == run_id]
    )
    await harness.worker.run_until_idle()

    resumed = [s for s in otel.named("invoke_agent") if s is not suspended and s.name == suspended.name]
    assert len(resumed) == 1
    r = attrs(resumed[0])
    assert r["agent_worker.run.resumed"] is True and r["agent_worker.run.id"] == run_id
    assert r["gen_ai.conversation.id"] == session_name and r["agent_worker.run.outcome"] == "complete"
    executed, chat2 = otel.children(resumed[0])
    e = attrs(executed)
    assert executed.name == "execute_tool send_notification" and chat2.name.startswith("chat")
    assert e["gen_ai.tool.call.id"] == "call_n" and e["agent_worker.tool.execution"] == "approval"
    assert "agent_worker.tool.suspended" not in e


async def test_traceparent_on_the_post_continues_the_callers_trace(
    otel: Otel, make_worker: Any, make_client: Any, session_name: str
) -> None:
    """A W3C traceparent on POST /api/chat makes invoke_agent a child of the caller's span."""
    harness: Harness = await make_worker(ScriptedProvider(reply_script))
    client: ChatClient = await make_client()
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    await ask(harness, client, session_name, "Hi", headers={"traceparent": f"00-{trace_id}-{parent_id}-01"})
    run = otel.one("invoke_agent")
    assert run.parent is not None and run.parent.is_remote
    assert format(run.parent.span_id, "016x") == parent_id
    assert format(run.context.trace_id, "032x") == trace_id  # type: ignore[union-attr]
    assert all(format(s.context.trace_id, "032x") == trace_id for s in otel.spans())  # type: ignore[union-attr]


async def test_log_lines_carry_trace_and_span_ids(otel: Otel) -> None:
    """The structlog processor adds the current span's ids (and nothing outside a span)."""
    out = io.StringIO()
    try:
        configure_logging("json", "info", stream=out)
        log = get_logger("test.otel")
        tracer = otel.tracer_provider.get_tracer("test")
        with tracer.start_as_current_span("outer") as span:
            log.info("inside")
        log.info("outside")
    finally:
        structlog.reset_defaults()
    inside, outside = (json.loads(line) for line in out.getvalue().splitlines())
    ctx = span.get_span_context()
    assert inside["trace_id"] == format(ctx.trace_id, "032x")
    assert inside["span_id"] == format(ctx.span_id, "016x")
    assert "trace_id" not in outside


async def test_client_side_tool_suspends_visibly(
    otel: Otel, make_worker: Any, make_client: Any, session_name: str
) -> None:
    """A client-side tool call is an execute_tool span with execution ``client``, marked suspended."""

    async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
        yield ToolCallEnd("call_loc", "get_client_location", "{}")

    def get_client_location() -> dict[str, str]:
        """Where the user is (runs on the client)."""
        return {}

    tools = ToolRegistry([Tool.from_function(get_client_location, client_side=True)])
    harness: Harness = await make_worker(ScriptedProvider(script), tools=tools)
    client: ChatClient = await make_client()
    sent = await client.send_text("Where am I?")
    await harness.invoke(session_name, sent.event_id)
    await client.wait_for(lambda: client.for_input(AI_RUN_SUSPEND, sent.codec_message_id))
    await harness.worker.run_until_idle()
    run = otel.one("invoke_agent")
    assert attrs(run)["agent_worker.run.outcome"] == "suspended"
    (tool,) = otel.named("execute_tool")
    assert tool.parent is not None and tool.parent.span_id == run.context.span_id  # type: ignore[union-attr]
    t = attrs(tool)
    assert t["agent_worker.tool.execution"] == "client" and t["agent_worker.tool.suspended"] is True
    assert t["gen_ai.tool.call.id"] == "call_loc"
    assert events(tool, "agent_worker.suspend") == [{"agent_worker.suspend.reason": "client"}]


async def test_shutdown_cancel_is_an_event_too(
    otel: Otel, make_worker: Any, make_client: Any, session_name: str
) -> None:
    """A run the worker cancels on shutdown (drain timeout over) records a ``shutdown`` cancel."""
    script = SlowScript()
    harness: Harness = await make_worker(ScriptedProvider(script))
    client: ChatClient = await make_client()
    sent = await client.send_text("A long story please")
    await harness.invoke(session_name, sent.event_id)
    await asyncio.wait_for(script.started.wait(), 30)
    await harness.worker.close(drain_timeout_s=0)
    run = otel.one("invoke_agent")
    assert attrs(run)["agent_worker.run.outcome"] == "cancelled"
    (cancel,) = events(run, "agent_worker.cancel")
    assert cancel["agent_worker.cancel.source"] == "shutdown"
    assert cancel["agent_worker.cancel.allowed"] is True
    (active,) = otel.points("agent_worker.runs.active")
    assert active.value == 0
