"""The ``async with provider.stream(request)`` object every adapter returns.

An adapter supplies an *event source*: an async context manager that opens the vendor call (raising
mapped errors) and yields an async iterator of our events, closing the vendor's HTTP response on
exit. :class:`ProviderStream` opens it with retries, pulls events up to the first content event (so
a failure that arrives before any token is still retried), and closes everything on exit — also when
the task is cancelled, which is what stops the vendor from streaming into the void.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    AsyncExitStack,
    asynccontextmanager,
)
from types import TracebackType
from typing import Any

import structlog

from agent_worker.providers._accumulator import AccumulatingStream
from agent_worker.providers.base import ModelRequest, ResponseStream, StreamEvent, UsageUpdate
from agent_worker.providers.guard import check_allow_provider_requests
from agent_worker.providers.retries import RetryConfig, retry_open

__all__ = ["EventSource", "ProviderStream", "SdkProvider"]

log = structlog.get_logger("agent_worker.providers")

EventSource = Callable[[], AbstractAsyncContextManager[AsyncIterator[StreamEvent]]]


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
        stream = AccumulatingStream(events, head)
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


class SdkProvider(abc.ABC):
    """Plumbing shared by the adapters built on a vendor SDK client (``self.client``): open the call
    under the request guard and the adapter's error mapping, stream its events, close the response,
    and close the client on :meth:`aclose` if the adapter created it. The vendor parts are the
    abstract methods."""

    name: str
    model: str
    retry: RetryConfig | None
    client: Any
    _owns_client: bool

    def stream(self, request: ModelRequest) -> AbstractAsyncContextManager[ResponseStream]:
        return ProviderStream(lambda: self._source(request), provider=self.name, retry=self.retry)

    async def aclose(self) -> None:
        """Close the SDK client's connection pool (only a client this provider created)."""
        if self._owns_client:
            await self.client.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, base_url={str(self.client.base_url)!r})"

    @asynccontextmanager
    async def _source(self, request: ModelRequest) -> AsyncIterator[AsyncIterator[StreamEvent]]:
        check_allow_provider_requests(str(self.client.base_url), self.name)
        params = self._params(request)
        with self._map_errors():
            stream = await self._create(params)
        log.debug("provider_stream_opened", provider=self.name, model=params["model"])
        try:
            yield self._events(stream)
        finally:
            await stream.close()

    @abc.abstractmethod
    def _map_errors(self) -> AbstractContextManager[None]:
        """Vendor exceptions → :mod:`agent_worker.errors`."""

    @abc.abstractmethod
    def _params(self, request: ModelRequest) -> dict[str, Any]:
        """The vendor call's keyword arguments (``model`` among them)."""

    @abc.abstractmethod
    async def _create(self, params: dict[str, Any]) -> Any:
        """Open the vendor's streamed call; the result is async-iterable and has ``close()``."""

    @abc.abstractmethod
    def _events(self, stream: Any) -> AsyncIterator[StreamEvent]:
        """Translate the vendor's stream into our events."""
