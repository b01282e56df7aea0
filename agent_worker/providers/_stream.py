"""The ``async with provider.stream(request)`` object every adapter returns.

An adapter supplies an *event source*: an async context manager that opens the vendor call (raising
mapped errors) and yields an async iterator of our events, closing the vendor's HTTP response on
exit. :class:`ProviderStream` opens it with retries, pulls events up to the first content event (so
a failure that arrives before any token is still retried), and closes everything on exit — also when
the task is cancelled, which is what stops the vendor from streaming into the void.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from types import TracebackType

from agent_worker.providers._accumulator import AccumulatingStream
from agent_worker.providers.base import StreamEvent, UsageUpdate
from agent_worker.providers.retries import RetryConfig, retry_open

__all__ = ["EventSource", "ProviderStream", "prepend"]

EventSource = Callable[[], AbstractAsyncContextManager[AsyncIterator[StreamEvent]]]


async def prepend(head: list[StreamEvent], rest: AsyncIterator[StreamEvent]) -> AsyncIterator[StreamEvent]:
    for event in head:
        yield event
    async for event in rest:
        yield event


class ProviderStream:
    """Async context manager returning an :class:`AccumulatingStream`; single use."""

    def __init__(self, source: EventSource, *, provider: str, retry: RetryConfig | None = None) -> None:
        self._source = source
        self._provider = provider
        self._retry = retry
        self._stack: AsyncExitStack | None = None

    async def _open_once(self) -> tuple[AsyncExitStack, AsyncIterator[StreamEvent], list[StreamEvent]]:
        stack = AsyncExitStack()
        try:
            events = await stack.enter_async_context(self._source())
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                stack.push_async_callback(aclose)
            # Usage may precede content (Anthropic's message_start): keep pulling so an error that
            # arrives before the first token still counts as "failed to open" and is retried.
            head: list[StreamEvent] = []
            async for event in events:
                head.append(event)
                if not isinstance(event, UsageUpdate):
                    break
        except BaseException:
            await stack.aclose()
            raise
        return stack, events, head

    async def __aenter__(self) -> AccumulatingStream:
        if self._stack is not None:
            msg = "a provider stream can be opened only once; call provider.stream(request) again"
            raise RuntimeError(msg)
        stack, events, head = await retry_open(self._open_once, self._retry, provider=self._provider)
        self._stack = stack
        stream = AccumulatingStream(prepend(head, events))
        stack.push_async_callback(stream.aclose)
        return stream

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._stack is not None:
            await self._stack.aclose()
