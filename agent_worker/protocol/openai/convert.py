"""OpenAIMessages → provider-neutral model messages, for providers that don't speak Responses.

The OpenAI Responses provider gets the items themselves (:func:`to_responses_input`); every other
provider gets the same conversation through :mod:`agent_worker.protocol.model`, shaped like the
Vercel conversion: each run of output items becomes one :class:`AssistantMessage`, followed by one
:class:`ToolMessage` with the ``function_call_output``\\ s answering its calls.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from agent_worker.protocol.model import (
    AssistantMessage,
    AssistantPart,
    ModelMessage,
    ReasoningPart,
    TextPart,
    ToolCallPart,
    ToolMessage,
    ToolResultPart,
    UserMessage,
    UserPart,
)

__all__ = ["parse_arguments", "to_model_messages"]


def parse_arguments(arguments: Any) -> Any:
    """A function call's JSON ``arguments`` text, parsed (the raw text if it isn't JSON)."""
    if not isinstance(arguments, str):
        return arguments
    try:
        return json.loads(arguments) if arguments else {}
    except json.JSONDecodeError:
        return arguments


def _text(parts: Any, key: str, part_type: str) -> str:
    if not isinstance(parts, list):
        return ""
    return "".join(
        str(p.get(key, "")) for p in parts if isinstance(p, Mapping) and p.get("type") == part_type
    )


def _output_text(item: Mapping[str, Any]) -> str:
    content = item.get("content")
    return _text(content, "text", "output_text") + _text(content, "refusal", "refusal")


def _reasoning_text(item: Mapping[str, Any]) -> str:
    summary = _text(item.get("summary"), "text", "summary_text")
    return summary or _text(item.get("content"), "text", "reasoning_text")


class _Assistant:
    """Accumulates one assistant block and the results that answer it."""

    def __init__(self, out: list[ModelMessage], failed: set[str]) -> None:
        self.out = out
        self.failed = failed
        self.parts: list[AssistantPart] = []
        self.results: list[ToolResultPart] = []
        self.names: dict[str, str] = {}

    def flush(self) -> None:
        if self.parts:
            self.out.append(AssistantMessage(tuple(self.parts)))
        if self.results:
            self.out.append(ToolMessage(tuple(self.results)))
        self.parts, self.results = [], []

    def add(self, item: Mapping[str, Any]) -> None:
        itype = item.get("type")
        if itype == "function_call_output":
            call_id = str(item.get("call_id", ""))
            name = self.names.get(call_id, "")
            self.results.append(ToolResultPart(call_id, name, item.get("output"), call_id in self.failed))
            return
        if self.results:  # a new step starts after the previous step's results
            self.flush()
        if itype == "reasoning" and (text := _reasoning_text(item)):
            self.parts.append(ReasoningPart(text))
        elif itype == "message" and (text := _output_text(item)):
            self.parts.append(TextPart(text))
        elif itype == "function_call":
            call_id = str(item.get("call_id", ""))
            self.names[call_id] = str(item.get("name", ""))
            args = parse_arguments(item.get("arguments"))
            self.parts.append(ToolCallPart(call_id, self.names[call_id], args))


def _failed_calls(messages: Sequence[Mapping[str, Any]]) -> set[str]:
    failed: set[str] = set()
    for message in messages:
        for call_id, state in (message.get("toolCallStates") or {}).items():
            if state.get("result") == "failed" or state.get("approval") == "denied":
                failed.add(call_id)
    return failed


def to_model_messages(messages: Sequence[Mapping[str, Any]]) -> list[ModelMessage]:
    """Convert OpenAIMessages (the selected branch) into model messages."""
    out: list[ModelMessage] = []
    block = _Assistant(out, _failed_calls(messages))
    for message in messages:
        block.flush()
        if message.get("role") == "user":
            parts: list[UserPart] = []
            for item in message.get("items", []):
                text = _text(item.get("content"), "text", "input_text")
                if text:
                    parts.append(TextPart(text))
            out.append(UserMessage(tuple(parts)))
            continue
        for item in message.get("items", []):
            block.add(item)
    block.flush()
    return out
