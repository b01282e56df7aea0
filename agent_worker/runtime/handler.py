"""Bring your own loop: the low-level API a run handler uses to stream into a session.

A *run handler* is any ``async def handler(run: AgentRun) -> None``. The worker calls it once per
pass (the trigger, then once more for each batch of steering that arrived meanwhile) after it has
located the trigger and published ``ai-run-start``; it publishes ``ai-run-end`` (or
``ai-run-suspend``) itself, applies the cancel policy and the rate limits, and turns any exception
into an ``error`` end with its code. :class:`agent_worker.Agent` is one such handler; a team that
keeps its own loop (pydantic-ai, LangGraph, plain code) writes another::

    async def handler(run: AgentRun) -> None:
        prompt = run.history            # the rebuilt branch as provider-neutral model messages
                                        # (run.responses_input: as Responses items, openai-responses)
        async with run.message() as out:
            await out.stream(my_tokens(prompt))   # any async iterable of str or stream events

A cancel (an authorised ``ai-cancel``, shutdown) arrives as :class:`asyncio.CancelledError` at the
handler's current ``await``; ``run.cancel_requested`` tells the handler why, and clean-up belongs in
``finally``. Everything streamed so far is closed ``cancelled`` on the wire by the worker.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Protocol

from agent_worker.protocol.model import ModelMessage
from agent_worker.providers.base import (
    Finished,
    FinishReason,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    UsageUpdate,
)
from agent_worker.runtime.dialects import Writer, prompt_for, writer_for
from agent_worker.runtime.run import OutputMessage, Run

__all__ = [
    "AgentRun",
    "HandlerOutcome",
    "MessageStream",
    "RunHandler",
    "RunStats",
    "ToolResultEvent",
]

HandlerOutcome = Literal["complete", "suspended"]


class RunHandler(Protocol):
    """What the worker runs for each pass of a run (``Agent`` is one)."""

    def __call__(self, run: AgentRun, /) -> Awaitable[None]: ...


@dataclass(frozen=True, slots=True)
class ToolResultEvent:
    """A tool's result to stream (``tool-output-available`` / ``tool-output-error``)."""

    call_id: str
    output: Any
    is_error: bool = False
    kind: Literal["tool-result"] = "tool-result"


@dataclass(slots=True)
class RunStats:
    """Counters of one run, and the callbacks the worker uses for presence and token metrics."""

    model_calls: int = 0
    passes: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    tool_calls: int = 0
    on_usage: Callable[[int, int], None] | None = None
    on_status: Callable[[str], None] | None = None
    """Called with ``thinking``/``streaming``/``tool`` as the run moves between them (presence)."""
    _last_status: str = field(default="", repr=False)

    def status(self, value: str) -> None:
        if self.on_status is not None and value != self._last_status:
            self._last_status = value
            self.on_status(value)


def parse_tool_input(arguments: str) -> Any:
    """A tool call's JSON arguments, or the raw text when they are not JSON."""
    try:
        return json.loads(arguments) if arguments else {}
    except json.JSONDecodeError:
        return arguments


class AgentRun:
    """One pass of a run, as a handler sees it. Created by the worker; do not construct."""

    def __init__(self, run: Run, stats: RunStats) -> None:
        self._run = run
        self.stats = stats
        self.suspended = False
        self.codec = run.codec.adapter_tag
        """The session's codec (adapter tag): ``vercel-ai-sdk-ui-message`` or ``openai-responses``."""
        self.conversation: list[dict[str, Any]] = run.conversation()
        """The prompt branch as the codec's messages (what the client renders): UIMessage dicts, or
        OpenAIMessage dicts (``{role, items, toolCallStates?}``) on ``openai-responses`` sessions."""
        self._prompt = prompt_for(self.codec, self.conversation, run.is_continuation)
        self.history: list[ModelMessage] = self._prompt.history
        """The prompt branch as provider-neutral model messages (system prompt not included)."""
        self.responses_input: list[dict[str, Any]] | None = self._prompt.items
        """On ``openai-responses`` sessions: the branch as OpenAI Responses input items (what a
        Responses provider should get, see ``ModelRequest.responses_input``); else None."""

    @property
    def run_id(self) -> str:
        return self._run.run_id

    @property
    def session_name(self) -> str:
        return self._run.session.name

    @property
    def client_id(self) -> str | None:
        """The Ably-verified clientId of the user whose input started the run."""
        return self._run.owner_client_id

    @property
    def is_continuation(self) -> bool:
        """Whether this run resumes a suspended one (an approval answered)."""
        return self._run.is_continuation

    @property
    def cancel_requested(self) -> bool:
        """True once the run is being cancelled (the handler then sees ``CancelledError``)."""
        return self._run.cancel_requested

    def approved_tool_calls(self) -> list[tuple[str, str, Any]]:
        """On a continuation: ``(call_id, tool_name, input)`` of the calls the user approved."""
        return list(self._prompt.approved)

    def message(self) -> MessageStream:
        """Open one assistant message (``async with``): its ``start`` and ``finish`` chunks, one step."""
        return MessageStream(self)


class MessageStream:
    """Streams one assistant message: text, reasoning, tool calls and results, steps — in the
    session's codec (the writer of ``runtime/dialects.py``).

    Use as ``async with run.message() as out:``; leaving the block closes the open step and
    finishes the message (with the reason set by :meth:`finish`, default ``stop``). A step (one per
    model call) opens with the first text, reasoning or tool call, or explicitly with
    :meth:`start_step`; :meth:`step` ends the current one so the next output opens another.
    """

    def __init__(self, run: AgentRun) -> None:
        self._agent_run = run
        self._message: OutputMessage | None = None
        self._writer: Writer | None = None
        self.finish_reason: FinishReason | None = None
        self._finished_with: FinishReason | Literal["tool-calls"] = "stop"

    @property
    def _out(self) -> OutputMessage:
        if self._message is None:
            msg = "use the message stream inside 'async with run.message() as out:'"
            raise RuntimeError(msg)
        return self._message

    @property
    def _w(self) -> Writer:
        if self._writer is None:
            msg = "use the message stream inside 'async with run.message() as out:'"
            raise RuntimeError(msg)
        return self._writer

    async def __aenter__(self) -> MessageStream:
        self._message = self._agent_run._run.open_message()
        self._writer = writer_for(self._agent_run.codec, self._message.send)
        await self._writer.begin()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            return  # the worker's teardown closes every open stream as cancelled/failed
        await self.finish_step()
        await self._w.end(self._finished_with)
        await self._out.close()

    # --- the chunks --------------------------------------------------------------------------------

    async def send(self, chunk: dict[str, Any]) -> None:
        """Send one raw codec output event (a UIMessageChunk, or a Responses event on
        ``openai-responses`` sessions) for what has no method here."""
        await self._out.send(chunk)

    def responses_items(self) -> list[dict[str, Any]]:
        """The Responses items this message produced so far (``[]`` unless ``openai-responses``)."""
        return self._w.items()

    async def start_step(self) -> None:
        """Open a step (``start-step``) unless one is open."""
        await self._w.start_step()

    async def finish_step(self) -> None:
        """Close the open step (``finish-step``), if any."""
        await self._w.finish_step()

    async def step(self) -> None:
        """End the current step; the next output opens another (one step per model call)."""
        await self.finish_step()

    async def text(self, delta: str) -> None:
        """Append text to the message (a text part opens on the first delta)."""
        if delta:
            self._agent_run.stats.status("streaming")
            await self._w.text(delta)

    async def reasoning(self, delta: str) -> None:
        if delta:
            await self._w.reasoning(delta)

    async def tool_call(self, call_id: str, name: str, input: Any, *, arguments: str | None = None) -> None:
        """A complete tool call (``tool-input-available``), streamed or not before; ``arguments`` is
        its JSON text when known (else ``input`` is serialised)."""
        await self._w.tool_call(call_id, name, input, arguments)

    async def tool_result(self, call_id: str, output: Any, *, is_error: bool = False) -> None:
        """The result of a server-side tool call (an error's ``output`` is its message)."""
        await self._w.tool_result(call_id, output, is_error)

    async def request_approval(self, call_id: str) -> None:
        """Ask the user to approve a tool call; the run suspends when the message ends."""
        await self._w.approval_request(call_id)
        self.suspend()

    def suspend(self) -> None:
        """End the message with ``finish{tool-calls}`` and suspend the run (client tools, approvals):
        the client answers with a continuation or a fork."""
        self._finished_with = "tool-calls"
        self._agent_run.suspended = True

    def finish(self, reason: FinishReason) -> None:
        """The ``finishReason`` of the message's ``finish`` chunk (default ``stop``)."""
        if self._finished_with != "tool-calls":
            self._finished_with = reason

    # --- streaming from any async source ---------------------------------------------------------

    async def feed(self, event: str | StreamEvent | ToolResultEvent) -> None:
        """Send one item: ``str`` is text, else a provider stream event or a tool result."""
        stats = self._agent_run.stats
        match event:
            case str():
                await self.text(event)
            case TextDelta(text=text):
                await self.text(text)
            case ReasoningDelta(text=text):
                await self.reasoning(text)
            case ToolCallStart(call_id=call_id, name=name):
                await self._w.tool_call_start(call_id, name)
            case ToolCallDelta(call_id=call_id, arguments_delta=delta):
                await self._w.tool_call_delta(call_id, delta)
            case ToolCallEnd(call_id=call_id, name=name, arguments=arguments):
                await self.tool_call(call_id, name, parse_tool_input(arguments), arguments=arguments)
            case ToolResultEvent(call_id=call_id, output=output, is_error=is_error):
                await self.tool_result(call_id, output, is_error=is_error)
            case UsageUpdate(input_tokens=inp, output_tokens=out):
                if stats.on_usage is not None:
                    stats.on_usage(inp or 0, out or 0)
                stats.input_tokens += inp or 0
                stats.output_tokens += out or 0
            case Finished(reason=reason):
                self.finish_reason = reason
            case _:
                pass

    async def stream(self, source: AsyncIterable[str | StreamEvent | ToolResultEvent]) -> None:
        """Send everything an async source yields (an async generator of tokens, a provider stream)."""
        async for event in source:
            await self.feed(event)
        await self._w.flush()
