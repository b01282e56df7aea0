"""The provider port: one small interface with one streaming method, and our own event vocabulary.

No vendor type appears here. Adapters translate vendor chunks into these events; the accumulator in
``providers/_accumulator.py`` folds them into a :class:`ModelResponse` once, for every adapter.

Usage::

    async with provider.stream(request) as stream:
        async for event in stream:
            ...
        response = stream.get()

Leaving the ``async with`` block (normally, by exception or by task cancellation) closes the
vendor's HTTP stream at once: that is how a cancelled run stops paying for tokens.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from agent_worker.protocol.model import ModelMessage

__all__ = [
    "FinishReason",
    "Finished",
    "ModelProvider",
    "ModelRequest",
    "ModelResponse",
    "ReasoningDelta",
    "ResponseStream",
    "StreamEvent",
    "TextDelta",
    "ToolCall",
    "ToolCallDelta",
    "ToolCallEnd",
    "ToolCallStart",
    "ToolDefinition",
    "UsageUpdate",
]

# The Vercel AI SDK's finish reasons, which is also what goes on the wire in the `finish` chunk.
FinishReason = Literal["stop", "length", "content-filter", "tool-calls", "error", "other"]


@dataclass(frozen=True, slots=True)
class ToolDefinition:
    """What the model is told about a tool: a name, a description and a JSON schema for its input."""

    name: str
    description: str
    parameters: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ModelRequest:
    messages: Sequence[ModelMessage]
    system: str | None = None
    tools: Sequence[ToolDefinition] = ()
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    responses_input: Sequence[Mapping[str, Any]] | None = None
    """The same conversation as OpenAI Responses input items, set when the session's codec
    (``openai-responses``) stores them natively; a Responses provider sends these as they are,
    every other provider uses ``messages``."""


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str
    kind: Literal["text-delta"] = "text-delta"


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    text: str
    kind: Literal["reasoning-delta"] = "reasoning-delta"


@dataclass(frozen=True, slots=True)
class ToolCallStart:
    call_id: str
    name: str
    kind: Literal["tool-call-start"] = "tool-call-start"


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    call_id: str
    arguments_delta: str
    kind: Literal["tool-call-delta"] = "tool-call-delta"


@dataclass(frozen=True, slots=True)
class ToolCallEnd:
    """The call's arguments are complete. ``arguments`` is the full JSON text."""

    call_id: str
    name: str
    arguments: str
    kind: Literal["tool-call-end"] = "tool-call-end"


@dataclass(frozen=True, slots=True)
class UsageUpdate:
    input_tokens: int | None = None
    output_tokens: int | None = None
    kind: Literal["usage"] = "usage"


@dataclass(frozen=True, slots=True)
class Finished:
    reason: FinishReason
    kind: Literal["finished"] = "finished"


StreamEvent = (
    TextDelta | ReasoningDelta | ToolCallStart | ToolCallDelta | ToolCallEnd | UsageUpdate | Finished
)


@dataclass(frozen=True, slots=True)
class ToolCall:
    call_id: str
    name: str
    arguments: str


@dataclass(slots=True)
class ModelResponse:
    """The assembled result of one streamed model call."""

    text: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    input_tokens: int | None = None
    output_tokens: int | None = None
    finish_reason: FinishReason | None = None


class ResponseStream(Protocol):
    def __aiter__(self) -> AsyncIterator[StreamEvent]: ...

    def get(self) -> ModelResponse:
        """The response assembled from every event seen so far."""
        ...


@runtime_checkable
class ModelProvider(Protocol):
    name: str

    def stream(self, request: ModelRequest) -> AbstractAsyncContextManager[ResponseStream]:
        """Open one streamed model call. Errors opening it are raised from ``__aenter__``
        (mapped into :mod:`agent_worker.errors`), so retries can wrap the open alone."""
        ...
