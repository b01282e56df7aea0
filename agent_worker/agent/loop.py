"""The agent's model ↔ tools loop for one pass: prompt → provider → stream → server-side tools.

One pass is one assistant message (a JS ``pipe``). Within it the loop may call the model several
times: each call is a ``start-step``/``finish-step`` pair; server-side tool calls are executed and
their results fed back until the model stops calling tools (or ``Agent.max_model_calls`` is
reached). Client-side tools and tools that need approval end the message with
``finish{tool-calls}`` and the run is *suspended*; the client answers with a continuation
(approval → ``ai-run-resume``) or a fork (client tool result → a fresh run). Provider events map to
chunks as the AI SDK's ``toUIMessageStream`` does (see :class:`agent_worker.runtime.MessageStream`).
"""

from __future__ import annotations

from typing import Any, Protocol

from agent_worker import telemetry
from agent_worker.errors import RunError
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
from agent_worker.providers.base import FinishReason, ModelProvider, ModelRequest, ModelResponse
from agent_worker.runtime.handler import AgentRun, MessageStream, parse_tool_input
from agent_worker.tools.base import RunContext, Tool, ToolResult
from agent_worker.tools.registry import ToolRegistry

__all__ = ["LoopAgent", "run_pass"]


class LoopAgent(Protocol):
    """What the loop reads from the agent (:class:`agent_worker.Agent` provides it)."""

    provider: ModelProvider
    tools: ToolRegistry
    model: str | None
    max_tokens: int | None
    temperature: float | None
    max_model_calls: int

    async def context(self, run: AgentRun) -> RunContext[Any]: ...

    async def render_system_prompt(self, ctx: RunContext[Any]) -> str | None: ...


UNKNOWN_TOOL = "unknown tool {name!r}; it is not available to this agent"


def _assistant_turn(response: ModelResponse) -> AssistantMessage:
    parts: list[AssistantPart] = []
    if response.reasoning:
        parts.append(ReasoningPart(response.reasoning))
    if response.text:
        parts.append(TextPart(response.text))
    for call in response.tool_calls:
        parts.append(ToolCallPart(call.call_id, call.name, parse_tool_input(call.arguments)))
    return AssistantMessage(tuple(parts))


async def _execute(
    tool: Tool | None,
    name: str,
    ctx: RunContext[Any],
    arguments: Any,
    call_id: str,
    *,
    approved: bool = False,
) -> ToolResult:
    with telemetry.tool_span(call_id, name, tool, arguments, approved=approved) as span:  # execute_tool
        if tool is None:
            result = ToolResult(UNKNOWN_TOOL.format(name=name), is_error=True)
        else:
            result = await tool.call(ctx, arguments if isinstance(arguments, dict | str) else {})
        span.result(result.output, result.is_error)
        return result


async def _call_tool(
    out: MessageStream,
    run: AgentRun,
    ctx: RunContext[Any],
    call: tuple[str, str, Any],
    tools: ToolRegistry,
    *,
    approved: bool = False,
) -> ToolResultPart:
    call_id, name, args = call
    run.stats.status("tool")
    result = await _execute(tools.get(name), name, ctx, args, call_id, approved=approved)
    run.stats.tool_calls += 1
    await out.tool_result(call_id, result.output, is_error=result.is_error)
    return ToolResultPart(call_id, name, result.output, result.is_error)


async def _model_calls(
    agent: LoopAgent, run: AgentRun, out: MessageStream, ctx: RunContext[Any], system: str | None
) -> bool:
    """Call the model until it stops calling server-side tools. False when the limit was hit."""
    history: list[ModelMessage] = list(run.history)
    # Approval continuation: the approved calls run first; their results join the prompt and are
    # published before the first step, as the AI SDK's streamText does.
    approved = run.approved_tool_calls()
    if approved:
        results = [await _call_tool(out, run, ctx, call, agent.tools, approved=True) for call in approved]
        history.append(ToolMessage(tuple(results)))
    for _ in range(agent.max_model_calls):
        run.stats.model_calls += 1
        run.stats.status("thinking")
        await out.start_step()
        # openai-responses sessions: the branch as Responses items plus this message's own items so
        # far (function calls and their outputs), exactly as every client folds them.
        items = None if run.responses_input is None else [*run.responses_input, *out.responses_items()]
        request = ModelRequest(
            messages=tuple(history),
            system=system,
            tools=agent.tools.definitions(),
            model=agent.model,
            max_tokens=agent.max_tokens,
            temperature=agent.temperature,
            responses_input=items,
        )
        out.finish_reason = None
        async with telemetry.chat_stream(agent.provider, request) as stream:  # a `chat` span when traced
            await out.stream(stream)
            response = stream.get()
        finish: FinishReason = out.finish_reason or response.finish_reason or "stop"
        results = []
        for call in response.tool_calls:
            tool = agent.tools.get(call.name)
            if tool is not None and tool.client_side:
                telemetry.tool_suspended(call.call_id, call.name, tool, call.arguments, reason="client")
                out.suspend()
            elif tool is not None and tool.requires_approval:
                telemetry.tool_suspended(call.call_id, call.name, tool, call.arguments, reason="approval")
                await out.request_approval(call.call_id)
            else:
                server_call = (call.call_id, call.name, parse_tool_input(call.arguments))
                results.append(await _call_tool(out, run, ctx, server_call, agent.tools))
        await out.finish_step()
        if not response.tool_calls:
            out.finish(finish)
            return True
        if run.suspended:
            return True
        history.append(_assistant_turn(response))
        history.append(ToolMessage(tuple(results)))
    out.finish("length")
    return False


async def run_pass(agent: LoopAgent, run: AgentRun) -> None:
    """One pass of ``agent`` over ``run`` (the worker calls it once per pass)."""
    ctx = await agent.context(run)
    system = await agent.render_system_prompt(ctx)
    async with run.message() as out:
        within_limit = await _model_calls(agent, run, out, ctx, system)
    if not within_limit:
        msg = f"the model kept calling tools; stopped after {agent.max_model_calls} model calls"
        raise RunError(msg)
