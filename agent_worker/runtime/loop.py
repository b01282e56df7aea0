"""The agent loop: prompt → provider → UIMessageChunks → wire, server-side tools, suspend, end.

One *pass* is one assistant message (a JS ``pipe``). Within a pass the loop may call the model
several times: each call is a ``start-step``/``finish-step`` pair; server-side tool calls are executed
and their results fed back until the model stops calling tools (or :attr:`AgentSpec.max_model_calls`
is reached). Client-side tools and tools that need approval end the pass with ``finish{tool-calls}``
and the run is *suspended*; the client answers with a continuation (approval → ``ai-run-resume``)
or a fork (client tool result → a fresh run). After a pass, steering that arrived meanwhile
(:meth:`Run.has_input`) starts another pass whose messages are stamped with the steers' ids.

Provider events map to chunks as the AI SDK's ``toUIMessageStream`` does: text and reasoning become
``*-start``/``*-delta``/``*-end`` streams, a tool call a ``tool-input-*`` stream whose stream id is
the tool call id.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from agent_worker.errors import RunError
from agent_worker.logs import get_logger
from agent_worker.protocol.branch import approved_pending_tool_calls
from agent_worker.protocol.convert import to_model_messages
from agent_worker.protocol.model import (
    AssistantMessage,
    AssistantPart,
    ModelMessage,
    ReasoningPart,
    TextPart,
    ToolCallPart,
    ToolMessage,
    ToolResultPart,
)
from agent_worker.providers.base import (
    Finished,
    FinishReason,
    ModelProvider,
    ModelRequest,
    ModelResponse,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    UsageUpdate,
)
from agent_worker.runtime.run import OutputMessage, Run
from agent_worker.tools.base import RunContext, Tool, ToolResult
from agent_worker.tools.registry import ToolRegistry

__all__ = ["AgentSpec", "LoopOutcome", "LoopStats", "run_agent"]

log = get_logger("agent_worker.runtime.loop")

LoopOutcome = Literal["complete", "suspended"]
UNKNOWN_TOOL = "unknown tool {name!r}; it is not available to this agent"


@dataclass(slots=True)
class AgentSpec:
    """What a run needs to think: the provider, the tools, the system prompt and limits."""

    provider: ModelProvider
    tools: ToolRegistry = field(default_factory=ToolRegistry)
    system_prompt: str | Callable[[Run], str | None] | None = None
    """A fixed prompt, or a function of the run (placeholders such as the client id or date)."""
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    max_model_calls: int = 8
    deps: Any = None


@dataclass(slots=True)
class LoopStats:
    model_calls: int = 0
    passes: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    tool_calls: int = 0
    on_usage: Callable[[int, int], None] | None = None
    on_status: Callable[[str], None] | None = None
    """Called with ``thinking``/``streaming``/``tool`` as the run moves between them (presence)."""

    def status(self, value: str) -> None:
        if self.on_status is not None and value != self._last_status:
            self._last_status = value
            self.on_status(value)

    _last_status: str = ""


class _ChunkMapper:
    """Provider stream events → UIMessageChunks for one model call (one step)."""

    def __init__(self, message: OutputMessage, counter: list[int]) -> None:
        self.message = message
        self._counter = counter
        self._open: tuple[str, str] | None = None  # (kind, id) of an open text/reasoning stream
        self._tool_streams: dict[str, str] = {}  # call id → tool name
        self.finish_reason: FinishReason | None = None

    def _next_id(self, prefix: str) -> str:
        self._counter[0] += 1
        return f"{prefix}-{self._counter[0]}"

    async def close_open(self) -> None:
        if self._open is not None:
            kind, sid = self._open
            self._open = None
            await self.message.send({"type": f"{kind}-end", "id": sid})

    async def _ensure(self, kind: str) -> str:
        if self._open is not None and self._open[0] == kind:
            return self._open[1]
        await self.close_open()
        sid = self._next_id("txt" if kind == "text" else "rsn")
        self._open = (kind, sid)
        await self.message.send({"type": f"{kind}-start", "id": sid})
        return sid

    async def feed(self, event: object, stats: LoopStats) -> None:
        match event:
            case TextDelta(text=text):
                if text:
                    stats.status("streaming")
                    sid = await self._ensure("text")
                    await self.message.send({"type": "text-delta", "id": sid, "delta": text})
            case ReasoningDelta(text=text):
                if text:
                    sid = await self._ensure("reasoning")
                    await self.message.send({"type": "reasoning-delta", "id": sid, "delta": text})
            case ToolCallStart(call_id=call_id, name=name):
                await self.close_open()
                self._tool_streams[call_id] = name
                await self.message.send({"type": "tool-input-start", "toolCallId": call_id, "toolName": name})
            case ToolCallDelta(call_id=call_id, arguments_delta=delta):
                if call_id in self._tool_streams and delta:
                    await self.message.send(
                        {"type": "tool-input-delta", "toolCallId": call_id, "inputTextDelta": delta}
                    )
            case ToolCallEnd(call_id=call_id, name=name, arguments=arguments):
                await self.close_open()
                self._tool_streams.pop(call_id, None)
                await self.message.send(
                    {
                        "type": "tool-input-available",
                        "toolCallId": call_id,
                        "toolName": name,
                        "input": _parse_args(arguments),
                    }
                )
            case UsageUpdate(input_tokens=inp, output_tokens=out):
                if stats.on_usage is not None:
                    stats.on_usage(inp or 0, out or 0)
                stats.input_tokens += inp or 0
                stats.output_tokens += out or 0
            case Finished(reason=reason):
                self.finish_reason = reason
            case _:
                pass


def _parse_args(arguments: str) -> Any:
    try:
        return json.loads(arguments) if arguments else {}
    except json.JSONDecodeError:
        return arguments


def _assistant_turn(response: ModelResponse) -> AssistantMessage:
    parts: list[AssistantPart] = []
    if response.reasoning:
        parts.append(ReasoningPart(response.reasoning))
    if response.text:
        parts.append(TextPart(response.text))
    for call in response.tool_calls:
        parts.append(ToolCallPart(call.call_id, call.name, _parse_args(call.arguments)))
    return AssistantMessage(tuple(parts))


def _tool_context(run: Run, spec: AgentSpec) -> RunContext:
    return RunContext(
        session_name=run.session.name,
        run_id=run.run_id,
        client_id=run.owner_client_id,
        logger=log.bind(run_id=run.run_id, session=run.session.name),
        deps=spec.deps,
    )


async def _execute(tool: Tool | None, name: str, ctx: RunContext, arguments: Any) -> ToolResult:
    if tool is None:
        return ToolResult(UNKNOWN_TOOL.format(name=name), is_error=True)
    args = arguments if isinstance(arguments, dict | str) else {}
    return await tool.call(ctx, args)


async def _publish_result(message: OutputMessage, call_id: str, result: ToolResult) -> None:
    if result.is_error:
        await message.send(
            {"type": "tool-output-error", "toolCallId": call_id, "errorText": str(result.output)}
        )
    else:
        await message.send({"type": "tool-output-available", "toolCallId": call_id, "output": result.output})


async def _one_pass(run: Run, spec: AgentSpec, stats: LoopStats) -> LoopOutcome:
    conversation = run.conversation()
    approved = approved_pending_tool_calls(conversation) if run.is_continuation else []
    history: list[ModelMessage] = to_model_messages(conversation)
    system = spec.system_prompt(run) if callable(spec.system_prompt) else spec.system_prompt
    message = run.open_message()
    ctx = _tool_context(run, spec)
    counter = [0]
    await message.send({"type": "start"})
    # Approval continuation: run the approved calls first; their results join the prompt and are
    # published before the first step, as the AI SDK's streamText does.
    if approved:
        results: list[ToolResultPart] = []
        for pending in approved:
            tool = spec.tools.get(pending.tool_name)
            stats.status("tool")
            result = await _execute(tool, pending.tool_name, ctx, pending.input)
            stats.tool_calls += 1
            await _publish_result(message, pending.tool_call_id, result)
            results.append(
                ToolResultPart(pending.tool_call_id, pending.tool_name, result.output, result.is_error)
            )
        history.append(ToolMessage(tuple(results)))
    finish: FinishReason = "stop"
    for _ in range(spec.max_model_calls):
        stats.model_calls += 1
        stats.status("thinking")
        await message.send({"type": "start-step"})
        request = ModelRequest(
            messages=tuple(history),
            system=system,
            tools=spec.tools.definitions(),
            model=spec.model,
            max_tokens=spec.max_tokens,
            temperature=spec.temperature,
        )
        mapper = _ChunkMapper(message, counter)
        async with spec.provider.stream(request) as stream:
            async for event in stream:
                await mapper.feed(event, stats)
            response = stream.get()
        await mapper.close_open()
        finish = mapper.finish_reason or response.finish_reason or "stop"
        if not response.tool_calls:
            await message.send({"type": "finish-step"})
            break
        suspend = False
        results = []
        for call in response.tool_calls:
            tool = spec.tools.get(call.name)
            if tool is not None and tool.client_side:
                suspend = True
                continue
            if tool is not None and tool.requires_approval:
                suspend = True
                await message.send(
                    {
                        "type": "tool-approval-request",
                        "toolCallId": call.call_id,
                        "approvalId": str(uuid.uuid4()),
                    }
                )
                continue
            stats.status("tool")
            result = await _execute(tool, call.name, ctx, _parse_args(call.arguments))
            stats.tool_calls += 1
            await _publish_result(message, call.call_id, result)
            results.append(ToolResultPart(call.call_id, call.name, result.output, result.is_error))
        await message.send({"type": "finish-step"})
        if suspend:
            await message.send({"type": "finish", "finishReason": "tool-calls"})
            await message.close()
            return "suspended"
        history.append(_assistant_turn(response))
        history.append(ToolMessage(tuple(results)))
    else:
        await message.send({"type": "finish", "finishReason": "length"})
        await message.close()
        msg = f"the model kept calling tools; stopped after {spec.max_model_calls} model calls"
        raise RunError(msg)
    await message.send({"type": "finish", "finishReason": finish})
    await message.close()
    return "complete"


async def run_agent(run: Run, spec: AgentSpec, stats: LoopStats | None = None) -> LoopOutcome:
    """Drive passes while the run has input (the trigger, then steering). The caller has started the
    run and will end or suspend it according to the outcome (or the exception)."""
    stats = stats if stats is not None else LoopStats()
    outcome: LoopOutcome = "complete"
    while run.has_input():
        stats.passes += 1
        outcome = await _one_pass(run, spec, stats)
        if outcome == "suspended":
            break
        await asyncio.sleep(0)  # let steering that arrived during the pass fold in
    return outcome
