"""Output dialects: how one assistant message is spoken in each codec.

:class:`~agent_worker.runtime.handler.MessageStream` is codec-agnostic: it hands every text delta,
reasoning delta, tool call, tool result, approval request and step boundary to the writer of the
session's codec. :class:`VercelWriter` emits UIMessageChunks as the AI SDK's ``toUIMessageStream``
does; :class:`ResponsesWriter` emits the Responses stream events an OpenAI ``/responses`` call
would (``output_item.added`` → part/arguments streams → ``.done``), plus the codec's own
``function_call_output`` and ``tool-approval-request``, and keeps the fold of what it sent so the
loop can hand the pass's own items back to a Responses provider. The prompt side —
:func:`prompt_for`: the branch as neutral model messages, the approved calls to run on a resume,
and (``openai-responses``) the branch as Responses input items — is here too. A third codec adds
one writer and one :data:`DIALECTS` entry.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent_worker.protocol.branch import approved_pending_tool_calls
from agent_worker.protocol.codecs import OPENAI_RESPONSES, VERCEL
from agent_worker.protocol.convert import to_model_messages as vercel_to_model_messages
from agent_worker.protocol.model import ModelMessage
from agent_worker.protocol.openai.convert import parse_arguments
from agent_worker.protocol.openai.convert import to_model_messages as openai_to_model_messages
from agent_worker.protocol.openai.reducer import (
    OpenAIProjection,
    approved_unexecuted_calls,
    to_responses_input,
)
from agent_worker.providers._common import tool_output_text
from agent_worker.providers.base import FinishReason

__all__ = ["DIALECTS", "Prompt", "ResponsesWriter", "VercelWriter", "Writer", "prompt_for", "writer_for"]

Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(slots=True)
class Prompt:
    """A run's branch, ready for the model."""

    history: list[ModelMessage]
    """Provider-neutral model messages (system prompt not included)."""
    approved: list[tuple[str, str, Any]]
    """On a continuation: ``(call_id, tool_name, input)`` of the calls the user approved."""
    items: list[dict[str, Any]] | None = None
    """The branch as Responses input items, when the codec stores them natively."""


def prompt_for(adapter_tag: str, conversation: Sequence[Mapping[str, Any]], continuation: bool) -> Prompt:
    if adapter_tag == OPENAI_RESPONSES:
        approved = [
            (str(c.get("call_id")), str(c.get("name")), parse_arguments(c.get("arguments")))
            for c in (approved_unexecuted_calls(conversation) if continuation else [])
        ]
        return Prompt(openai_to_model_messages(conversation), approved, to_responses_input(conversation))
    messages = [dict(m) for m in conversation]
    pending = approved_pending_tool_calls(messages) if continuation else []
    return Prompt(
        vercel_to_model_messages(messages), [(c.tool_call_id, c.tool_name, c.input) for c in pending]
    )


class Writer(Protocol):
    """One assistant message in one codec (what :class:`MessageStream` drives)."""

    async def begin(self) -> None: ...

    async def end(self, reason: FinishReason | str) -> None: ...

    async def start_step(self) -> None: ...

    async def finish_step(self) -> None: ...

    async def text(self, delta: str) -> None: ...

    async def reasoning(self, delta: str) -> None: ...

    async def tool_call_start(self, call_id: str, name: str) -> None: ...

    async def tool_call_delta(self, call_id: str, delta: str) -> None: ...

    async def tool_call(self, call_id: str, name: str, input: Any, arguments: str | None) -> None: ...

    async def tool_result(self, call_id: str, output: Any, is_error: bool) -> None: ...

    async def approval_request(self, call_id: str) -> None: ...

    async def flush(self) -> None:
        """Close an open text/reasoning stream (a model call's stream ended)."""
        ...

    def items(self) -> list[dict[str, Any]]:
        """The Responses items this message produced so far (``[]`` for other codecs)."""
        ...


# --- Vercel UIMessage chunks -------------------------------------------------------------------------


class VercelWriter:
    """UIMessageChunks: text and reasoning as ``*-start``/``*-delta``/``*-end`` streams, a tool call as
    a ``tool-input-*`` stream whose stream id is the tool call id, steps as ``start-step``/``finish-step``."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._open: tuple[str, str] | None = None  # (kind, id) of an open text/reasoning stream
        self._tool_names: dict[str, str] = {}  # streaming tool calls: call id → tool name
        self._ids = 0
        self._step_open = False

    async def flush(self) -> None:
        await self._close_open()

    async def _close_open(self) -> None:
        if self._open is not None:
            kind, sid = self._open
            self._open = None
            await self._send({"type": f"{kind}-end", "id": sid})

    async def begin(self) -> None:
        await self._send({"type": "start"})

    async def end(self, reason: FinishReason | str) -> None:
        await self._send({"type": "finish", "finishReason": reason})

    async def start_step(self) -> None:
        if not self._step_open:
            self._step_open = True
            await self._send({"type": "start-step"})

    async def finish_step(self) -> None:
        await self._close_open()
        if self._step_open:
            self._step_open = False
            await self._send({"type": "finish-step"})

    async def _ensure(self, kind: str) -> str:
        await self.start_step()
        if self._open is not None and self._open[0] == kind:
            return self._open[1]
        await self._close_open()
        self._ids += 1
        sid = f"{'txt' if kind == 'text' else 'rsn'}-{self._ids}"
        self._open = (kind, sid)
        await self._send({"type": f"{kind}-start", "id": sid})
        return sid

    async def text(self, delta: str) -> None:
        sid = await self._ensure("text")
        await self._send({"type": "text-delta", "id": sid, "delta": delta})

    async def reasoning(self, delta: str) -> None:
        sid = await self._ensure("reasoning")
        await self._send({"type": "reasoning-delta", "id": sid, "delta": delta})

    async def tool_call_start(self, call_id: str, name: str) -> None:
        await self.start_step()
        await self._close_open()
        self._tool_names[call_id] = name
        await self._send({"type": "tool-input-start", "toolCallId": call_id, "toolName": name})

    async def tool_call_delta(self, call_id: str, delta: str) -> None:
        if call_id in self._tool_names and delta:
            await self._send({"type": "tool-input-delta", "toolCallId": call_id, "inputTextDelta": delta})

    async def tool_call(self, call_id: str, name: str, input: Any, arguments: str | None) -> None:
        await self.start_step()
        await self._close_open()
        self._tool_names.pop(call_id, None)
        await self._send(
            {"type": "tool-input-available", "toolCallId": call_id, "toolName": name, "input": input}
        )

    async def tool_result(self, call_id: str, output: Any, is_error: bool) -> None:
        await self._close_open()
        if is_error:
            await self._send({"type": "tool-output-error", "toolCallId": call_id, "errorText": str(output)})
        else:
            await self._send({"type": "tool-output-available", "toolCallId": call_id, "output": output})

    async def approval_request(self, call_id: str) -> None:
        chunk = {"type": "tool-approval-request", "toolCallId": call_id, "approvalId": str(uuid.uuid4())}
        await self._send(chunk)

    def items(self) -> list[dict[str, Any]]:
        return []


# --- OpenAI Responses events -------------------------------------------------------------------------


@dataclass(slots=True)
class _OpenItem:
    kind: str  # "message" | "reasoning" | "function_call"
    item_id: str
    index: int
    text: str = ""  # streamed so far (a function call's arguments)
    name: str = ""


@dataclass(slots=True)
class ResponsesWriter:
    """Responses stream events. Item ids are ``rs_``/``msg_``/``fc_<n>`` per message; a step is one
    model response (``output_index`` restarts); there is no step or message framing on the wire
    (``response.created``/``.completed`` are events the codec drops)."""

    _send_raw: Send
    _fold: OpenAIProjection = field(default_factory=OpenAIProjection)
    _ids: int = 0
    _index: int = 0
    _open: _OpenItem | None = None
    _calls: dict[str, _OpenItem] = field(default_factory=dict)
    _done_calls: dict[str, tuple[str, str]] = field(default_factory=dict)  # call id → (name, arguments)

    async def _send(self, event: dict[str, Any]) -> None:
        await self._send_raw(event)
        self._fold.fold_output(event, "self")

    def items(self) -> list[dict[str, Any]]:
        return to_responses_input([m.message for m in self._fold.messages])

    def _next(self, kind: str, prefix: str, name: str = "") -> _OpenItem:
        self._ids += 1
        item = _OpenItem(kind, f"{prefix}_{self._ids}", self._index, name=name)
        self._index += 1
        return item

    async def begin(self) -> None:
        return None

    async def end(self, reason: FinishReason | str) -> None:
        return None

    async def start_step(self) -> None:
        return None

    async def finish_step(self) -> None:
        await self._close_open()
        self._index = 0  # the next model call is a new response

    async def flush(self) -> None:
        await self._close_open()

    async def _close_open(self) -> None:
        item, self._open = self._open, None
        if item is None:
            return
        where = {"item_id": item.item_id, "output_index": item.index}
        if item.kind == "message":
            await self._send(
                {"type": "response.output_text.done", **where, "content_index": 0, "text": item.text}
            )
            part = {"type": "output_text", "text": item.text, "annotations": []}
            done = {
                "id": item.item_id,
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [part],
            }
        else:
            await self._send(
                {
                    "type": "response.reasoning_summary_text.done",
                    **where,
                    "summary_index": 0,
                    "text": item.text,
                }
            )
            done = {
                "id": item.item_id,
                "type": "reasoning",
                "summary": [{"type": "summary_text", "text": item.text}],
            }
        await self._send({"type": "response.output_item.done", "output_index": item.index, "item": done})

    async def _ensure(self, kind: str) -> _OpenItem:
        if self._open is not None and self._open.kind == kind:
            return self._open
        await self._close_open()
        item = self._next(kind, "msg" if kind == "message" else "rs")
        self._open = item
        where = {"item_id": item.item_id, "output_index": item.index}
        if kind == "message":
            added: dict[str, Any] = {"id": item.item_id, "type": "message", "role": "assistant"}
            added |= {"status": "in_progress", "content": []}
            part = {"type": "response.content_part.added", **where, "content_index": 0}
            part["part"] = {"type": "output_text", "text": "", "annotations": []}
        else:
            added = {"id": item.item_id, "type": "reasoning", "summary": []}
            part = {"type": "response.reasoning_summary_part.added", **where, "summary_index": 0}
            part["part"] = {"type": "summary_text", "text": ""}
        await self._send({"type": "response.output_item.added", "output_index": item.index, "item": added})
        await self._send(part)
        return item

    async def text(self, delta: str) -> None:
        item = await self._ensure("message")
        item.text += delta
        where = {"item_id": item.item_id, "output_index": item.index}
        await self._send({"type": "response.output_text.delta", **where, "content_index": 0, "delta": delta})

    async def reasoning(self, delta: str) -> None:
        item = await self._ensure("reasoning")
        item.text += delta
        where = {"item_id": item.item_id, "output_index": item.index}
        await self._send(
            {"type": "response.reasoning_summary_text.delta", **where, "summary_index": 0, "delta": delta}
        )

    async def tool_call_start(self, call_id: str, name: str) -> None:
        await self._close_open()
        item = self._next("function_call", "fc", name)
        self._calls[call_id] = item
        added = {"id": item.item_id, "type": "function_call", "status": "in_progress", "call_id": call_id}
        added |= {"name": name, "arguments": ""}
        await self._send({"type": "response.output_item.added", "output_index": item.index, "item": added})

    async def tool_call_delta(self, call_id: str, delta: str) -> None:
        if call_id in self._calls and delta:
            await self._arguments(self._calls[call_id], delta)

    async def _arguments(self, item: _OpenItem, delta: str) -> None:
        item.text += delta
        event = {"type": "response.function_call_arguments.delta", "item_id": item.item_id}
        await self._send({**event, "output_index": item.index, "delta": delta})

    async def tool_call(self, call_id: str, name: str, input: Any, arguments: str | None) -> None:
        await self._close_open()
        if call_id not in self._calls:  # a call reported only when complete: open it first
            await self.tool_call_start(call_id, name)
        item = self._calls.pop(call_id)
        text = arguments if arguments is not None else json.dumps(input, separators=(",", ":"))
        # The wire rebuilds `.done` from the streamed text: stream what was not streamed yet, and
        # never contradict what clients already folded.
        if text.startswith(item.text):
            if text != item.text:
                await self._arguments(item, text[len(item.text) :])
        else:
            text = item.text
        self._done_calls[call_id] = (item.name, text)
        where = {"item_id": item.item_id, "output_index": item.index}
        await self._send(
            {"type": "response.function_call_arguments.done", **where, "arguments": text, "name": item.name}
        )
        done = {"id": item.item_id, "type": "function_call", "status": "completed", "call_id": call_id}
        done |= {"name": item.name, "arguments": text}
        await self._send({"type": "response.output_item.done", "output_index": item.index, "item": done})

    async def tool_result(self, call_id: str, output: Any, is_error: bool) -> None:
        await self._close_open()
        item = {
            "type": "function_call_output",
            "call_id": call_id,
            "output": tool_output_text(output, is_error),
        }
        await self._send({"type": "function_call_output", "item": item})

    async def approval_request(self, call_id: str) -> None:
        name, arguments = self._done_calls.get(call_id, ("", ""))
        event = {"type": "tool-approval-request", "call_id": call_id, "name": name, "arguments": arguments}
        await self._send(event)


DIALECTS: dict[str, Callable[[Send], Writer]] = {VERCEL: VercelWriter, OPENAI_RESPONSES: ResponsesWriter}


def writer_for(adapter_tag: str, send: Send) -> Writer:
    return DIALECTS[adapter_tag](send)
