"""OpenAI Chat Completions adapter, also used for any OpenAI-compatible server by ``base_url``.

Translates our messages into ``chat.completions.create(stream=True)`` and the streamed chunks into
our events: content → text, ``reasoning_content`` (llama.cpp, vLLM, DeepSeek) → reasoning, indexed
``tool_calls`` fragments → tool-call start/delta/end (parallel calls supported), the final usage
chunk → usage. The SDK's own retries are off (``max_retries=0``): :mod:`.retries` decides.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

import structlog

from agent_worker.errors import ConfigError, ProviderConnectionError, ProviderError, ProviderHTTPError
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
from agent_worker.providers._common import dump_json, tool_output_text, transport_errors
from agent_worker.providers._options import Secret, check_options, secret_from_env
from agent_worker.providers._stream import ProviderStream
from agent_worker.providers.base import (
    Finished,
    FinishReason,
    ModelRequest,
    ReasoningDelta,
    ResponseStream,
    StreamEvent,
    TextDelta,
    UsageUpdate,
)
from agent_worker.providers.guard import check_allow_provider_requests
from agent_worker.providers.retries import RetryConfig, parse_retry_after, retry_config

if TYPE_CHECKING:
    from openai import AsyncOpenAI

__all__ = ["OpenAIChatProvider", "OpenAICompatibleProvider", "map_openai_errors", "to_openai_messages"]

log = structlog.get_logger("agent_worker.providers")

_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool-calls",
    "function_call": "tool-calls",
    "content_filter": "content-filter",
}


@contextmanager
def map_openai_errors(provider: str) -> Iterator[None]:
    """Translate OpenAI SDK (and raw transport) exceptions into :mod:`agent_worker.errors`."""
    import openai  # noqa: PLC0415 - vendor SDKs load only with their adapter

    try:
        yield
    except openai.APIStatusError as exc:
        msg = f"{provider}: HTTP {exc.status_code}: {exc.message}"
        raise ProviderHTTPError(
            msg,
            http_status=exc.status_code,
            body=exc.body,
            retry_after=parse_retry_after(exc.response.headers),
        ) from exc
    except openai.APIConnectionError as exc:  # includes APITimeoutError
        msg = f"{provider}: connection failed: {exc.message}"
        raise ProviderConnectionError(msg) from exc
    except openai.APIError as exc:  # an error object inside an otherwise fine stream
        msg = f"{provider}: {exc.message}"
        raise ProviderError(msg) from exc
    except transport_errors() as exc:
        msg = f"{provider}: stream broke: {type(exc).__name__}: {exc}"
        raise ProviderConnectionError(msg) from exc


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


class OpenAIChatProvider:
    """OpenAI Chat Completions (``name = "openai"``)."""

    name = "openai"
    default_model: ClassVar[str] = "gpt-4.1-mini"
    _max_tokens_param: ClassVar[str] = "max_completion_tokens"
    _default_key_env: ClassVar[str | None] = "OPENAI_API_KEY"
    _options: ClassVar[set[str]] = {
        "model",
        "api_key_env",
        "base_url",
        "timeout",
        "retry",
        "include_usage",
        "parallel_tool_calls",
        "max_tokens",
        "temperature",
        "extra_body",
    }

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

    async def aclose(self) -> None:
        """Close the SDK client's connection pool (only a client this provider created)."""
        if self._owns_client:
            await self.client.close()

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> OpenAIChatProvider:
        check_options(cls.name, options, cls._options)
        return cls(options.get("model"), **cls._common_kwargs(options))

    @classmethod
    def _common_kwargs(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        env = options.get("api_key_env", cls._default_key_env)
        return dict(
            api_key=secret_from_env(cls.name, str(env)) if env else None,
            base_url=options.get("base_url"),
            timeout=float(options.get("timeout", 120.0)),
            retry=retry_config(cls.name, options.get("retry")),
            include_usage=bool(options.get("include_usage", True)),
            parallel_tool_calls=options.get("parallel_tool_calls"),
            max_tokens=options.get("max_tokens"),
            temperature=options.get("temperature"),
            extra_body=options.get("extra_body"),
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, base_url={str(self.client.base_url)!r})"

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
        max_tokens = request.max_tokens or self.max_tokens
        if max_tokens is not None:
            params[self._max_tokens_param] = max_tokens
        temperature = request.temperature if request.temperature is not None else self.temperature
        if temperature is not None:
            params["temperature"] = temperature
        if self.extra_body:
            params["extra_body"] = self.extra_body
        return params

    def stream(self, request: ModelRequest) -> AbstractAsyncContextManager[ResponseStream]:
        return ProviderStream(lambda: self._source(request), provider=self.name, retry=self.retry)

    @asynccontextmanager
    async def _source(self, request: ModelRequest) -> AsyncIterator[AsyncIterator[StreamEvent]]:
        check_allow_provider_requests(str(self.client.base_url), self.name)
        params = self._params(request)
        with map_openai_errors(self.name):
            stream = await self._create(params)
        log.debug("provider_stream_opened", provider=self.name, model=params["model"])
        try:
            yield self._events(stream)
        finally:
            await stream.close()

    async def _create(self, params: dict[str, Any]) -> Any:
        return await self.client.chat.completions.create(**params)

    async def _events(self, stream: Any) -> AsyncIterator[StreamEvent]:
        calls = ToolCallAssembler()
        finish: FinishReason | None = None
        saw_calls = False
        with map_openai_errors(self.name):
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
