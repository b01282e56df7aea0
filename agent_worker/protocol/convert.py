"""UIMessages → provider-neutral model messages (like AI SDK ``convertToModelMessages``, ai 6.x).

An assistant UIMessage is split at every ``step-start`` part into blocks; each block becomes one
:class:`AssistantMessage` (text, reasoning, tool calls) followed by one :class:`ToolMessage` with the
results of that block's tool calls — the shape every chat-completions style API expects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from agent_worker.protocol.model import (
    AssistantMessage,
    AssistantPart,
    FilePart,
    ModelMessage,
    ReasoningPart,
    SystemMessage,
    TextPart,
    ToolCallPart,
    ToolMessage,
    ToolResultPart,
    UserMessage,
    UserPart,
)
from agent_worker.protocol.vercel.reducer import is_tool_part, tool_name

__all__ = ["DENIED_TOOL_RESULT", "to_model_messages"]

DENIED_TOOL_RESULT = "Tool call execution denied."
_COMPLETE_TOOL_STATES = ("output-available", "output-error", "output-denied", "approval-responded")


def _user(message: Mapping[str, Any]) -> UserMessage:
    parts: list[UserPart] = []
    for part in message.get("parts", []):
        match part.get("type"):
            case "text":
                parts.append(TextPart(str(part.get("text", ""))))
            case "file":
                parts.append(
                    FilePart(url=str(part.get("url", "")), media_type=str(part.get("mediaType", "")))
                )
            case _:
                pass  # data-* parts need an app-specific converter; the AI SDK drops them by default
    return UserMessage(tuple(parts))


def _block(block: Sequence[Mapping[str, Any]], out: list[ModelMessage]) -> None:
    content: list[AssistantPart] = []
    results: list[ToolResultPart] = []
    for part in block:
        ptype = part.get("type")
        if ptype == "text":
            if part.get("text"):
                content.append(TextPart(str(part["text"])))
        elif ptype == "reasoning":
            if part.get("text"):
                content.append(ReasoningPart(str(part["text"])))
        elif is_tool_part(part):
            state = part.get("state")
            if state == "input-streaming":
                continue
            name = tool_name(part)
            call_id = str(part.get("toolCallId", ""))
            content.append(ToolCallPart(call_id=call_id, name=name, arguments=part.get("input")))
            if part.get("providerExecuted") is True:
                continue  # the provider ran it; its result is not ours to send back
            match state:
                case "output-available":
                    results.append(ToolResultPart(call_id, name, part.get("output")))
                case "output-error":
                    results.append(ToolResultPart(call_id, name, part.get("errorText", ""), is_error=True))
                case "output-denied":
                    approval = part.get("approval")
                    reason = approval.get("reason") if isinstance(approval, Mapping) else None
                    results.append(ToolResultPart(call_id, name, reason or DENIED_TOOL_RESULT, is_error=True))
                case _:
                    pass
    if content:
        out.append(AssistantMessage(tuple(content)))
    if results:
        out.append(ToolMessage(tuple(results)))


def _assistant(message: Mapping[str, Any], out: list[ModelMessage], ignore_incomplete: bool) -> None:
    block: list[Mapping[str, Any]] = []
    for part in message.get("parts", []):
        ptype = part.get("type")
        if ptype == "step-start":
            _block(block, out)
            block = []
        elif ptype in ("text", "reasoning") or is_tool_part(part):
            if ignore_incomplete and is_tool_part(part) and not _complete(part):
                continue
            block.append(part)
    _block(block, out)


def _complete(part: Mapping[str, Any]) -> bool:
    state = part.get("state")
    if state == "output-available":
        return part.get("preliminary") is not True
    return state in _COMPLETE_TOOL_STATES


def to_model_messages(
    messages: Sequence[Mapping[str, Any]], *, ignore_incomplete_tool_calls: bool = False
) -> list[ModelMessage]:
    """Convert UIMessages (the selected branch) into model messages.

    Differences from the AI SDK, all deliberate: empty assistant text/reasoning parts are dropped
    (several vendors reject empty blocks); approval request/response parts have no model-message
    equivalent here (an approved call's result arrives as a normal tool result); data parts are
    dropped. ``ignore_incomplete_tool_calls`` drops tool parts that have no result yet.
    """
    out: list[ModelMessage] = []
    for message in messages:
        match message.get("role"):
            case "system":
                text = "".join(
                    str(p.get("text", "")) for p in message.get("parts", []) if p.get("type") == "text"
                )
                out.append(SystemMessage(text))
            case "user":
                out.append(_user(message))
            case "assistant":
                _assistant(message, out, ignore_incomplete_tool_calls)
            case _:
                pass
    return out
