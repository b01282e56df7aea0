"""OpenAI Responses codec — decoding (descriptors.ts rebuilds + decode-lifecycle.ts repair).

:class:`ResponsesDecoder` shares the stream tracking of :class:`DecoderCore` and rebuilds the
Responses events the JS decoder produces, as plain dicts. Mid-stream-join repair
(``decoderSynthesiseLifecycle``): every content/summary stream start is preceded by a synthesised
``response.output_item.added`` for its container item, so a late joiner's reducer has somewhere to
fold the part (the reducer's item add is find-or-create, so a redundant add is harmless).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent_worker.protocol.codec_core import DecoderCore, StreamTracker, strip
from agent_worker.protocol.headers import (
    H_CODEC_MESSAGE_ID,
    H_ROLE,
    KIND,
    MISSING,
    PART_TYPE,
    read_bool,
    read_json,
)
from agent_worker.protocol.openai.encoder import GROUP_BY_KIND, StreamGroup

__all__ = ["ResponsesDecoder"]

Event = dict[str, Any]


def _read(fields: tuple[tuple[str, str], ...], h: Mapping[str, str]) -> dict[str, Any]:
    """``readFields``: present values only (malformed JSON reads as absent)."""
    out: dict[str, Any] = {}
    for key, ftype in fields:
        value = h.get(key, MISSING) if ftype == "str" else read_json(h, key)
        if value is not MISSING:
            out[key] = value
    return out


def _json_or(h: Mapping[str, str], key: str, fallback: Any) -> Any:
    """``jsonField.read(h) ?? fallback`` (JSON null also falls back)."""
    value = read_json(h, key)
    return fallback if value is MISSING or value is None else value


def _as_string(data: Any) -> str:
    return data if isinstance(data, str) else ""


def _item_envelope(data: Any) -> Any:
    """``(d as {item}).item``: absent for anything but an object with an ``item``."""
    return data.get("item", MISSING) if isinstance(data, Mapping) else MISSING


def _synthesised_container(part_type: Any, item_id: str, output_index: Any) -> list[Event]:
    """``synthesiseOpeningBracket``: the ``output_item.added`` a joined part stream is missing."""
    if part_type in ("output_text", "refusal"):
        item: dict[str, Any] = {
            "id": item_id,
            "type": "message",
            "role": "assistant",
            "status": "in_progress",
            "content": [],
        }
    elif part_type in ("reasoning_text", "summary_text"):
        item = {"id": item_id, "type": "reasoning", "summary": []}
    else:
        return []
    return [{"type": "response.output_item.added", "item": item, "output_index": output_index}]


def _delta_event(group: StreamGroup, h: Mapping[str, str], delta: str) -> Event:
    if group.kind == "function_call_arguments":
        item = read_json(h, "item")
        return {
            "type": group.delta,
            "item_id": _item_id(item),
            "output_index": _json_or(h, "output_index", 0),
            "delta": delta,
        }
    index_key = "summary_index" if group.kind == "reasoning_summary_text" else "content_index"
    rebuilt = _read((("item_id", "str"), (index_key, "json")), h)
    return {**rebuilt, "delta": delta, "type": group.delta}


def _item_id(item: Any) -> Any:
    if isinstance(item, Mapping) and item.get("id") is not None:
        return item["id"]
    return ""


def _end_event(group: StreamGroup, closing: Mapping[str, str], accumulated: str) -> Event:
    base: Event = {"type": group.end}
    if group.kind == "function_call_arguments":
        item = read_json(closing, "item")
        name = item.get("name") if isinstance(item, Mapping) and item.get("type") == "function_call" else ""
        return {
            **base,
            "item_id": _item_id(item),
            "output_index": _json_or(closing, "output_index", 0),
            "arguments": accumulated,
            "name": name,
        }
    base["item_id"] = closing.get("item_id", "")
    base["output_index"] = _json_or(closing, "output_index", 0)
    if group.kind == "reasoning_summary_text":
        base["summary_index"] = _json_or(closing, "summary_index", 0)
    else:
        base["content_index"] = _json_or(closing, "content_index", 0)
    base["refusal" if group.kind == "refusal" else "text"] = accumulated
    return base


class ResponsesDecoder(DecoderCore):
    """Per-channel stateful decoder for ``openai-responses`` sessions."""

    def build_start(self, t: StreamTracker, run_id: str) -> list[Event]:
        group = GROUP_BY_KIND.get(t.codec.get(KIND, ""))
        if group is None:
            return []
        pre: list[Event] = []
        item_id = t.codec.get("item_id")
        if item_id is not None:
            part = read_json(t.codec, "part")
            part_type = part.get("type") if isinstance(part, Mapping) else None
            pre = _synthesised_container(part_type, item_id, _json_or(t.codec, "output_index", 0))
        return [*pre, {**_read(group.fields, t.codec), "type": group.start}]

    def build_delta(self, t: StreamTracker, delta: str) -> list[Event]:
        group = GROUP_BY_KIND.get(t.codec.get(KIND, ""))
        return [] if group is None else [_delta_event(group, t.codec, delta)]

    def build_end(self, t: StreamTracker, closing: Mapping[str, str]) -> list[Event]:
        group = GROUP_BY_KIND.get(t.codec.get(KIND, ""))
        return [] if group is None else [_end_event(group, closing, t.accumulated)]

    def decode_output(
        self, kind: str, codec: Mapping[str, str], transport: Mapping[str, str], data: Any
    ) -> list[Event]:
        match kind:
            case "response.output_item.added" | "response.output_item.done" | "function_call_output":
                return [strip(item=_item_envelope(data), type=kind)]
            case "tool-approval-request":
                return [
                    {
                        "call_id": codec.get("call_id", ""),
                        "name": codec.get("name", ""),
                        "arguments": _as_string(data),
                        "type": kind,
                    }
                ]
            case _:
                return []

    def decode_input(
        self, kind: str, codec: Mapping[str, str], transport: Mapping[str, str], data: Any
    ) -> list[Event]:
        cmid = transport.get(H_CODEC_MESSAGE_ID, "")
        call_id = codec.get("call_id", "")
        match kind:
            case "tool-result":
                # JS ``isRecord``: arrays are records too, without named fields.
                record = data if isinstance(data, Mapping) else {} if isinstance(data, list) else None
                output = record.get("output", MISSING) if record is not None else ""
                payload = strip(call_id=call_id, output=output)
            case "tool-result-error":
                message = data.get("message") if isinstance(data, Mapping) else None
                payload = {"call_id": call_id, "message": message if isinstance(message, str) else ""}
            case "tool-approval-response":
                approved = read_bool(codec, "approved")
                payload = strip(
                    call_id=call_id,
                    approved=False if approved is None else approved,
                    reason=codec.get("reason", MISSING),
                )
            case "user-message" if codec.get(PART_TYPE) == "input_text":
                part = {"text": _as_string(data), "type": "input_text"}
                item = {"type": "message", "role": "user", "content": [part]}
                message = {"role": transport.get(H_ROLE, "user"), "items": [item]}
                return [{"kind": kind, "message": message}]
            case _:
                return []
        return [{"kind": kind, "codecMessageId": cmid, "payload": payload}]
