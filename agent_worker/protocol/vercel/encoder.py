"""Vercel UIMessage codec — encoding (src/vercel/codec/outputs.ts, inputs.ts; src/core/codec/encoder.ts).

Pure and synchronous: :class:`UIMessageEncoder` turns AI SDK ``UIMessageChunk`` dicts into
:data:`~agent_worker.protocol.wire.WireOp` values; the runtime executes them (publish → record the
serial under ``stream_key``; append pipelined; flush after a closing append; on append failure publish
:meth:`UIMessageEncoder.recovery_update`). The ``encode_*`` functions build client ``ai-input``
messages.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent_worker.errors import CodecError
from agent_worker.protocol.codec_core import EncoderCore, input_message
from agent_worker.protocol.headers import (
    H_ROLE,
    KIND,
    PART_TYPE,
    write_bool,
    write_json,
    write_str,
)
from agent_worker.protocol.wire import AppendOp, OutboundMessage, PublishOp, WireOp

__all__ = [
    "UIMessageEncoder",
    "encode_regenerate",
    "encode_tool_approval_response",
    "encode_tool_result",
    "encode_tool_result_error",
    "encode_user_message",
]

# Field writers: (key, kind) with kind ∈ str | bool | json, mirroring src/vercel/codec/fields.ts.
_Field = tuple[str, str]
_STR, _BOOL, _JSON = "str", "bool", "json"
_TEXT_FIELDS: tuple[_Field, ...] = (("id", _STR), ("providerMetadata", _JSON))
_TOOL_FIELDS: tuple[_Field, ...] = (
    ("toolCallId", _STR),
    ("toolName", _STR),
    ("dynamic", _BOOL),
    ("title", _STR),
    ("providerExecuted", _BOOL),
    ("providerMetadata", _JSON),
)


def _write_fields(
    fields: Sequence[_Field], kind: str, source: Mapping[str, Any], keys: Sequence[str] | None = None
) -> dict[str, str]:
    """``writeFields``: ``{kind, ...declared fields present with the right type}``."""
    rec: dict[str, str] = {KIND: kind}
    for key, ftype in fields:
        if keys is not None and key not in keys:
            continue
        value = source.get(key)
        if ftype == _STR:
            write_str(rec, key, value)
        elif ftype == _BOOL:
            write_bool(rec, key, value)
        else:
            write_json(rec, key, value)
    return rec


@dataclass(frozen=True, slots=True)
class _StreamGroup:
    kind: str
    start: str
    delta: str
    delta_field: str
    end: str
    id_field: str
    fields: tuple[_Field, ...]


_GROUPS = (
    _StreamGroup("text", "text-start", "text-delta", "delta", "text-end", "id", _TEXT_FIELDS),
    _StreamGroup(
        "reasoning", "reasoning-start", "reasoning-delta", "delta", "reasoning-end", "id", _TEXT_FIELDS
    ),
    _StreamGroup(
        "tool-input",
        "tool-input-start",
        "tool-input-delta",
        "inputTextDelta",
        "tool-input-available",
        "toolCallId",
        _TOOL_FIELDS,
    ),
)
_BY_START = {g.start: g for g in _GROUPS}
_BY_DELTA = {g.delta: g for g in _GROUPS}
_BY_END = {g.end: g for g in _GROUPS}


def _omit_missing(**items: tuple[Mapping[str, Any], str]) -> dict[str, Any]:
    """Build a JSON object the way JS does for ``{a: c.a, ...}``: keys absent from the source vanish."""
    out: dict[str, Any] = {}
    for name, (src, key) in items.items():
        if key in src:
            out[name] = src[key]
    return out


@dataclass(frozen=True, slots=True)
class _Discrete:
    fields: tuple[_Field, ...] = ()
    data: Callable[[Mapping[str, Any]], Any] | None = None


_DISCRETE: dict[str, _Discrete] = {
    "start": _Discrete((("messageId", _STR), ("messageMetadata", _JSON))),
    "start-step": _Discrete(),
    "finish-step": _Discrete(),
    "finish": _Discrete((("finishReason", _STR), ("messageMetadata", _JSON))),
    "message-metadata": _Discrete((("messageMetadata", _JSON),)),
    "error": _Discrete(data=lambda c: c.get("errorText")),
    "abort": _Discrete(data=lambda c: c.get("reason") if c.get("reason") is not None else ""),
    "file": _Discrete((("mediaType", _STR), ("providerMetadata", _JSON)), data=lambda c: c.get("url")),
    "source-url": _Discrete(
        (("sourceId", _STR), ("title", _STR), ("providerMetadata", _JSON)), data=lambda c: c.get("url")
    ),
    "source-document": _Discrete(
        (
            ("sourceId", _STR),
            ("mediaType", _STR),
            ("title", _STR),
            ("filename", _STR),
            ("providerMetadata", _JSON),
        )
    ),
    "tool-input-error": _Discrete(
        _TOOL_FIELDS, data=lambda c: _omit_missing(errorText=(c, "errorText"), input=(c, "input"))
    ),
    "tool-output-available": _Discrete(
        (("toolCallId", _STR), ("dynamic", _BOOL), ("providerExecuted", _BOOL), ("preliminary", _BOOL)),
        data=lambda c: _omit_missing(output=(c, "output")),
    ),
    "tool-output-error": _Discrete(
        (("toolCallId", _STR), ("dynamic", _BOOL), ("providerExecuted", _BOOL)),
        data=lambda c: _omit_missing(errorText=(c, "errorText")),
    ),
    "tool-approval-request": _Discrete((("toolCallId", _STR), ("approvalId", _STR))),
    "tool-output-denied": _Discrete((("toolCallId", _STR),)),
}
_DATA_FIELDS: tuple[_Field, ...] = (("id", _STR), ("transient", _BOOL))


@dataclass(slots=True)
class UIMessageEncoder(EncoderCore):
    """Stateful, pure encoder for one assistant message (one ``pipe``/``send``).

    ``default_headers`` are the per-message transport defaults (:func:`build_output_headers`);
    ``message_id`` is the fallback ``messageId`` of a ``start`` chunk (defaults to the
    ``codec-message-id`` default header). Streams are tracked by stream id (text id / toolCallId), as
    in the JS encoder core; every stream gets a globally unique ``stream_key``.
    """

    message_id: str | None = None

    def __post_init__(self) -> None:
        self.default_headers = dict(self.default_headers)
        if self.message_id is None:
            self.message_id = self.default_headers.get("codec-message-id")

    def encode(self, chunk: Mapping[str, Any]) -> list[WireOp]:
        """Encode one ``UIMessageChunk`` (§8.1). Raises :class:`CodecError` for unsupported types."""
        ctype = chunk.get("type")
        if not isinstance(ctype, str):
            msg = "chunk has no string 'type'"
            raise CodecError(msg, field="type", payload=chunk)
        if (group := _BY_START.get(ctype)) is not None:
            return [
                self.open_stream(
                    self._stream_id(group, chunk), _write_fields(group.fields, group.kind, chunk)
                )
            ]
        if (group := _BY_DELTA.get(ctype)) is not None:
            return [self._delta(group, chunk)]
        if (group := _BY_END.get(ctype)) is not None:
            return [self._end(group, chunk)]
        if ctype in _DISCRETE:
            spec = _DISCRETE[ctype]
            source: Mapping[str, Any] = chunk
            if ctype == "start" and chunk.get("messageId") is None:
                source = {**chunk, "messageId": self.message_id}
            codec = _write_fields(spec.fields, ctype, source)
            data = spec.data(chunk) if spec.data is not None else ""
            return [PublishOp(self.discrete(data, codec))]
        if ctype.startswith("data-"):
            codec = _write_fields(_DATA_FIELDS, ctype, chunk)
            ephemeral = chunk.get("transient") is True
            return [PublishOp(self.discrete(chunk.get("data"), codec, ephemeral=ephemeral))]
        msg = f"unable to publish; unsupported event type {ctype!r}"
        raise CodecError(msg, field="type", payload=chunk)

    def _stream_id(self, group: _StreamGroup, chunk: Mapping[str, Any]) -> str:
        sid = chunk.get(group.id_field)
        if not isinstance(sid, str):
            msg = f"{chunk.get('type')} needs a string {group.id_field!r}"
            raise CodecError(msg, field=group.id_field, payload=chunk)
        return sid

    def _delta(self, group: _StreamGroup, chunk: Mapping[str, Any]) -> AppendOp:
        sid = self._stream_id(group, chunk)
        self.require_stream(sid, chunk, "append to")
        delta = chunk.get(group.delta_field)
        if not isinstance(delta, str):
            msg = f"{group.delta} needs a string {group.delta_field!r}"
            raise CodecError(msg, field=group.delta_field, payload=chunk)
        return self.append_stream(sid, delta, chunk)

    def _end(self, group: _StreamGroup, chunk: Mapping[str, Any]) -> WireOp:
        sid = self._stream_id(group, chunk)
        if group.kind == "tool-input":
            if not self.has_stream(sid):
                # closeStream raises InvalidArgument → outputs.ts falls back to a discrete publish.
                codec = _write_fields(group.fields, group.kind, chunk)
                return PublishOp(self.discrete(chunk.get("input"), codec))
            closing_codec = _write_fields(
                group.fields, group.kind, chunk, ("toolCallId", "toolName", "providerMetadata")
            )
        else:
            closing_codec = _write_fields(group.fields, group.kind, chunk)
        return self.close_stream(sid, closing_codec, chunk)


# --- client inputs (src/vercel/codec/inputs.ts) -----------------------------------------------------


def _is_encodable_part(part: Mapping[str, Any]) -> bool:
    ptype = part.get("type")
    return isinstance(ptype, str) and (ptype in ("text", "file") or ptype.startswith("data-"))


def encode_user_message(
    message: Mapping[str, Any], transport_headers: Mapping[str, str]
) -> list[OutboundMessage]:
    """The atomic batch for a ``user-message`` input: one wire per text/file/data-* part (§8.2).

    ``transport_headers`` come from :func:`build_input_headers`; ``role`` is overwritten with the
    message's role. Publish the returned list with ONE ``channel.publish([...])``.
    """
    raw_parts = message.get("parts")
    parts = [p for p in (raw_parts or []) if isinstance(p, Mapping) and _is_encodable_part(p)]
    if not parts:
        parts = [{"type": "text", "text": ""}]
    transport = dict(transport_headers)
    role = message.get("role")
    if isinstance(role, str):
        transport[H_ROLE] = role
    out: list[OutboundMessage] = []
    for part in parts:
        ptype = str(part["type"])
        if ptype == "text":
            codec = {KIND: "user-message"}
            data: Any = part.get("text")
        elif ptype == "file":
            codec = _write_fields((("mediaType", _STR),), "user-message", part)
            data = part.get("url")
        else:
            codec = _write_fields((("id", _STR),), "user-message", part)
            data = part.get("data")
        write_str(codec, "messageId", message.get("id"))
        codec[PART_TYPE] = ptype
        out.append(input_message(transport, codec, data, discrete=True))
    return out


def encode_regenerate(transport_headers: Mapping[str, str]) -> OutboundMessage:
    """The wire-only ``regenerate`` input (headers carry ``parent`` and ``msg-regenerate``)."""
    return input_message(transport_headers, {KIND: "regenerate"}, "")


def encode_tool_result(
    tool_call_id: str,
    output: Any,
    transport_headers: Mapping[str, str],
    *,
    fork_seed: Mapping[str, Any] | None = None,
) -> OutboundMessage:
    """A client ``tool-result`` for ``tool_call_id`` (codec-message-id = the assistant it amends)."""
    data: dict[str, Any] = {"output": output}
    if fork_seed is not None:
        data["forkSeed"] = dict(fork_seed)
    return input_message(transport_headers, {KIND: "tool-result", "toolCallId": tool_call_id}, data)


def encode_tool_result_error(
    tool_call_id: str,
    message: str,
    transport_headers: Mapping[str, str],
    *,
    fork_seed: Mapping[str, Any] | None = None,
) -> OutboundMessage:
    """A client ``tool-result-error`` (data ``{message, forkSeed?}``)."""
    data: dict[str, Any] = {"message": message}
    if fork_seed is not None:
        data["forkSeed"] = dict(fork_seed)
    return input_message(transport_headers, {KIND: "tool-result-error", "toolCallId": tool_call_id}, data)


def encode_tool_approval_response(
    tool_call_id: str,
    approved: bool,
    transport_headers: Mapping[str, str],
    *,
    reason: str | None = None,
) -> OutboundMessage:
    """A ``tool-approval-response`` (headers carry the suspended ``run-id``: a continuation)."""
    codec = {
        KIND: "tool-approval-response",
        "toolCallId": tool_call_id,
        "approved": "true" if approved else "false",
    }
    write_str(codec, "reason", reason)
    return input_message(transport_headers, codec, "")
