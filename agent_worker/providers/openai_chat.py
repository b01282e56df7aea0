"""OpenAI Chat Completions adapter, also used for any OpenAI-compatible server by ``base_url``.

Translates our messages into ``chat.completions.create(stream=True)`` and the streamed chunks into
our events: content → text, ``reasoning_content`` (llama.cpp, vLLM, DeepSeek) → reasoning, indexed
``tool_calls`` fragments → tool-call start/delta/end (parallel calls supported), the final usage
chunk → usage. The SDK's own retries are off (``max_retries=0``): :mod:`.retries` decides.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from pydantic import Field

from agent_worker.errors import ConfigError, ProviderConnectionError
from agent_worker.protocol.model import (
    AssistantMessage,
    ModelMessage,
    SystemMessage,
    TextPart,
    ToolCallPart,
    ToolMessage,
    UserMessage,
)
from agent_worker.providers._accumulator import ToolCallAssembler
from agent_worker.providers._common import dump_json, map_sdk_errors, tool_output_text
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
    from openai import AsyncOpenAI

__all__ = ["OpenAIChatProvider", "OpenAICompatibleProvider", "map_openai_errors", "to_openai_messages"]

_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool-calls",
    "function_call": "tool-calls",
    "content_filter": "content-filter",
}


def map_openai_errors(provider: str) -> AbstractContextManager[None]:
    """Translate OpenAI SDK (and raw transport) exceptions into :mod:`agent_worker.errors`."""
    import openai  # noqa: PLC0415 - vendor SDKs load only with their adapter

    return map_sdk_errors(openai, provider)


def _user_content(message: UserMessage) -> str | list[dict[str, Any]]:
    if all(isinstance(p, TextPart) for p in message.parts):
        return message.text
    content: list[dict[str, Any]] = []
    for part in message.parts:
        if isinstance(part, TextPart):
            content.append({"type": "text", "text": part.text})
        elif part.media_type.startswith("image/"):
            content.append({"type": "image_url", "image_url": {"url": part.url}})
        else:
            content.append({"type": "text", "text": f"[attached file {part.url} ({part.media_type})]"})
    return content


def to_openai_messages(request: ModelRequest) -> list[dict[str, Any]]:
    """Our provider-neutral messages as Chat Completions ``messages`` (reasoning is not sent back)."""
    out: list[dict[str, Any]] = []
    if request.system:
        out.append({"role": "system", "content": request.system})
    message: ModelMessage
    for message in request.messages:
        match message:
            case SystemMessage(content=content):
                out.append({"role": "system", "content": content})
            case UserMessage():
                out.append({"role": "user", "content": _user_content(message)})
            case AssistantMessage(parts=parts):
                text = "".join(p.text for p in parts if isinstance(p, TextPart))
                entry: dict[str, Any] = {"role": "assistant", "content": text or None}
                calls = [
                    {
                        "id": p.call_id,
                        "type": "function",
                        "function": {"name": p.name, "arguments": dump_json(p.arguments)},
                    }
                    for p in parts
                    if isinstance(p, ToolCallPart)
                ]
                if calls:
                    entry["tool_calls"] = calls
                elif not text:
                    continue  # a reasoning-only turn carries nothing the API accepts
                out.append(entry)
            case ToolMessage(parts=results):
                out.extend(
                    {
                        "role": "tool",
                        "tool_call_id": r.call_id,
                        "content": tool_output_text(r.output, r.is_error),
                    }
                    for r in results
                )
    return out


class OpenAIOptions(ClientOptions):
    """What the OpenAI adapters share (``[providers.openai]``, ``[providers.openai-responses]``)."""

    parallel_tool_calls: bool | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: float | None = None
    extra_body: dict[str, Any] | None = None


class OpenAIChatOptions(OpenAIOptions):
    """``[providers.openai]`` and ``[providers.openai-compatible]``."""

    include_usage: bool = True


class OpenAIChatProvider(SdkProvider):
    """OpenAI Chat Completions (``name = "openai"``)."""

    name = "openai"
    default_model: ClassVar[str] = "gpt-4.1-mini"
    _max_tokens_param: ClassVar[str] = "max_completion_tokens"
    _default_key_env: ClassVar[str | None] = "OPENAI_API_KEY"

    def __init__(
        self,
        model: str | None = None,
        *,
        client: AsyncOpenAI | None = None,
        api_key: str | Secret | None = None,
        base_url: str | None = None,
        timeout: float = 120.0,
        retry: RetryConfig | None = None,
        include_usage: bool = True,
        parallel_tool_calls: bool | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> None:
        self.model = model or self.default_model
        self.retry = retry
        self.include_usage = include_usage
        self.parallel_tool_calls = parallel_tool_calls
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.extra_body = dict(extra_body or {})
        self._owns_client = client is None
        if client is None:
            try:
                import openai  # noqa: PLC0415
            except ImportError as exc:  # pragma: no cover - openai is a core dependency today
                msg = "the openai SDK is not installed: pip install openai"
                raise ImportError(msg) from exc
            key = api_key.get() if isinstance(api_key, Secret) else api_key
            client = openai.AsyncOpenAI(
                api_key=key or "not-needed", base_url=base_url, timeout=timeout, max_retries=0
            )
        self.client: AsyncOpenAI = client

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> OpenAIChatProvider:
        opts = parse_options(cls.name, OpenAIChatOptions, options)
        return cls(opts.model, **cls._common_kwargs(opts), include_usage=opts.include_usage)

    @classmethod
    def _common_kwargs(cls, opts: OpenAIOptions) -> dict[str, Any]:
        return dict(
            **client_options(cls.name, opts, cls._default_key_env),
            parallel_tool_calls=opts.parallel_tool_calls,
            max_tokens=opts.max_tokens,
            temperature=opts.temperature,
            extra_body=opts.extra_body,
        )

    def _map_errors(self) -> AbstractContextManager[None]:
        return map_openai_errors(self.name)

    def _params(self, request: ModelRequest) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": request.model or self.model,
            "messages": to_openai_messages(request),
            "stream": True,
        }
        if self.include_usage:
            params["stream_options"] = {"include_usage": True}
        if request.tools:
            params["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": dict(t.parameters),
                    },
                }
                for t in request.tools
            ]
            if self.parallel_tool_calls is not None:
                params["parallel_tool_calls"] = self.parallel_tool_calls
        return self._add_limits(request, params)

    def _add_limits(self, request: ModelRequest, params: dict[str, Any]) -> dict[str, Any]:
        """Token limit, temperature and ``extra_body``: the same for Chat Completions and Responses."""
        max_tokens = request.max_tokens or self.max_tokens
        if max_tokens is not None:
            params[self._max_tokens_param] = max_tokens
        temperature = request.temperature if request.temperature is not None else self.temperature
        if temperature is not None:
            params["temperature"] = temperature
        if self.extra_body:
            params["extra_body"] = self.extra_body
        return params

    async def _create(self, params: dict[str, Any]) -> Any:
        return await self.client.chat.completions.create(**params)

    async def _events(self, stream: Any) -> AsyncIterator[StreamEvent]:
        calls = ToolCallAssembler()
        finish: FinishReason | None = None
        saw_calls = False
        with self._map_errors():
            async for chunk in stream:
                usage = getattr(chunk, "usage", None)
                if usage is not None:
                    yield UsageUpdate(usage.prompt_tokens, usage.completion_tokens)
                for choice in chunk.choices or ():
                    if choice.index not in (0, None):
                        continue  # n > 1 is not supported; the first choice is the answer
                    delta = choice.delta
                    if delta is not None:
                        reasoning = getattr(delta, "reasoning_content", None) or getattr(
                            delta, "reasoning", None
                        )
                        if isinstance(reasoning, str) and reasoning:
                            yield ReasoningDelta(reasoning)
                        if delta.content:
                            yield TextDelta(delta.content)
                        for tc in delta.tool_calls or ():
                            key = tc.index if tc.index is not None else 0
                            fn = tc.function
                            if key not in calls:
                                saw_calls = True
                                yield calls.start(key, tc.id, (fn.name if fn else None) or "")
                            if fn is not None and fn.arguments:
                                yield calls.delta(key, fn.arguments)
                    if choice.finish_reason:
                        for end in calls.end_all():
                            yield end
                        finish = _FINISH.get(choice.finish_reason, "other")
        if finish is None:
            msg = f"{self.name}: the stream ended before the model finished (no finish_reason)"
            raise ProviderConnectionError(msg)
        if finish == "stop" and saw_calls:
            finish = "tool-calls"  # some compatible servers say "stop" after tool calls
        yield Finished(finish)


class OpenAICompatibleProvider(OpenAIChatProvider):
    """Any server speaking Chat Completions at ``base_url`` (llama.cpp server, vLLM, Ollama, ...).

    The API key is optional (``api_key_env`` names a variable if the server wants one) and the
    token limit goes out as the widely supported ``max_tokens``.
    """

    name = "openai-compatible"
    default_model = "default"
    _max_tokens_param = "max_tokens"
    _default_key_env = None  # never send OPENAI_API_KEY to an arbitrary server by default

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> OpenAIChatProvider:
        if not options.get("base_url"):
            msg = (
                "provider 'openai-compatible' needs base_url, e.g. "
                "http://127.0.0.1:8080/v1 (llama.cpp), http://127.0.0.1:8000/v1 (vLLM), "
                "http://127.0.0.1:11434/v1 (Ollama)"
            )
            raise ConfigError(msg)
        return super().from_options(options)
