"""Vercel UIMessage codec — decoding (src/core/codec/decoder.ts + src/vercel/codec/{outputs,inputs}.ts).

:class:`UIMessageDecoder` is per channel and stateful: it tracks streams by message serial, guards
replays by ``version.serial`` and repairs mid-stream joins (src/vercel/codec/decode-lifecycle.ts).
Decoded chunks and inputs are plain dicts in the AI SDK / AIT JSON shapes, so they compare 1:1 with
what the JS decoder produces.

Like the JS decoder it never raises on wire content (any channel publisher can write garbage): unknown
kinds, malformed JSON and foreign messages decode to nothing. ``strict=True`` turns those silent drops
into :class:`CodecError` for diagnostics and tests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from agent_worker.protocol.codec_core import Decoded, DecoderCore, Repair, StreamTracker, strip
from agent_worker.protocol.headers import (
    H_CODEC_MESSAGE_ID,
    H_ROLE,
    H_RUN_ID,
    KIND,
    MISSING,
    PART_TYPE,
    parse_json,
    read_bool,
    read_json,
)

__all__ = ["Chunk", "Decoded", "InputEvent", "UIMessageDecoder", "read_fork_seed"]

Chunk = dict[str, Any]
"""A ``UIMessageChunk`` as a JSON dict (``{"type": "text-delta", "id": ..., "delta": ...}``)."""
InputEvent = dict[str, Any]
"""A decoded Vercel input: ``{"kind": "user-message", "message": {...}}`` or
``{"kind": "tool-result"|"tool-result-error"|"tool-approval-response", "codecMessageId", "payload"}``."""

_FINISH_REASONS = ("stop", "length", "content-filter", "tool-calls", "error", "other")


# --- field readers (fields.ts semantics; MISSING = JS undefined, stripped from rebuilt chunks) -----


def _str(h: Mapping[str, str], key: str, fallback: Any = MISSING) -> Any:
    v = h.get(key)
    return v if isinstance(v, str) else fallback


def _bool(h: Mapping[str, str], key: str, fallback: Any = MISSING) -> Any:
    v = read_bool(h, key)
    return fallback if v is None else v


_strip = strip


def _defined(data: Any) -> Any:
    """Message ``data`` None means "no data" (JS ``undefined``): the key is stripped."""
    return MISSING if data is None else data


def _as_string(data: Any) -> str:
    return data if isinstance(data, str) else ""


def _record(data: Any) -> Mapping[str, Any] | None:
    """JS ``typeof data === 'object' && data !== null``: arrays pass but have no named fields."""
    if isinstance(data, Mapping):
        return data
    if isinstance(data, list):
        return {}
    return None


def _opt_string_field(data: Any, key: str) -> Mapping[str, Any] | None:
    """``isRecordWithOptionalString``: a record whose ``key`` is absent or a string."""
    rec = _record(data)
    if rec is None:
        return None
    value = rec.get(key, MISSING)
    return rec if value is MISSING or isinstance(value, str) else None


def _parse_json_or_string(text: str) -> Any:
    if not text:
        return MISSING
    try:
        return parse_json(text)
    except ValueError:
        return text


def _tool_fields(h: Mapping[str, str]) -> dict[str, Any]:
    return _strip(
        toolCallId=_str(h, "toolCallId", ""),
        toolName=_str(h, "toolName", ""),
        dynamic=_bool(h, "dynamic"),
        title=_str(h, "title"),
        providerExecuted=_bool(h, "providerExecuted"),
        providerMetadata=read_json(h, "providerMetadata"),
    )


def read_fork_seed(data: Any) -> dict[str, Any] | None:
    """``readForkSeedWireData``: validate ``data.forkSeed``, dropping malformed entries and parts."""
    rec = _record(data)
    if rec is None:
        return None
    seed = _record(rec.get("forkSeed"))
    if seed is None or not isinstance(seed.get("messages"), list):
        return None
    messages: list[dict[str, Any]] = []
    for entry in seed["messages"]:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("codecMessageId"), str):
            continue
        message = entry.get("message")
        if not isinstance(message, Mapping) or not isinstance(message.get("parts"), list):
            continue
        parts = [p for p in message["parts"] if isinstance(p, Mapping) and isinstance(p.get("type"), str)]
        messages.append({"codecMessageId": entry["codecMessageId"], "message": {**message, "parts": parts}})
    return {"messages": messages}


# --- output rebuilds (outputs.ts) ---------------------------------------------------------------------


def _with_metadata(chunk: Chunk, h: Mapping[str, str]) -> Chunk:
    """``chunk`` with ``messageMetadata`` when the header holds valid JSON (``read_json``)."""
    if "messageMetadata" in h:
        metadata = read_json(h, "messageMetadata")
        if metadata is not MISSING:
            chunk["messageMetadata"] = metadata
    return chunk


def _decode_discrete_output(kind: str, h: Mapping[str, str], data: Any) -> list[Chunk]:
    match kind:
        # The commonest kinds build their chunk directly (what _strip(...) of the fields builds).
        case "start-step" | "finish-step":
            return [{"type": kind}]
        case "start":
            chunk: Chunk = {"type": kind}
            message_id = h.get("messageId")
            if isinstance(message_id, str):
                chunk["messageId"] = message_id
            return [_with_metadata(chunk, h)]
        case "finish":
            reason = h.get("finishReason")
            return [
                _with_metadata(
                    {"type": kind, "finishReason": reason if reason in _FINISH_REASONS else "stop"}, h
                )
            ]
        case "message-metadata":
            return [_strip(type=kind, messageMetadata=read_json(h, "messageMetadata"))]
        case "error":
            return [{"type": kind, "errorText": _as_string(data)}]
        case "abort":
            return [{"type": kind, "reason": data} if isinstance(data, str) and data else {"type": kind}]
        case "file":
            return [
                _strip(
                    type=kind,
                    mediaType=_str(h, "mediaType", ""),
                    providerMetadata=read_json(h, "providerMetadata"),
                    url=_as_string(data),
                )
            ]
        case "source-url":
            return [
                _strip(
                    type=kind,
                    sourceId=_str(h, "sourceId", ""),
                    title=_str(h, "title"),
                    providerMetadata=read_json(h, "providerMetadata"),
                    url=_as_string(data),
                )
            ]
        case "source-document":
            return [
                _strip(
                    type=kind,
                    sourceId=_str(h, "sourceId", ""),
                    mediaType=_str(h, "mediaType", ""),
                    title=_str(h, "title", ""),
                    filename=_str(h, "filename"),
                    providerMetadata=read_json(h, "providerMetadata"),
                )
            ]
        case "tool-input-error":
            rec = _opt_string_field(data, "errorText")
            extra = (
                {"errorText": rec.get("errorText", ""), "input": rec.get("input", MISSING)}
                if rec is not None
                else {"errorText": ""}
            )
            return [_strip(type=kind, **_tool_fields(h), **extra)]
        case "tool-output-available":
            rec = _record(data)
            return [
                _strip(
                    type=kind,
                    toolCallId=_str(h, "toolCallId", ""),
                    dynamic=_bool(h, "dynamic"),
                    providerExecuted=_bool(h, "providerExecuted"),
                    preliminary=_bool(h, "preliminary"),
                    output=rec.get("output", MISSING) if rec is not None else MISSING,
                )
            ]
        case "tool-output-error":
            rec = _opt_string_field(data, "errorText")
            return [
                _strip(
                    type=kind,
                    toolCallId=_str(h, "toolCallId", ""),
                    dynamic=_bool(h, "dynamic"),
                    providerExecuted=_bool(h, "providerExecuted"),
                    errorText=rec.get("errorText", "") if rec is not None else "",
                )
            ]
        case "tool-approval-request":
            return [
                {
                    "type": kind,
                    "toolCallId": _str(h, "toolCallId", ""),
                    "approvalId": _str(h, "approvalId", ""),
                }
            ]
        case "tool-output-denied":
            return [{"type": kind, "toolCallId": _str(h, "toolCallId", "")}]
        case "tool-input":
            fields = _tool_fields(h)
            return [
                {"type": "tool-input-start", **fields},
                _strip(
                    type="tool-input-available",
                    toolCallId=fields["toolCallId"],
                    toolName=fields["toolName"],
                    input=_defined(data),
                    providerMetadata=fields.get("providerMetadata", MISSING),
                ),
            ]
        case _ if kind.startswith("data-"):
            return [_strip(type=kind, id=_str(h, "id"), transient=_bool(h, "transient"), data=_defined(data))]
        case _:
            return []


_OPENING = frozenset(("start", "start-step"))
_CLOSING = frozenset(("finish", "error", "abort"))  # a run's message over: its phases start afresh

_STREAM_KINDS = {
    "text": ("text-start", "text-delta", "text-end"),
    "reasoning": ("reasoning-start", "reasoning-delta", "reasoning-end"),
    "tool-input": ("tool-input-start", "tool-input-delta", "tool-input-available"),
}


def _build_start(t: StreamTracker) -> list[Chunk]:
    codec = t.codec
    kind = codec.get(KIND, "")
    if kind == "tool-input":
        return [{"type": "tool-input-start", **_tool_fields(codec)}]
    names = _STREAM_KINDS.get(kind)
    if names is None:
        return []
    return [_lifecycle_chunk(names[0], codec)]


def _build_delta(t: StreamTracker, delta: str) -> list[Chunk]:
    codec = t.codec
    kind = codec.get(KIND, "")
    if kind == "tool-input":
        return [
            {
                "type": "tool-input-delta",
                "toolCallId": _str(codec, "toolCallId", ""),
                "inputTextDelta": delta,
            }
        ]
    names = _STREAM_KINDS.get(kind)
    if names is None:
        return []
    sid = codec.get("id")
    if isinstance(sid, str):
        return [{"type": names[1], "id": sid, "delta": delta}]
    return [{"type": names[1], "delta": delta}]


def _build_end(t: StreamTracker, closing: Mapping[str, str]) -> list[Chunk]:
    kind = t.codec.get(KIND, "")
    if kind == "tool-input":
        return [
            _strip(
                type="tool-input-available",
                toolCallId=t.stream_id,
                toolName=_str(closing, "toolName", "") or _str(t.codec, "toolName", ""),
                input=_parse_json_or_string(t.accumulated),
                providerMetadata=read_json(closing, "providerMetadata"),
            )
        ]
    names = _STREAM_KINDS.get(kind)
    if names is None:
        return []
    return [_lifecycle_chunk(names[2], closing)]


def _lifecycle_chunk(chunk_type: str, fields: Mapping[str, str]) -> Chunk:
    """A stream's start or end chunk: ``_strip(type=, id=_str(..), providerMetadata=read_json(..))``
    without the calls (once per stream)."""
    chunk: Chunk = {"type": chunk_type}
    sid = fields.get("id")
    if isinstance(sid, str):
        chunk["id"] = sid
    if "providerMetadata" in fields:
        meta = read_json(fields, "providerMetadata")
        if meta is not MISSING:
            chunk["providerMetadata"] = meta
    return chunk


# --- inputs (inputs.ts) -------------------------------------------------------------------------------


def _decode_input(
    kind: str, codec: Mapping[str, str], transport: Mapping[str, str], data: Any
) -> list[InputEvent]:
    cmid = transport.get(H_CODEC_MESSAGE_ID, "")
    match kind:
        case "tool-result":
            rec = _record(data)
            seed = read_fork_seed(data)
            payload = _strip(
                toolCallId=_str(codec, "toolCallId", ""),
                output=rec.get("output", MISSING) if rec is not None else MISSING,
                forkSeed=seed if seed is not None else MISSING,
            )
            return [{"kind": kind, "codecMessageId": cmid, "payload": payload}]
        case "tool-result-error":
            rec = _opt_string_field(data, "message")
            seed = read_fork_seed(data)
            payload = _strip(
                toolCallId=_str(codec, "toolCallId", ""),
                message=rec.get("message", "") if rec is not None else "",
                forkSeed=seed if seed is not None else MISSING,
            )
            return [{"kind": kind, "codecMessageId": cmid, "payload": payload}]
        case "tool-approval-response":
            payload = _strip(
                toolCallId=_str(codec, "toolCallId", ""),
                approved=_bool(codec, "approved", False),
                reason=_str(codec, "reason"),
            )
            return [{"kind": kind, "codecMessageId": cmid, "payload": payload}]
        case "regenerate":
            return []
        case "user-message":
            part_type = codec.get(PART_TYPE, "")
            if part_type == "text":
                part: dict[str, Any] = {"text": _as_string(data)}
            elif part_type == "file":
                part = {"mediaType": _str(codec, "mediaType", ""), "url": _as_string(data)}
            elif isinstance(part_type, str) and part_type.startswith("data-"):
                part = _strip(id=_str(codec, "id"), data=_defined(data))
            else:
                return []
            part["type"] = part_type
            role = transport.get(H_ROLE, "user")
            message = {"id": _str(codec, "messageId", ""), "role": role, "parts": [part]}
            return [{"kind": kind, "message": message}]
        case _:
            return []


# --- the decoder --------------------------------------------------------------------------------------


class UIMessageDecoder(DecoderCore):
    """Per-channel stateful decoder (one per conversation tree)."""

    def __init__(self, strict: bool = False) -> None:
        super().__init__(strict)
        # Mid-stream-join repair: per run-id, the lifecycle phases ("start", "start-step") already seen.
        self._phases: dict[str, set[str]] = {}

    def decode_input(
        self, kind: str, codec: Mapping[str, str], transport: Mapping[str, str], data: Any
    ) -> list[InputEvent]:
        return _decode_input(kind, codec, transport, data)

    def decode_output(
        self, kind: str, codec: Mapping[str, str], transport: Mapping[str, str], data: Any
    ) -> list[Chunk]:
        pre = self._repair_discrete(kind, transport.get(H_RUN_ID, ""), codec)
        out = _decode_discrete_output(kind, codec, data)
        return pre + out if pre else out

    def build_start(self, t: StreamTracker, run_id: str) -> list[Chunk]:
        pre = self._ensure_phases(run_id, _str(t.codec, "messageId"))
        return pre + _build_start(t)

    def build_delta(self, t: StreamTracker, delta: str) -> list[Chunk]:
        return _build_delta(t, delta)

    def build_end(self, t: StreamTracker, closing: Mapping[str, str]) -> list[Chunk]:
        return _build_end(t, closing)

    # --- mid-stream-join repair (decode-lifecycle.ts) -------------------------------------------

    def _ensure_phases(self, run_id: str, message_id: Any) -> list[Chunk]:
        seen = self._phases.setdefault(run_id, set())
        out: list[Chunk] = []
        if "start" not in seen:
            seen.add("start")
            out.append(Repair(_strip(type="start", messageId=message_id)))
        if "start-step" not in seen:
            seen.add("start-step")
            out.append(Repair(type="start-step"))
        return out

    def repair_filter(self) -> Callable[[list[Chunk]], list[Chunk]]:
        """The phases above replayed over one run's outputs in serial order."""
        seen: set[str] = set()

        def settle(events: list[Chunk]) -> list[Chunk]:
            out: list[Chunk] = []
            for ev in events:
                kind = ev.get("type", "")
                if type(ev) is Repair:
                    if kind in seen:
                        continue
                    seen.add(kind)
                elif kind in _OPENING:
                    seen.add(kind)
                elif kind == "finish-step":
                    seen.discard("start-step")
                elif kind in _CLOSING:
                    seen.clear()
                out.append(ev)
            return out

        return settle

    def _repair_discrete(self, kind: str, run_id: str, codec: Mapping[str, str]) -> list[Chunk]:
        # No set() built per message for setdefault's or get's default (most runs have theirs).
        match kind:
            case "start" | "start-step":
                seen = self._phases.get(run_id)
                if seen is None:
                    self._phases[run_id] = {kind}
                else:
                    seen.add(kind)
            case "finish-step":
                seen = self._phases.get(run_id)
                if seen is not None:
                    seen.discard("start-step")
            case "finish" | "error" | "abort":
                self._phases.pop(run_id, None)
            case "tool-input":
                return self._ensure_phases(run_id, _str(codec, "messageId"))
            case _:
                pass
        return []
