"""Anthropic Messages adapter (``name = "anthropic"``).

Streams ``messages.create(stream=True)`` events: ``text_delta`` → text, ``thinking_delta`` →
reasoning, ``tool_use`` blocks with ``input_json_delta`` fragments → tool calls, ``message_start``
and ``message_delta`` usage → usage, ``stop_reason`` → finish. An in-stream ``error`` event
(``overloaded_error``, ``rate_limit_error``, ...) maps to the HTTP status it stands for, so an
overload before the first token is retried like a 529 response would be.

Limitation: thinking blocks are streamed as reasoning but not sent back on later turns (our
:class:`ReasoningPart` carries no signature), so extended thinking is best left off for tool loops.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from pydantic import Field

from agent_worker.errors import ProviderConnectionError
from agent_worker.protocol.model import (
    AssistantMessage,
    SystemMessage,
    TextPart,
    ToolCallPart,
    ToolMessage,
    UserMessage,
)
from agent_worker.providers._accumulator import ToolCallAssembler
from agent_worker.providers._common import map_sdk_errors, parse_json_object, tool_output_text
from agent_worker.providers._options import ClientOptions, Secret, client_options, parse_options
from agent_worker.providers._stream import SdkProvider
from agent_worker.providers.base import (
    Finished,
    FinishReason,
    ModelRequest,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    UsageUpdate,
)
from agent_worker.providers.retries import RetryConfig

if TYPE_CHECKING:
    from anthropic import AsyncAnthropic

__all__ = ["AnthropicProvider", "map_anthropic_errors", "to_anthropic_messages"]

_FINISH: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool-calls",
    "refusal": "content-filter",
}
# In-stream error types, as the HTTP status Anthropic documents for them.
_ERROR_TYPE_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}


def _error_type(body: object) -> str | None:
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and isinstance(err.get("type"), str):
            return str(err["type"])
    return None


def _status(exc: Any) -> int:
    if exc.status_code < 400:  # an `error` event inside a 200 stream: use the status its type stands for
        return _ERROR_TYPE_STATUS.get(_error_type(exc.body) or "", 500)
    return int(exc.status_code)


def map_anthropic_errors(provider: str) -> AbstractContextManager[None]:
    """Translate Anthropic SDK (and raw transport) exceptions into :mod:`agent_worker.errors`."""
    import anthropic  # noqa: PLC0415 - vendor SDKs load only with their adapter

    return map_sdk_errors(anthropic, provider, _status)


def _file_block(url: str, media_type: str) -> dict[str, Any]:
    kind = "image" if media_type.startswith("image/") else "document"
    if url.startswith("data:") and ";base64," in url:
        data = url.split(";base64,", 1)[1]
        return {"type": kind, "source": {"type": "base64", "media_type": media_type, "data": data}}
    return {"type": kind, "source": {"type": "url", "url": url}}


def to_anthropic_messages(request: ModelRequest) -> tuple[str | None, list[dict[str, Any]]]:
    """(system, messages): system texts are joined; consecutive same-role turns are merged
    because the API wants user/assistant alternation and tool results travel as user content."""
    systems = [request.system] if request.system else []
    out: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})

    for m in request.messages:
        match m:
            case SystemMessage(content=text):
                systems.append(text)
            case UserMessage(parts=uparts):
                add(
                    "user",
                    [
                        {"type": "text", "text": p.text}
                        if isinstance(p, TextPart)
                        else _file_block(p.url, p.media_type)
                        for p in uparts
                        if not isinstance(p, TextPart) or p.text
                    ],
                )
            case AssistantMessage(parts=aparts):
                blocks: list[dict[str, Any]] = []
                for ap in aparts:
                    if isinstance(ap, TextPart) and ap.text:
                        blocks.append({"type": "text", "text": ap.text})
                    elif isinstance(ap, ToolCallPart):
                        blocks.append(
                            {
                                "type": "tool_use",
                                "id": ap.call_id,
                                "name": ap.name,
                                "input": parse_json_object(ap.arguments),
                            }
                        )
                add("assistant", blocks)
            case ToolMessage(parts=results):
                add(
                    "user",
                    [
                        {
                            "type": "tool_result",
                            "tool_use_id": r.call_id,
                            "content": tool_output_text(r.output, False),
                            "is_error": r.is_error,
                        }
                        for r in results
                    ],
                )
    return ("\n\n".join(systems) or None), out


class AnthropicOptions(ClientOptions):
    """``[providers.anthropic]``."""

    max_tokens: Annotated[int, Field(ge=1)] = 4096
    temperature: float | None = None
    thinking_budget: Annotated[int, Field(ge=1)] | None = None


class AnthropicProvider(SdkProvider):
    """Anthropic Messages API."""

    name = "anthropic"
    default_model: ClassVar[str] = "claude-sonnet-4-5"

    def __init__(
        self,
        model: str | None = None,
        *,
        client: AsyncAnthropic | None = None,
        api_key: str | Secret | None = None,
        base_url: str | None = None,
        timeout: float = 120.0,
        retry: RetryConfig | None = None,
        max_tokens: int = 4096,
        temperature: float | None = None,
        thinking_budget: int | None = None,
    ) -> None:
        self.model = model or self.default_model
        self.retry = retry
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.thinking_budget = thinking_budget
        self._owns_client = client is None
        if client is None:
            import anthropic  # noqa: PLC0415

            key = api_key.get() if isinstance(api_key, Secret) else api_key
            client = anthropic.AsyncAnthropic(api_key=key, base_url=base_url, timeout=timeout, max_retries=0)
        self.client: AsyncAnthropic = client

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> AnthropicProvider:
        opts = parse_options(cls.name, AnthropicOptions, options)
        return cls(
            opts.model,
            **client_options(cls.name, opts, "ANTHROPIC_API_KEY", key_required=True),
            max_tokens=opts.max_tokens,
            temperature=opts.temperature,
            thinking_budget=opts.thinking_budget,
        )

    def _map_errors(self) -> AbstractContextManager[None]:
        return map_anthropic_errors(self.name)

    def _params(self, request: ModelRequest) -> dict[str, Any]:
        system, messages = to_anthropic_messages(request)
        params: dict[str, Any] = {
            "model": request.model or self.model,
            "messages": messages,
            "max_tokens": request.max_tokens or self.max_tokens,
            "stream": True,
        }
        if system:
            params["system"] = system
        if request.tools:
            params["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": dict(t.parameters)}
                for t in request.tools
            ]
        temperature = request.temperature if request.temperature is not None else self.temperature
        if temperature is not None:
            params["temperature"] = temperature
        if self.thinking_budget:
            params["thinking"] = {"type": "enabled", "budget_tokens": self.thinking_budget}
        return params

    async def _create(self, params: dict[str, Any]) -> Any:
        return await self.client.messages.create(**params)

    async def _events(self, stream: Any) -> AsyncIterator[StreamEvent]:
        calls = ToolCallAssembler()
        stop_reason: str | None = None
        stopped = False
        with self._map_errors():
            async for event in stream:
                kind = getattr(event, "type", None)
                if kind == "message_start":
                    usage = getattr(event.message, "usage", None)
                    if usage is not None:
                        yield UsageUpdate(
                            input_tokens=_input_tokens(usage), output_tokens=usage.output_tokens
                        )
                elif kind == "content_block_start":
                    block = event.content_block
                    if getattr(block, "type", None) == "tool_use":
                        yield calls.start(event.index, block.id, block.name)
                    elif getattr(block, "type", None) == "text" and getattr(block, "text", ""):
                        yield TextDelta(block.text)
                elif kind == "content_block_delta":
                    delta = event.delta
                    dtype = getattr(delta, "type", None)
                    if dtype == "text_delta" and delta.text:
                        yield TextDelta(delta.text)
                    elif dtype == "thinking_delta" and delta.thinking:
                        yield ReasoningDelta(delta.thinking)
                    elif dtype == "input_json_delta" and event.index in calls and delta.partial_json:
                        yield calls.delta(event.index, delta.partial_json)
                elif kind == "content_block_stop":
                    if event.index in calls:
                        yield calls.end(event.index)
                elif kind == "message_delta":
                    stop_reason = getattr(event.delta, "stop_reason", None) or stop_reason
                    usage = getattr(event, "usage", None)
                    if usage is not None:
                        yield UsageUpdate(
                            input_tokens=_input_tokens(usage), output_tokens=usage.output_tokens
                        )
                elif kind == "message_stop":
                    stopped = True
        if not stopped:
            msg = f"{self.name}: the stream ended before message_stop"
            raise ProviderConnectionError(msg)
        for end in calls.end_all():
            yield end
        yield Finished(_FINISH.get(stop_reason or "", "other"))


def _input_tokens(usage: Any) -> int | None:
    """Input tokens including cache reads/writes (Anthropic reports them separately)."""
    base = getattr(usage, "input_tokens", None)
    if base is None:
        return None
    extra = (getattr(usage, "cache_creation_input_tokens", None) or 0) + (
        getattr(usage, "cache_read_input_tokens", None) or 0
    )
    return int(base) + int(extra)
