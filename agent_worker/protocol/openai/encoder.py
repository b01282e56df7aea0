"""OpenAI Responses codec — encoding (src/openai/codec/descriptors.ts over src/core/codec/encoder.ts).

:class:`ResponsesEncoder` turns Responses stream events (``response.*`` dicts as the OpenAI SDK
streams them, plus the codec's own ``function_call_output`` and ``tool-approval-request``) into
:data:`~agent_worker.protocol.wire.WireOp` values, with the same runtime contract as the Vercel
encoder. The descriptor table is a total inventory: framing events are dropped, anything else
undescribed — the hosted tools and modalities upstream does not support — raises
:class:`~agent_worker.errors.CodecError`, and so does an output item of an unmodelled type.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent_worker.errors import CodecError
from agent_worker.protocol.codec_core import EncoderCore, input_message
from agent_worker.protocol.headers import H_ROLE, KIND, PART_TYPE, write_json, write_str
from agent_worker.protocol.wire import OutboundMessage, PublishOp, WireOp

__all__ = [
    "DROPPED_EVENTS",
    "MODELLED_ITEM_TYPES",
    "ResponsesEncoder",
    "encode_regenerate",
    "encode_tool_approval_response",
    "encode_tool_result",
    "encode_tool_result_error",
    "encode_user_message",
]

MODELLED_ITEM_TYPES = ("message", "reasoning", "function_call")
"""Output item types the codec folds (``isModelledOutputItem``); every other one is refused."""

DROPPED_EVENTS = frozenset(
    {
        "response.completed",
        "response.incomplete",
        "response.failed",
        "response.created",
        "response.in_progress",
        "response.queued",
        "error",
        "response.content_part.done",
        "response.reasoning_summary_part.done",
    }
)
"""Framing events the codec keeps off the wire (``drop``): they encode to nothing."""

# Header fields (fields.ts): (key, "str" | "json").
_Field = tuple[str, str]
_ITEM_ID: _Field = ("item_id", "str")
_OUTPUT_INDEX: _Field = ("output_index", "json")
_CONTENT_INDEX: _Field = ("content_index", "json")
_SUMMARY_INDEX: _Field = ("summary_index", "json")
_PART: _Field = ("part", "json")
_ITEM: _Field = ("item", "json")
_CONTENT_FIELDS = (_ITEM_ID, _OUTPUT_INDEX, _CONTENT_INDEX, _PART)


def write_fields(fields: Sequence[_Field], kind: str, source: Mapping[str, Any]) -> dict[str, str]:
    """``writeFields``: ``{kind, ...declared fields present with the right type}``."""
    rec: dict[str, str] = {KIND: kind}
    for key, ftype in fields:
        if ftype == "str":
            write_str(rec, key, source.get(key))
        else:
            write_json(rec, key, source.get(key))
    return rec


@dataclass(frozen=True, slots=True)
class StreamGroup:
    """One streamed output group of the descriptor table."""

    kind: str
    start: str
    start_part: str | None  # start.match on ``part.type`` (None: any / item-matched)
    delta: str
    delta_field: str
    end: str
    fields: tuple[_Field, ...]


GROUPS = (
    StreamGroup(
        "output_text",
        "response.content_part.added",
        "output_text",
        "response.output_text.delta",
        "delta",
        "response.output_text.done",
        _CONTENT_FIELDS,
    ),
    StreamGroup(
        "refusal",
        "response.content_part.added",
        "refusal",
        "response.refusal.delta",
        "delta",
        "response.refusal.done",
        _CONTENT_FIELDS,
    ),
    StreamGroup(
        "reasoning_text",
        "response.content_part.added",
        "reasoning_text",
        "response.reasoning_text.delta",
        "delta",
        "response.reasoning_text.done",
        _CONTENT_FIELDS,
    ),
    StreamGroup(
        "reasoning_summary_text",
        "response.reasoning_summary_part.added",
        None,
        "response.reasoning_summary_text.delta",
        "delta",
        "response.reasoning_summary_text.done",
        (_ITEM_ID, _OUTPUT_INDEX, _SUMMARY_INDEX, _PART),
    ),
    StreamGroup(
        "function_call_arguments",
        "response.output_item.added",
        None,
        "response.function_call_arguments.delta",
        "delta",
        "response.function_call_arguments.done",
        (_ITEM, _OUTPUT_INDEX),
    ),
)
GROUP_BY_KIND = {g.kind: g for g in GROUPS}
_BY_DELTA = {g.delta: g for g in GROUPS}
_BY_END = {g.end: g for g in GROUPS}


def _start_group(chunk: Mapping[str, Any]) -> StreamGroup | None:
    """The group a start chunk opens (``start.match``), or None when every group declines."""
    ctype = chunk.get("type")
    if ctype == "response.content_part.added":
        part = chunk.get("part")
        ptype = part.get("type") if isinstance(part, Mapping) else None
        return next((g for g in GROUPS if g.start == ctype and g.start_part == ptype), None)
    if ctype == "response.reasoning_summary_part.added":
        return GROUP_BY_KIND["reasoning_summary_text"]
    if ctype == "response.output_item.added":
        item = chunk.get("item")
        if isinstance(item, Mapping) and item.get("type") == "function_call":
            return GROUP_BY_KIND["function_call_arguments"]
    return None


def _num(value: Any) -> str:
    """JS template-literal ``String(n)`` for an index (ints print without a fraction)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    return "undefined" if value is None else str(value)


def _stream_id(group: StreamGroup, chunk: Mapping[str, Any]) -> str:
    if group.kind == "function_call_arguments":
        if chunk.get("type") != "response.output_item.added":
            return str(chunk.get("item_id"))
        item = chunk.get("item")
        sid = item.get("id") if isinstance(item, Mapping) else None
        if sid is None:
            msg = "unable to stream function-call arguments; item has no id"
            raise CodecError(msg, field="item.id", payload=chunk)
        return str(sid)
    item_id = chunk.get("item_id")
    if group.kind == "reasoning_summary_text":
        return f"{item_id}:summary:{_num(chunk.get('summary_index'))}"
    return f"{item_id}:{_num(chunk.get('content_index'))}"


def _unsupported_item(item_type: Any) -> CodecError:
    msg = f"unable to publish; unsupported output item type {item_type!r}"
    return CodecError(msg, field="item.type")


def _modelled_item(item: Any) -> Any:
    """``assertModelledOutputItem``: the encode-boundary guard for hosted-tool items."""
    item_type = item.get("type") if isinstance(item, Mapping) else None
    if item_type not in MODELLED_ITEM_TYPES:
        raise _unsupported_item(item_type)
    return item


def _wire_content(content: Any) -> list[dict[str, Any]] | None:
    """``toWireContent``: per-part logprobs, index-aligned, or None when no part carries any."""
    if not isinstance(content, list):
        return None

    def has_logprobs(p: Any) -> bool:
        return (
            isinstance(p, Mapping)
            and p.get("type") == "output_text"
            and isinstance(p.get("logprobs"), list)
            and len(p["logprobs"]) > 0
        )

    if not any(has_logprobs(p) for p in content):
        return None
    return [
        {"type": "output_text", "logprobs": p["logprobs"]}
        if has_logprobs(p)
        else {"type": p.get("type") if isinstance(p, Mapping) else None}
        for p in content
    ]


def _present(item: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    return {k: item[k] for k in keys if k in item}


def wire_done_item(item: Any) -> dict[str, Any]:
    """``toWireItem``: the lean ``output_item.done`` payload (content already went as deltas)."""
    item_type = item.get("type") if isinstance(item, Mapping) else None
    if not isinstance(item, Mapping) or item_type not in MODELLED_ITEM_TYPES:
        raise _unsupported_item(item_type)
    wire: dict[str, Any] = {"type": item_type, **_present(item, "id", "status")}
    if item_type == "message":
        content = _wire_content(item.get("content"))
        if content is not None:
            wire["content"] = content
    elif item_type == "reasoning" and isinstance(item.get("encrypted_content"), str):
        wire["encrypted_content"] = item["encrypted_content"]
    return wire


@dataclass(slots=True)
class ResponsesEncoder(EncoderCore):
    """Stateful, pure encoder for one assistant message (one ``pipe``/``send``) of Responses events."""

    def __post_init__(self) -> None:
        self.default_headers = dict(self.default_headers)

    def encode(self, event: Mapping[str, Any]) -> list[WireOp]:
        """Encode one event. Raises :class:`CodecError` for hosted-tool / unsupported events."""
        etype = event.get("type")
        if not isinstance(etype, str):
            msg = "event has no string 'type'"
            raise CodecError(msg, field="type", payload=event)
        if (group := _start_group(event)) is not None:
            return [self.open_stream(_stream_id(group, event), write_fields(group.fields, group.kind, event))]
        if (group := _BY_DELTA.get(etype)) is not None:
            sid = _stream_id(group, event)
            self.require_stream(sid, event, "append to")
            delta = event.get(group.delta_field)
            return [self.append_stream(sid, delta if isinstance(delta, str) else "", event)]
        if (group := _BY_END.get(etype)) is not None:
            closing = write_fields(group.fields, group.kind, event)
            return [self.close_stream(_stream_id(group, event), closing, event)]
        return self._discrete_event(etype, event)

    def _discrete_event(self, etype: str, event: Mapping[str, Any]) -> list[WireOp]:
        codec = {KIND: etype}
        match etype:
            case "response.output_item.added":
                data: Any = {"item": _modelled_item(event.get("item"))}
            case "response.output_item.done":
                data = {"item": wire_done_item(event.get("item"))}
            case "function_call_output":
                data = {"item": event.get("item")}
            case "tool-approval-request":
                write_str(codec, "call_id", event.get("call_id"))
                write_str(codec, "name", event.get("name"))
                data = event.get("arguments")
            case _ if etype in DROPPED_EVENTS:
                return []
            case _:
                msg = f"unable to publish; unsupported event type {etype!r}"
                raise CodecError(msg, field="type", payload=event)
        return [PublishOp(self.discrete(data, codec))]


# --- client inputs (the ``inputs`` descriptor table) ------------------------------------------------


def encode_user_message(
    message: Mapping[str, Any], transport_headers: Mapping[str, str]
) -> list[OutboundMessage]:
    """The atomic batch for a ``user-message``: one wire per ``input_text`` part of its single
    ``message`` item (``{role, items: [{type: "message", role: "user", content: [...]}]}``).

    Publish the returned list with ONE ``channel.publish([...])``.
    """
    items = message.get("items")
    item = items[0] if isinstance(items, list) and len(items) == 1 else None
    if not isinstance(item, Mapping) or item.get("type") != "message":
        count = len(items) if isinstance(items, list) else 0
        msg = f"unable to publish; a user message must be exactly one message item, got {count} item(s)"
        raise CodecError(msg, field="items")
    parts: list[Mapping[str, Any]] = []
    for part in item.get("content") or []:
        ptype = part.get("type") if isinstance(part, Mapping) else None
        if ptype != "input_text":
            msg = f"unable to publish; unsupported input content part type {ptype!r}"
            raise CodecError(msg, field="content.type")
        parts.append(part)
    if not parts:
        parts = [{"type": "input_text", "text": ""}]
    transport = dict(transport_headers)
    role = message.get("role")
    if isinstance(role, str):
        transport[H_ROLE] = role
    return [
        input_message(
            transport, {KIND: "user-message", PART_TYPE: "input_text"}, part.get("text"), discrete=True
        )
        for part in parts
    ]


def user_text_message(text: str) -> dict[str, Any]:
    """The ``OpenAIMessage`` a plain text prompt is."""
    return {
        "role": "user",
        "items": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}],
    }


def encode_regenerate(transport_headers: Mapping[str, str]) -> OutboundMessage:
    """The wire-only ``regenerate`` input (headers carry ``parent`` and ``msg-regenerate``)."""
    return input_message(transport_headers, {KIND: "regenerate"}, "")


def encode_tool_result(call_id: str, output: Any, transport_headers: Mapping[str, str]) -> OutboundMessage:
    """A client ``tool-result`` (codec-message-id = the assistant message holding the call)."""
    return input_message(transport_headers, {KIND: "tool-result", "call_id": call_id}, {"output": output})


def encode_tool_result_error(
    call_id: str, message: str, transport_headers: Mapping[str, str]
) -> OutboundMessage:
    """A client ``tool-result-error`` (data ``{message}``)."""
    codec = {KIND: "tool-result-error", "call_id": call_id}
    return input_message(transport_headers, codec, {"message": message})


def encode_tool_approval_response(
    call_id: str, approved: bool, transport_headers: Mapping[str, str], *, reason: str | None = None
) -> OutboundMessage:
    """A ``tool-approval-response`` (headers carry the suspended ``run-id``: a continuation)."""
    codec = {KIND: "tool-approval-response", "call_id": call_id, "approved": "true" if approved else "false"}
    write_str(codec, "reason", reason)
    return input_message(transport_headers, codec, "")
