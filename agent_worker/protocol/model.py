"""Provider-neutral model messages: what the rebuilt conversation becomes before a provider sees it.

Pure data; no vendor type appears here. Providers translate these into their own request format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "AssistantMessage",
    "AssistantPart",
    "FilePart",
    "ModelMessage",
    "ReasoningPart",
    "SystemMessage",
    "TextPart",
    "ToolCallPart",
    "ToolMessage",
    "ToolResultPart",
    "UserMessage",
    "UserPart",
]


@dataclass(frozen=True, slots=True)
class TextPart:
    text: str
    kind: Literal["text"] = "text"


@dataclass(frozen=True, slots=True)
class FilePart:
    url: str
    media_type: str
    kind: Literal["file"] = "file"


@dataclass(frozen=True, slots=True)
class ReasoningPart:
    text: str
    kind: Literal["reasoning"] = "reasoning"


@dataclass(frozen=True, slots=True)
class ToolCallPart:
    """A tool call the assistant made; ``arguments`` is the parsed JSON input (or the raw string)."""

    call_id: str
    name: str
    arguments: Any
    kind: Literal["tool-call"] = "tool-call"


@dataclass(frozen=True, slots=True)
class ToolResultPart:
    call_id: str
    name: str
    output: Any
    is_error: bool = False
    kind: Literal["tool-result"] = "tool-result"


UserPart = TextPart | FilePart
AssistantPart = TextPart | ReasoningPart | ToolCallPart


@dataclass(frozen=True, slots=True)
class SystemMessage:
    content: str
    role: Literal["system"] = "system"


@dataclass(frozen=True, slots=True)
class UserMessage:
    parts: tuple[UserPart, ...]
    role: Literal["user"] = "user"

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.parts if isinstance(p, TextPart))


@dataclass(frozen=True, slots=True)
class AssistantMessage:
    parts: tuple[AssistantPart, ...]
    role: Literal["assistant"] = "assistant"

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.parts if isinstance(p, TextPart))

    @property
    def tool_calls(self) -> tuple[ToolCallPart, ...]:
        return tuple(p for p in self.parts if isinstance(p, ToolCallPart))


@dataclass(frozen=True, slots=True)
class ToolMessage:
    parts: tuple[ToolResultPart, ...] = field(default_factory=tuple)
    role: Literal["tool"] = "tool"


ModelMessage = SystemMessage | UserMessage | AssistantMessage | ToolMessage
