"""Fold stream events into one :class:`ModelResponse` — the only place deltas are assembled.

Adapters translate vendor chunks into events and never accumulate; every :class:`ResponseStream`
in this package is an :class:`AccumulatingStream` over an adapter's event iterator.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import assert_never

from agent_worker.providers.base import (
    Finished,
    ModelResponse,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    UsageUpdate,
)

__all__ = ["AccumulatingStream", "Accumulator"]


@dataclass(slots=True)
class _PendingCall:
    name: str
    arguments: list[str] = field(default_factory=list)


class Accumulator:
    """Feed events in order; ``response`` is the result assembled so far.

    Text and reasoning deltas are kept as parts and joined when ``response`` is read: ``+=`` on an
    attribute copies the whole text per delta, quadratic in a long reply."""

    __slots__ = ("_pending", "_reasoning", "_response", "_text")

    def __init__(self) -> None:
        self._response = ModelResponse()
        self._pending: dict[str, _PendingCall] = {}
        self._text: list[str] = []
        self._reasoning: list[str] = []

    @property
    def response(self) -> ModelResponse:
        r = self._response
        if self._text:
            r.text = "".join(self._text)
            self._text = [r.text]
        if self._reasoning:
            r.reasoning = "".join(self._reasoning)
            self._reasoning = [r.reasoning]
        return r

    def feed(self, event: StreamEvent) -> None:
        r = self._response
        match event:
            case TextDelta(text=text):
                self._text.append(text)
            case ReasoningDelta(text=text):
                self._reasoning.append(text)
            case ToolCallStart(call_id=call_id, name=name):
                self._pending[call_id] = _PendingCall(name)
            case ToolCallDelta(call_id=call_id, arguments_delta=delta):
                # A delta without a start still counts: some servers skip the start for short calls.
                self._pending.setdefault(call_id, _PendingCall("")).arguments.append(delta)
            case ToolCallEnd(call_id=call_id, name=name, arguments=arguments):
                self._pending.pop(call_id, None)
                r.tool_calls.append(ToolCall(call_id, name, arguments))
            case UsageUpdate(input_tokens=inp, output_tokens=out):
                # Vendors report usage cumulatively (and sometimes twice); the last non-None wins.
                if inp is not None:
                    r.input_tokens = inp
                if out is not None:
                    r.output_tokens = out
            case Finished(reason=reason):
                r.finish_reason = reason
            case _:
                assert_never(event)

    @property
    def unfinished_calls(self) -> dict[str, str]:
        """Calls started but not ended (name by id) — what a broken stream left behind."""
        return {cid: p.name for cid, p in self._pending.items()}


class AccumulatingStream:
    """A :class:`~agent_worker.providers.base.ResponseStream` over an event iterator.

    ``head`` are events already pulled from ``events`` (the retry logic pulls until the first
    content event to know the stream really started); they are yielded before the rest (here, not
    by a wrapping generator: one async generator layer less per token).
    """

    def __init__(self, events: AsyncIterator[StreamEvent], head: Sequence[StreamEvent] = ()) -> None:
        self._events = events
        self._head = head
        self._acc = Accumulator()
        self._gen: AsyncGenerator[StreamEvent, None] | None = None

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        if self._gen is not None:
            msg = "a response stream can be iterated only once"
            raise RuntimeError(msg)
        self._gen = self._iterate()
        return self._gen

    async def aclose(self) -> None:
        """Close the iteration and the adapter's iterator (idempotent)."""
        if self._gen is not None:
            await self._gen.aclose()
        aclose = getattr(self._events, "aclose", None)
        if aclose is not None:
            await aclose()

    async def _iterate(self) -> AsyncGenerator[StreamEvent, None]:
        head, self._head = self._head, ()
        for event in head:
            self._acc.feed(event)
            yield event
        async for event in self._events:
            self._acc.feed(event)
            yield event

    def get(self) -> ModelResponse:
        return self._acc.response


class ToolCallAssembler:
    """Emits start/delta/end events for tool calls streamed as fragments under a vendor key.

    Vendors stream a call's JSON arguments in pieces keyed by a position (OpenAI's ``index``,
    Anthropic's content block ``index``, a Responses ``item_id``); the end event must carry the
    whole text, so the pieces are joined here rather than in each adapter.
    """

    def __init__(self) -> None:
        self._calls: dict[object, tuple[str, str, list[str]]] = {}
        self._count = 0

    def __contains__(self, key: object) -> bool:
        return key in self._calls

    def start(self, key: object, call_id: str | None, name: str) -> ToolCallStart:
        self._count += 1
        cid = call_id or f"call_{self._count}"
        self._calls[key] = (cid, name, [])
        return ToolCallStart(cid, name)

    def delta(self, key: object, text: str) -> ToolCallDelta:
        cid, _name, parts = self._calls[key]
        parts.append(text)
        return ToolCallDelta(cid, text)

    def end(self, key: object, arguments: str | None = None) -> ToolCallEnd:
        """Finish one call; ``arguments`` (when the vendor sends the final text) wins over the join."""
        cid, name, parts = self._calls.pop(key)
        text = arguments if arguments is not None else "".join(parts)
        return ToolCallEnd(cid, name, text or "{}")

    def end_all(self) -> list[ToolCallEnd]:
        return [self.end(key) for key in list(self._calls)]
