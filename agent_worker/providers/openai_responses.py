"""OpenAI Responses API adapter (``name = "openai-responses"``).

Streams typed events: ``response.output_text.delta`` → text, ``response.reasoning_summary_text.delta``
(and ``response.reasoning_text.delta`` from models that expose raw reasoning) → reasoning,
``function_call`` output items with ``response.function_call_arguments.delta/done`` → tool calls,
``response.completed`` / ``response.incomplete`` → usage and finish; ``response.failed`` and
``error`` events become :class:`ProviderError`. Requests are stateless (``store=False``): the
worker resends the conversation each turn.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from agent_worker.errors import CodecError, ProviderConnectionError, ProviderError, ProviderHTTPError
from agent_worker.protocol.model import (
    AssistantMessage,
    SystemMessage,
    TextPart,
    ToolCallPart,
    ToolMessage,
    UserMessage,
)
from agent_worker.providers._accumulator import ToolCallAssembler
from agent_worker.providers._common import dump_json, tool_output_text
from agent_worker.providers._options import Secret, parse_options
from agent_worker.providers.base import (
    Finished,
    FinishReason,
    ModelRequest,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    UsageUpdate,
)
from agent_worker.providers.openai_chat import OpenAIChatProvider, OpenAIOptions
from agent_worker.providers.retries import RetryConfig

if TYPE_CHECKING:
    from openai import AsyncOpenAI

__all__ = ["OpenAIResponsesProvider", "to_responses_input"]

# Error codes of the in-stream `error` event, as the HTTP status they stand for.
_INCOMPLETE: dict[str, FinishReason] = {"max_output_tokens": "length", "content_filter": "content-filter"}
_ERROR_CODE_STATUS = {"rate_limit_exceeded": 429, "server_error": 500, "server_is_overloaded": 503}


def to_responses_input(request: ModelRequest) -> list[dict[str, Any]]:
    """Our messages as Responses ``input`` items (system text goes to ``instructions``)."""
    items: list[dict[str, Any]] = []
    for m in request.messages:
        match m:
            case SystemMessage(content=text):
                items.append({"role": "developer", "content": text})
            case UserMessage(parts=parts):
                content: list[dict[str, Any]] = []
                for part in parts:
                    if isinstance(part, TextPart):
                        content.append({"type": "input_text", "text": part.text})
                    elif part.media_type.startswith("image/"):
                        content.append({"type": "input_image", "image_url": part.url, "detail": "auto"})
                    else:
                        content.append({"type": "input_file", "file_url": part.url})
                items.append({"role": "user", "content": content})
            case AssistantMessage(parts=aparts):
                for apart in aparts:
                    if isinstance(apart, TextPart) and apart.text:
                        items.append({"role": "assistant", "content": apart.text})
                    elif isinstance(apart, ToolCallPart):
                        items.append(
                            {
                                "type": "function_call",
                                "call_id": apart.call_id,
                                "name": apart.name,
                                "arguments": dump_json(apart.arguments),
                            }
                        )
            case ToolMessage(parts=results):
                items.extend(
                    {
                        "type": "function_call_output",
                        "call_id": r.call_id,
                        "output": tool_output_text(r.output, r.is_error),
                    }
                    for r in results
                )
    return items


class OpenAIResponsesOptions(OpenAIOptions):
    """``[providers.openai-responses]``."""

    reasoning_effort: str | None = None
    """``minimal`` | ``low`` | ``medium`` | ``high`` (model-dependent)."""
    reasoning_summary: str = "auto"
    """``auto`` | ``concise`` | ``detailed``; ``""`` to not ask for summaries."""


def _refuse_hosted_item(item_type: Any) -> None:
    """Hosted tools (web/file search, code interpreter, image generation, MCP, custom tools) have no
    representation in either codec (``@ably/ai-transport`` AIT-1121): fail the run clearly."""
    if item_type not in ("message", "reasoning", "function_call"):
        msg = f"unsupported output item type {item_type!r}: hosted tools are not supported by the codecs"
        raise CodecError(msg, field="item.type", code=40003)


class OpenAIResponsesProvider(OpenAIChatProvider):
    """OpenAI Responses API with reasoning summaries."""

    name = "openai-responses"
    default_model = "gpt-5-mini"
    _max_tokens_param = "max_output_tokens"

    def __init__(
        self,
        model: str | None = None,
        *,
        client: AsyncOpenAI | None = None,
        api_key: str | Secret | None = None,
        base_url: str | None = None,
        timeout: float = 120.0,
        retry: RetryConfig | None = None,
        parallel_tool_calls: bool | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        extra_body: Mapping[str, Any] | None = None,
        reasoning_effort: str | None = None,
        reasoning_summary: str | None = "auto",
    ) -> None:
        super().__init__(
            model,
            client=client,
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            retry=retry,
            parallel_tool_calls=parallel_tool_calls,
            max_tokens=max_tokens,
            temperature=temperature,
            extra_body=extra_body,
        )
        self.reasoning_effort = reasoning_effort
        self.reasoning_summary = reasoning_summary

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> OpenAIResponsesProvider:
        opts = parse_options(cls.name, OpenAIResponsesOptions, options)
        return cls(
            opts.model,
            reasoning_effort=opts.reasoning_effort,
            reasoning_summary=opts.reasoning_summary,
            **cls._common_kwargs(opts),
        )

    def _params(self, request: ModelRequest) -> dict[str, Any]:
        system = "\n\n".join(s for s in [request.system] if s)
        params: dict[str, Any] = {
            "model": request.model or self.model,
            "input": (
                [dict(item) for item in request.responses_input]
                if request.responses_input is not None
                else to_responses_input(request)
            ),
            "stream": True,
            "store": False,
        }
        if system:
            params["instructions"] = system
        if request.tools:
            params["tools"] = [
                {
                    "type": "function",
                    "name": t.name,
                    "description": t.description,
                    "parameters": dict(t.parameters),
                    "strict": False,
                }
                for t in request.tools
            ]
            if self.parallel_tool_calls is not None:
                params["parallel_tool_calls"] = self.parallel_tool_calls
        reasoning: dict[str, Any] = {}
        if self.reasoning_effort:
            reasoning["effort"] = self.reasoning_effort
        if self.reasoning_summary:
            reasoning["summary"] = self.reasoning_summary
        if reasoning:
            params["reasoning"] = reasoning
        return self._add_limits(request, params)

    async def _create(self, params: dict[str, Any]) -> Any:
        return await self.client.responses.create(**params)

    async def _events(self, stream: Any) -> AsyncIterator[StreamEvent]:
        calls = ToolCallAssembler()
        finish: FinishReason | None = None
        saw_calls = False
        with self._map_errors():
            async for event in stream:
                kind = getattr(event, "type", None)
                if kind == "response.output_text.delta":
                    if event.delta:
                        yield TextDelta(event.delta)
                elif kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
                    if event.delta:
                        yield ReasoningDelta(event.delta)
                elif kind == "response.reasoning_summary_part.added" and getattr(event, "summary_index", 0):
                    yield ReasoningDelta("\n\n")  # separate summary paragraphs
                elif kind == "response.output_item.added":
                    item = event.item
                    _refuse_hosted_item(getattr(item, "type", None))
                    if getattr(item, "type", None) == "function_call":
                        saw_calls = True
                        yield calls.start(item.id, item.call_id, item.name)
                        if getattr(item, "arguments", None):
                            yield calls.delta(item.id, item.arguments)
                elif kind == "response.function_call_arguments.delta":
                    if event.item_id in calls and event.delta:
                        yield calls.delta(event.item_id, event.delta)
                elif kind == "response.function_call_arguments.done":
                    if event.item_id in calls:
                        yield calls.end(event.item_id, event.arguments)
                elif kind == "response.output_item.done":
                    item = event.item
                    if getattr(item, "type", None) == "function_call" and item.id in calls:
                        yield calls.end(item.id, item.arguments)
                elif kind in ("response.completed", "response.incomplete"):
                    response = event.response
                    usage = getattr(response, "usage", None)
                    if usage is not None:
                        yield UsageUpdate(usage.input_tokens, usage.output_tokens)
                    for end in calls.end_all():
                        yield end
                    if kind == "response.completed":
                        finish = "tool-calls" if saw_calls else "stop"
                    else:
                        details = getattr(response, "incomplete_details", None)
                        reason = getattr(details, "reason", None)
                        finish = _INCOMPLETE.get(str(reason), "other")
                elif kind == "response.failed":
                    error = getattr(event.response, "error", None)
                    msg = f"{self.name}: response failed: {getattr(error, 'message', None) or error}"
                    raise ProviderError(msg)
                elif kind == "error":
                    code = str(getattr(event, "code", "") or "")
                    msg = f"{self.name}: {getattr(event, 'message', '') or code or 'stream error'}"
                    if code in _ERROR_CODE_STATUS:
                        raise ProviderHTTPError(msg, http_status=_ERROR_CODE_STATUS[code], body=code)
                    raise ProviderError(msg)
        if finish is None:
            msg = f"{self.name}: the stream ended before response.completed"
            raise ProviderConnectionError(msg)
        yield Finished(finish)
