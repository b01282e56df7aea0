"""OpenAI Responses reducer (src/openai/codec/reducer.ts) and the model-input helpers
(to-responses-input.ts, correlation.ts).

Folds decoded Responses events and client inputs into ``OpenAIMessage`` dicts
``{"role", "items": [...], "toolCallStates"?: {call_id: {...}}}`` keyed by codec-message-id, exactly
as the JS reducer does; every stored item is a valid Responses input item, so
:func:`to_responses_input` is a plain flatten.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent_worker.protocol.codec_core import CodecMessage
from agent_worker.protocol.openai.encoder import MODELLED_ITEM_TYPES

__all__ = [
    "DENIED_TOOL_OUTPUT",
    "OpenAIProjection",
    "approved_unexecuted_calls",
    "resolved_call_ids",
    "to_responses_input",
    "unanswered_calls",
]

OpenAIMessage = dict[str, Any]
DENIED_TOOL_OUTPUT = "Tool execution was not approved."

# Delta/done arms: event type → (item type, slot array, slot type or None, text key, append?).
_SLOT_ARMS: dict[str, tuple[str, str, str | None, str, bool]] = {
    "response.output_text.delta": ("message", "content", "output_text", "text", True),
    "response.output_text.done": ("message", "content", "output_text", "text", False),
    "response.refusal.delta": ("message", "content", "refusal", "refusal", True),
    "response.refusal.done": ("message", "content", "refusal", "refusal", False),
    "response.reasoning_text.delta": ("reasoning", "content", "reasoning_text", "text", True),
    "response.reasoning_text.done": ("reasoning", "content", "reasoning_text", "text", False),
    "response.reasoning_summary_text.delta": ("reasoning", "summary", None, "text", True),
    "response.reasoning_summary_text.done": ("reasoning", "summary", None, "text", False),
}


@dataclass(slots=True)
class _Entry:
    codec_message_id: str
    message: OpenAIMessage
    by_item_id: dict[str, dict[str, Any]] = field(default_factory=dict)
    tool_states: dict[str, dict[str, Any]] = field(default_factory=dict)


def _slot(items: list[Any], index: Any, value: Any) -> None:
    """Positional assignment that may leave a transient hole (None), like a sparse JS array."""
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        return
    while len(items) <= index:
        items.append(None)
    items[index] = value


def _at(items: Any, index: Any) -> Any:
    if isinstance(items, list) and isinstance(index, int) and 0 <= index < len(items):
        return items[index]
    return None


def _dense(slots: list[Any]) -> list[Any]:
    """``densePrefix``: the contiguous present prefix."""
    for i, value in enumerate(slots):
        if value is None:
            return slots[:i]
    return slots


def _compact(item: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(item))
    if out.get("type") == "reasoning":
        out["summary"] = _dense(out.get("summary") or [])
        if isinstance(out.get("content"), list):
            out["content"] = _dense(out["content"])
    elif out.get("type") == "message" and "id" in out and isinstance(out.get("content"), list):
        out["content"] = _dense(out["content"])
    return out


@dataclass(slots=True)
class OpenAIProjection:
    """Per-node projection: one ``OpenAIMessage`` per codec-message-id, in publication order."""

    _entries: list[_Entry] = field(default_factory=list)
    _cache: list[CodecMessage] | None = None  # getMessages memo, dropped by every fold (as the JS view)

    @property
    def messages(self) -> list[CodecMessage]:
        """``getMessages``: compacted copies (a later fold never changes a returned message)."""
        if self._cache is None:
            self._cache = self._build_messages()
        return self._cache

    def _build_messages(self) -> list[CodecMessage]:
        out: list[CodecMessage] = []
        for entry in self._entries:
            message: OpenAIMessage = {
                "role": entry.message["role"],
                "items": [_compact(i) for i in entry.message["items"]],
            }
            if entry.tool_states:
                message["toolCallStates"] = copy.deepcopy(entry.tool_states)
            out.append(CodecMessage(entry.codec_message_id, message))
        return out

    def find(self, codec_message_id: str) -> CodecMessage | None:
        return next((m for m in self.messages if m.codec_message_id == codec_message_id), None)

    # --- plumbing ------------------------------------------------------------------------------

    def _find(self, cmid: str) -> _Entry | None:
        return next((e for e in self._entries if e.codec_message_id == cmid), None)

    def _ensure(self, role: str, cmid: str) -> _Entry:
        entry = self._find(cmid)
        if entry is None:
            entry = _Entry(cmid, {"role": role, "items": []})
            self._entries.append(entry)
        return entry

    def _item(self, cmid: str, item_id: Any) -> dict[str, Any] | None:
        entry = self._find(cmid)
        return entry.by_item_id.get(item_id) if entry is not None and isinstance(item_id, str) else None

    @staticmethod
    def _merge_state(entry: _Entry, call_id: str, patch: Mapping[str, Any]) -> None:
        entry.tool_states[call_id] = {**entry.tool_states.get(call_id, {}), **patch}

    @staticmethod
    def _upsert_output(entry: _Entry, call_id: str, output: Any) -> None:
        item = {"type": "function_call_output", "call_id": call_id, "output": output}
        items = entry.message["items"]
        for i, existing in enumerate(items):
            if existing.get("type") == "function_call_output" and existing.get("call_id") == call_id:
                items[i] = item
                return
        items.append(item)

    # --- outputs -------------------------------------------------------------------------------

    def fold_output(self, event: Mapping[str, Any], codec_message_id: str | None) -> None:
        self._cache = None
        if codec_message_id is None:
            return
        cmid = codec_message_id
        etype = event.get("type")
        if etype in _SLOT_ARMS:
            self._fold_slot(event, cmid, _SLOT_ARMS[str(etype)])
            return
        match etype:
            case "response.output_item.added":
                self._fold_added(event.get("item"), cmid)
            case "response.output_item.done":
                self._fold_done(event.get("item"), cmid)
            case "response.content_part.added":
                item = self._item(cmid, event.get("item_id"))
                part = event.get("part")
                ptype = part.get("type") if isinstance(part, Mapping) else None
                if item is None:
                    return
                if item.get("type") == "message" and ptype in ("output_text", "refusal"):
                    _slot(item["content"], event.get("content_index"), copy.deepcopy(part))
                elif item.get("type") == "reasoning" and ptype == "reasoning_text":
                    if not isinstance(item.get("content"), list):
                        item["content"] = []
                    _slot(item["content"], event.get("content_index"), copy.deepcopy(part))
            case "response.reasoning_summary_part.added":
                item = self._item(cmid, event.get("item_id"))
                part = event.get("part")
                if item is not None and item.get("type") == "reasoning":
                    text = part.get("text") if isinstance(part, Mapping) else None
                    _slot(item["summary"], event.get("summary_index"), {"type": "summary_text", "text": text})
            case "response.function_call_arguments.delta" | "response.function_call_arguments.done":
                item = self._item(cmid, event.get("item_id"))
                if item is not None and item.get("type") == "function_call":
                    if etype.endswith("delta"):
                        item["arguments"] = str(item.get("arguments", "")) + str(event.get("delta", ""))
                    else:
                        item["arguments"] = event.get("arguments")
            case "function_call_output":
                self._ensure("assistant", cmid).message["items"].append(copy.deepcopy(event.get("item")))
            case "tool-approval-request":
                entry = self._ensure("assistant", cmid)
                patch = {
                    "approval": "pending",
                    "name": event.get("name"),
                    "arguments": event.get("arguments"),
                }
                self._merge_state(entry, str(event.get("call_id")), patch)
            case _:
                pass

    def _fold_added(self, item: Any, cmid: str) -> None:
        if not isinstance(item, Mapping) or item.get("type") not in MODELLED_ITEM_TYPES:
            return
        entry = self._ensure("assistant", cmid)
        item_id = item.get("id")
        if item_id is not None and item_id in entry.by_item_id:
            return
        clone = copy.deepcopy(dict(item))
        entry.message["items"].append(clone)
        if isinstance(item_id, str):
            entry.by_item_id[item_id] = clone

    def _fold_done(self, done: Any, cmid: str) -> None:
        if not isinstance(done, Mapping) or done.get("id") is None:
            return
        existing = self._item(cmid, done.get("id"))
        if existing is None or existing.get("type") != done.get("type"):
            return
        existing["status"] = done.get("status")
        if done.get("type") == "message":
            for index, part in enumerate(done.get("content") or []):
                slot = _at(existing.get("content"), index)
                if (
                    isinstance(part, Mapping)
                    and part.get("type") == "output_text"
                    and "logprobs" in part
                    and isinstance(slot, dict)
                    and slot.get("type") == "output_text"
                ):
                    slot["logprobs"] = part["logprobs"]
        elif done.get("type") == "reasoning" and isinstance(done.get("encrypted_content"), str):
            existing["encrypted_content"] = done["encrypted_content"]

    def _fold_slot(
        self, event: Mapping[str, Any], cmid: str, arm: tuple[str, str, str | None, str, bool]
    ) -> None:
        item_type, array, slot_type, key, append = arm
        item = self._item(cmid, event.get("item_id"))
        if item is None or item.get("type") != item_type:
            return
        index = event.get("summary_index" if array == "summary" else "content_index")
        part = _at(item.get(array), index)
        if not isinstance(part, dict) or (slot_type is not None and part.get("type") != slot_type):
            return
        if append:
            part[key] = str(part.get(key, "")) + str(event.get("delta", ""))
        else:
            part[key] = event.get("refusal" if key == "refusal" else "text")

    # --- inputs --------------------------------------------------------------------------------

    def fold_input(self, event: Mapping[str, Any], codec_message_id: str | None) -> None:
        self._cache = None
        if codec_message_id is None:
            return
        kind = event.get("kind")
        if kind == "user-message":
            self._fold_user(event.get("message") or {}, codec_message_id)
            return
        payload = event.get("payload")
        if not isinstance(payload, Mapping) or kind not in (
            "tool-result",
            "tool-result-error",
            "tool-approval-response",
        ):
            return
        entry = self._ensure("assistant", codec_message_id)
        call_id = str(payload.get("call_id", ""))
        if kind == "tool-result":
            self._upsert_output(entry, call_id, payload.get("output"))
            self._merge_state(entry, call_id, {"result": "ok"})
        elif kind == "tool-result-error":
            self._upsert_output(entry, call_id, payload.get("message"))
            self._merge_state(entry, call_id, {"result": "failed"})
        else:
            reason = payload.get("reason")
            reason_patch = {"reason": reason} if "reason" in payload else {}
            if payload.get("approved") is True:
                self._merge_state(entry, call_id, {"approval": "approved", **reason_patch})
            else:
                self._upsert_output(entry, call_id, reason if reason is not None else DENIED_TOOL_OUTPUT)
                self._merge_state(entry, call_id, {"approval": "denied", **reason_patch})

    def _fold_user(self, message: Mapping[str, Any], cmid: str) -> None:
        role = str(message.get("role", "user"))
        entry = self._ensure(role, cmid)
        entry.message["role"] = role
        items = entry.message["items"]
        target = next((i for i in items if _is_input_message(i)), None)
        for incoming in message.get("items") or []:
            if not _is_input_message(incoming):
                continue
            if target is not None:
                target["content"].extend(copy.deepcopy(incoming["content"]))
            else:
                target = copy.deepcopy(dict(incoming))
                items.append(target)


def _is_input_message(item: Any) -> bool:
    return (
        isinstance(item, Mapping) and item.get("type") == "message" and isinstance(item.get("content"), list)
    )


# --- model input and correlation (to-responses-input.ts, correlation.ts) ------------------------------


def to_responses_input(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``toResponsesInput``: the conversation's items, flattened, as a Responses ``input`` array."""
    return [copy.deepcopy(dict(item)) for message in messages for item in message.get("items", [])]


def resolved_call_ids(messages: Sequence[Mapping[str, Any]]) -> set[str]:
    """``resolvedCallIds``: call ids that have a ``function_call_output``."""
    return {
        str(item.get("call_id"))
        for message in messages
        for item in message.get("items", [])
        if item.get("type") == "function_call_output"
    }


def _calls(messages: Sequence[Mapping[str, Any]], approved: bool) -> list[dict[str, Any]]:
    resolved = resolved_call_ids(messages)
    out: list[dict[str, Any]] = []
    for message in messages:
        states = message.get("toolCallStates") or {}
        for item in message.get("items", []):
            if item.get("type") != "function_call" or item.get("call_id") in resolved:
                continue
            is_approved = (states.get(item.get("call_id")) or {}).get("approval") == "approved"
            if is_approved == approved:
                out.append(dict(item))
    return out


def unanswered_calls(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``unansweredCalls``: function calls with neither an output nor an approval."""
    return _calls(messages, approved=False)


def approved_unexecuted_calls(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``approvedUnexecutedCalls``: approved gated calls whose output has not folded yet."""
    return _calls(messages, approved=True)
