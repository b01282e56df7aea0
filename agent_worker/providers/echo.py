"""Deterministic, no-network providers: ``echo`` (the default for tests) and ``scripted``.

:class:`EchoProvider` streams the latest user text back word by word. :class:`ScriptedProvider`
turns an async generator into a provider so tests can script text, reasoning, tool calls, usage and
errors at any point of a stream, and records every request it receives.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated, Any

from pydantic import Field

from agent_worker.errors import ConfigError
from agent_worker.protocol.model import AssistantMessage, SystemMessage, ToolMessage, UserMessage
from agent_worker.providers._options import ProviderOptions, parse_options
from agent_worker.providers._stream import ProviderStream
from agent_worker.providers.base import (
    Finished,
    ModelRequest,
    ResponseStream,
    StreamEvent,
    TextDelta,
    ToolCallEnd,
    UsageUpdate,
)
from agent_worker.providers.retries import RetryConfig

__all__ = ["EchoProvider", "Script", "ScriptedProvider", "latest_user_text"]

_WORD = re.compile(r"\S+\s*")


def latest_user_text(request: ModelRequest) -> str:
    for message in reversed(request.messages):
        if isinstance(message, UserMessage):
            return message.text
    return ""


def _count_words(request: ModelRequest) -> int:
    n = len(_WORD.findall(request.system or ""))
    for m in request.messages:
        match m:
            case SystemMessage(content=content):
                n += len(_WORD.findall(content))
            case UserMessage() | AssistantMessage():
                n += len(_WORD.findall(m.text))
            case ToolMessage(parts=parts):
                n += sum(len(_WORD.findall(str(p.output))) for p in parts)
    return n


class EchoOptions(ProviderOptions):
    """``[providers.echo]``."""

    tokens_per_second: Annotated[float, Field(gt=0)] | None = None
    """Omitted: as fast as possible."""
    prefix: str = ""


class EchoProvider:
    """Streams ``prefix + latest user text`` back, one :class:`TextDelta` per word (with the
    whitespace that follows it), then usage (words in / deltas out) and ``Finished("stop")``.

    ``tokens_per_second=None`` streams as fast as possible; otherwise it sleeps between words, which
    makes cancellation and backpressure observable in tests.
    """

    name = "echo"
    __test__ = False  # not a pytest class, despite living next to test helpers

    def __init__(self, tokens_per_second: float | None = None, prefix: str = "") -> None:
        if tokens_per_second is not None and tokens_per_second <= 0:
            msg = "echo: tokens_per_second must be positive (or omitted for no delay)"
            raise ConfigError(msg)
        self.tokens_per_second = tokens_per_second
        self.prefix = prefix

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> EchoProvider:
        opts = parse_options("echo", EchoOptions, options)
        return cls(tokens_per_second=opts.tokens_per_second, prefix=opts.prefix)

    def __repr__(self) -> str:
        return f"EchoProvider(tokens_per_second={self.tokens_per_second!r}, prefix={self.prefix!r})"

    def stream(self, request: ModelRequest) -> AbstractAsyncContextManager[ResponseStream]:
        return ProviderStream(lambda: self._source(request), provider=self.name, retry={"attempts": 1})

    @asynccontextmanager
    async def _source(self, request: ModelRequest) -> AsyncIterator[AsyncIterator[StreamEvent]]:
        yield self._events(request)

    async def _events(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        words = _WORD.findall(self.prefix + latest_user_text(request))
        delay = None if self.tokens_per_second is None else 1.0 / self.tokens_per_second
        for i, word in enumerate(words):
            if delay is not None and i:
                await asyncio.sleep(delay)
            yield TextDelta(word)
        yield UsageUpdate(input_tokens=_count_words(request), output_tokens=len(words))
        yield Finished("stop")


Script = Callable[[ModelRequest], AsyncIterator[StreamEvent | str]]


class ScriptedProvider:
    """A provider whose stream is whatever ``script(request)`` yields (``str`` = text delta).

    If the script does not yield :class:`Finished` itself, one is added: ``"tool-calls"`` when a
    :class:`ToolCallEnd` was seen, else ``"stop"``. Exceptions raised by the script propagate from
    the stream at that point — before the first content event they surface from ``__aenter__`` and
    go through the retry policy (``retry``; default: no retries), exactly like a real adapter.
    """

    __test__ = False

    def __init__(self, script: Script, *, name: str = "scripted", retry: RetryConfig | None = None) -> None:
        self.script = script
        self.name = name
        self.retry: RetryConfig = retry if retry is not None else {"attempts": 1}
        self.requests: list[ModelRequest] = []

    def __repr__(self) -> str:
        return f"ScriptedProvider(name={self.name!r}, requests={len(self.requests)})"

    def stream(self, request: ModelRequest) -> AbstractAsyncContextManager[ResponseStream]:
        return ProviderStream(lambda: self._source(request), provider=self.name, retry=self.retry)

    @asynccontextmanager
    async def _source(self, request: ModelRequest) -> AsyncIterator[AsyncIterator[StreamEvent]]:
        self.requests.append(request)
        yield self._events(request)

    async def _events(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        saw_tool_call = False
        async for item in self.script(request):
            event = TextDelta(item) if isinstance(item, str) else item
            if isinstance(event, ToolCallEnd):
                saw_tool_call = True
            yield event
            if isinstance(event, Finished):
                return
        yield Finished("tool-calls" if saw_tool_call else "stop")
