"""Vercel UIMessage reducer (src/vercel/codec/reducer*.ts, fold-*.ts, tool-transitions.ts).

Folds decoded inputs and output chunks into UIMessages — plain dicts in the AI SDK JSON shape
``{"id", "role", "parts": [...], "metadata"?}`` — keyed strictly by codec-message-id. A JS
``undefined`` field is simply an absent key, so ``json.dumps`` of a message equals ``JSON.stringify``
of what the JS reducer folds.

The reducer folds unconditionally; ordering and replay protection are the tree's job.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from agent_worker.protocol.codec_core import CodecMessage
from agent_worker.protocol.headers import MISSING, parse_json

__all__ = ["CodecMessage", "ToolCall", "UIMessage", "VercelProjection", "is_tool_part", "tool_name"]

UIMessage = dict[str, Any]
"""A Vercel ``UIMessage`` as JSON: ``{"id": str, "role": str, "parts": list, "metadata"?: Any}``."""


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool call waiting for execution (tool-registry.ts ``PendingToolCall``)."""

    tool_call_id: str
    tool_name: str
    input: Any


def is_tool_part(part: Mapping[str, Any]) -> bool:
    """``isToolPart``: ``dynamic-tool`` or ``tool-<name>`` carrying ``toolCallId`` and ``state``."""
    ptype = part.get("type")
    return (
        isinstance(ptype, str)
        and (ptype == "dynamic-tool" or ptype.startswith("tool-"))
        and "toolCallId" in part
        and "state" in part
    )


def tool_name(part: Mapping[str, Any]) -> str:
    """AI SDK ``getToolName``: ``toolName`` for dynamic tools, else the ``tool-`` suffix of ``type``."""
    if part.get("type") == "dynamic-tool":
        return str(part.get("toolName", ""))
    return str(part.get("type", ""))[len("tool-") :]


# --- tool transitions (tool-transitions.ts) -----------------------------------------------------------


def _put(d: dict[str, Any], key: str, value: Any) -> None:
    if value is not MISSING:
        d[key] = value


def _tool_base(source: Mapping[str, Any]) -> dict[str, Any]:
    """``toolBase``: the identity of a new tool part, ``dynamic-tool`` when ``dynamic``."""
    if source.get("dynamic"):
        base: dict[str, Any] = {
            "type": "dynamic-tool",
            "toolCallId": source.get("toolCallId"),
            "toolName": source.get("toolName"),
        }
    else:
        base = {"type": f"tool-{source.get('toolName')}", "toolCallId": source.get("toolCallId")}
    _put(base, "title", source.get("title", MISSING))
    _put(base, "providerExecuted", source.get("providerExecuted", MISSING))
    return base


def _tool_identity(part: Mapping[str, Any]) -> dict[str, Any]:
    """``toolIdentity``: keep an existing part's representation across a state change."""
    base: dict[str, Any] = {"type": part["type"], "toolCallId": part.get("toolCallId")}
    if part["type"] == "dynamic-tool":
        base["toolName"] = part.get("toolName")
    _put(base, "title", part.get("title", MISSING))
    _put(base, "providerExecuted", part.get("providerExecuted", MISSING))
    return base


def _transition(part: Mapping[str, Any], chunk: Mapping[str, Any]) -> dict[str, Any]:
    """``transitionToolPart`` for output-available / output-error / output-denied / approval-requested."""
    new = _tool_identity(part)
    ctype = chunk["type"]
    match ctype:
        case "tool-output-available":
            new["state"] = "output-available"
            _put(new, "input", part.get("input", MISSING))
            _put(new, "output", chunk.get("output", MISSING))
            _put(new, "preliminary", chunk.get("preliminary", MISSING))
        case "tool-output-error":
            new["state"] = "output-error"
            _put(new, "input", part.get("input", MISSING))
            _put(new, "errorText", chunk.get("errorText", MISSING))
        case "tool-output-denied":
            new["state"] = "output-denied"
            _put(new, "input", part.get("input", MISSING))
            new["approval"] = {"id": "", "approved": False}
        case "tool-approval-request":
            new["state"] = "approval-requested"
            _put(new, "input", part.get("input", MISSING))
            new["approval"] = {"id": chunk.get("approvalId")}
        case _:
            msg = f"not a tool transition: {ctype!r}"
            raise ValueError(msg)
    return new


def _approval_transition(part: Mapping[str, Any], approved: bool, reason: Any) -> dict[str, Any]:
    if not approved:
        return _transition(part, {"type": "tool-output-denied", "toolCallId": part.get("toolCallId")})
    new = _tool_identity(part)
    new["state"] = "approval-responded"
    _put(new, "input", part.get("input", MISSING))
    approval_in = part.get("approval")
    approval: dict[str, Any] = {
        "id": approval_in.get("id") if isinstance(approval_in, Mapping) and approval_in else "",
        "approved": True,
    }
    _put(approval, "reason", reason)
    new["approval"] = approval
    return new


# --- the projection -----------------------------------------------------------------------------------

# Text and reasoning stream chunks: (a text stream, the phase: 0 start, 1 delta, 2 end).
_TEXT_CHUNKS: dict[str, tuple[bool, int]] = {
    "text-start": (True, 0),
    "text-delta": (True, 1),
    "text-end": (True, 2),
    "reasoning-start": (False, 0),
    "reasoning-delta": (False, 1),
    "reasoning-end": (False, 2),
}


@dataclass(slots=True)
class _Trackers:
    text: dict[str, int] = field(default_factory=dict)
    reasoning: dict[str, int] = field(default_factory=dict)
    tools: dict[str, list[Any]] = field(default_factory=dict)  # toolCallId → [partIndex, inputText]


@dataclass(slots=True)
class _Pending:
    target: str
    tool_call_id: str
    kind: Literal["tool-result", "tool-result-error", "tool-approval-response"]
    value: Any
    reason: Any = MISSING


@dataclass(slots=True)
class VercelProjection:
    """One tree node's folded state (``VercelProjection``): messages in publication order."""

    messages: list[CodecMessage] = field(default_factory=list)
    _trackers: dict[str, _Trackers] = field(default_factory=dict)
    # Tool results waiting for their tool part; None while none wait (most nodes, always).
    _pending: list[_Pending] | None = None

    # --- lookup --------------------------------------------------------------------------------

    def find(self, codec_message_id: str) -> CodecMessage | None:
        """The message with that codec-message-id, if folded."""
        for entry in self.messages:
            if entry.codec_message_id == codec_message_id:
                return entry
        return None

    def _ensure_message(self, cmid: str) -> UIMessage:
        for entry in self.messages:  # find(), inline: once per folded chunk
            if entry.codec_message_id == cmid:
                return entry.message
        entry = CodecMessage(cmid, {"id": cmid, "role": "assistant", "parts": []})
        self.messages.append(entry)
        return entry.message

    def _ensure_trackers(self, cmid: str) -> _Trackers:
        trackers = self._trackers.get(cmid)
        if trackers is None:  # not setdefault: that would build a _Trackers per chunk
            trackers = self._trackers[cmid] = _Trackers()
        return trackers

    @staticmethod
    def _tool_part(
        message: UIMessage, trackers: _Trackers, tool_call_id: str
    ) -> tuple[int, dict[str, Any]] | None:
        tracker = trackers.tools.get(tool_call_id)
        if tracker is None:
            return None
        idx = tracker[0]
        parts = message["parts"]
        if idx >= len(parts) or not is_tool_part(parts[idx]):
            return None
        return idx, parts[idx]

    # --- fold ----------------------------------------------------------------------------------

    def fold_input(self, event: Mapping[str, Any], codec_message_id: str | None) -> None:
        """Fold one decoded input (``{"kind": ...}``) routed by the wire's codec-message-id."""
        kind = event.get("kind")
        match kind:
            case "user-message":
                self._fold_user_message(event["message"], codec_message_id)
            case "regenerate":
                pass
            case "tool-result" | "tool-result-error":
                payload = event.get("payload", {})
                target = str(event.get("codecMessageId", ""))
                self._seed_fork(target, payload.get("forkSeed"))
                value = (
                    payload.get("output", MISSING) if kind == "tool-result" else payload.get("message", "")
                )
                self._resolve_or_pend(_Pending(target, str(payload.get("toolCallId", "")), kind, value))
            case "tool-approval-response":
                payload = event.get("payload", {})
                pending = _Pending(
                    str(event.get("codecMessageId", "")),
                    str(payload.get("toolCallId", "")),
                    "tool-approval-response",
                    bool(payload.get("approved")),
                    payload.get("reason", MISSING),
                )
                self._resolve_or_pend(pending)
            case _:
                pass
        self._retry_pending()

    def fold_output(self, chunk: Mapping[str, Any], codec_message_id: str | None) -> None:
        """Fold one ``UIMessageChunk`` into the message named by the wire's codec-message-id."""
        if codec_message_id is not None:
            self._fold_chunk(chunk, codec_message_id)
        if self._pending:
            self._retry_pending()

    def _fold_user_message(self, message: Mapping[str, Any], cmid: str | None) -> None:
        msg = {**message, "parts": list(message.get("parts", []))}
        if cmid is None:
            self.messages.append(CodecMessage(str(msg.get("id", "")), msg))
            return
        existing = self.find(cmid)
        if existing is None:
            self.messages.append(CodecMessage(cmid, msg))
        else:
            existing.message["parts"].extend(msg["parts"])

    def _seed_fork(self, target: str, seed: Any) -> None:
        if not isinstance(seed, Mapping) or self.find(target) is not None:
            return
        for entry in seed.get("messages", []):
            cmid = entry["codecMessageId"]
            if self.find(cmid) is not None:
                continue
            message = copy.deepcopy(dict(entry["message"]))
            self.messages.append(CodecMessage(cmid, message))
            trackers = self._ensure_trackers(cmid)
            for idx, part in enumerate(message["parts"]):
                if is_tool_part(part):
                    trackers.tools[part["toolCallId"]] = [idx, ""]

    def _find_owner(self, target: str, tool_call_id: str) -> tuple[UIMessage, int, dict[str, Any]] | None:
        entry = self.find(target)
        if entry is None:
            return None
        found = self._tool_part(entry.message, self._ensure_trackers(target), tool_call_id)
        if found is None:
            return None
        return entry.message, found[0], found[1]

    def _apply(self, owner: tuple[UIMessage, int, dict[str, Any]], p: _Pending) -> None:
        message, idx, part = owner
        match p.kind:
            case "tool-result":
                chunk = {"type": "tool-output-available", "toolCallId": p.tool_call_id, "output": p.value}
                if p.value is MISSING:
                    del chunk["output"]
                message["parts"][idx] = _transition(part, chunk)
            case "tool-result-error":
                chunk = {"type": "tool-output-error", "toolCallId": p.tool_call_id, "errorText": p.value}
                message["parts"][idx] = _transition(part, chunk)
            case "tool-approval-response":
                message["parts"][idx] = _approval_transition(part, bool(p.value), p.reason)

    def _resolve_or_pend(self, p: _Pending) -> None:
        owner = self._find_owner(p.target, p.tool_call_id)
        if owner is None:
            if self._pending is None:
                self._pending = []
            self._pending.append(p)
        else:
            self._apply(owner, p)

    def _retry_pending(self) -> None:
        if not self._pending:
            return
        still: list[_Pending] = []
        for p in self._pending:
            owner = self._find_owner(p.target, p.tool_call_id)
            if owner is None:
                still.append(p)
            else:
                self._apply(owner, p)
        self._pending = still or None

    def _fold_chunk(self, chunk: Mapping[str, Any], cmid: str) -> None:
        ctype = chunk.get("type")
        text = _TEXT_CHUNKS.get(ctype) if type(ctype) is str else None
        if text is not None:  # a text/reasoning stream's start, delta or end: the commonest chunks
            self._fold_text(chunk, text, cmid)
            return
        match ctype:
            case "start":
                message = self._ensure_message(cmid)
                if chunk.get("messageId") is not None:
                    message["id"] = chunk["messageId"]
                if "messageMetadata" in chunk:
                    message["metadata"] = chunk["messageMetadata"]
            case "start-step":
                self._ensure_message(cmid)["parts"].append({"type": "step-start"})
            case "finish-step":
                trackers = self._trackers.get(cmid)
                if trackers is not None:
                    if trackers.tools:
                        trackers.text.clear()
                        trackers.reasoning.clear()
                    else:  # nothing left to track: dropped, as good as a fresh one (one object less kept)
                        del self._trackers[cmid]
            case "finish" | "message-metadata":
                entry = self.find(cmid)
                if entry is not None and "messageMetadata" in chunk:
                    entry.message["metadata"] = chunk["messageMetadata"]
            case "abort" | "error":
                pass
            case "tool-input-start" | "tool-input-delta" | "tool-input-available" | "tool-input-error":
                self._fold_tool_input(chunk, str(ctype), cmid)
            case "tool-output-available" | "tool-output-error":
                self._fold_tool_output_anywhere(chunk)
            case "tool-output-denied" | "tool-approval-request":
                message = self._ensure_message(cmid)
                found = self._tool_part(message, self._ensure_trackers(cmid), str(chunk.get("toolCallId")))
                if found is not None:
                    message["parts"][found[0]] = _transition(found[1], chunk)
            case "file":
                part = {"type": "file", "mediaType": chunk.get("mediaType"), "url": chunk.get("url")}
                self._ensure_message(cmid)["parts"].append(part)
            case "source-url" | "source-document":
                keys = (
                    ("sourceId", "url", "title")
                    if ctype == "source-url"
                    else ("sourceId", "mediaType", "title", "filename")
                )
                part = {"type": ctype}
                for key in keys:
                    _put(part, key, chunk.get(key, MISSING))
                self._ensure_message(cmid)["parts"].append(part)
            case str() if ctype.startswith("data-"):
                self._fold_data(chunk, ctype, cmid)
            case _:
                pass

    def _fold_text(self, chunk: Mapping[str, Any], text: tuple[bool, int], cmid: str) -> None:
        """``text``: (a text stream, not reasoning; 0 start, 1 delta, 2 end) — see _TEXT_CHUNKS."""
        message = self._ensure_message(cmid)
        trackers = self._ensure_trackers(cmid)
        is_text, phase = text
        part_type = "text" if is_text else "reasoning"
        active = trackers.text if is_text else trackers.reasoning
        sid = chunk.get("id")
        if phase == 0:
            active[sid] = len(message["parts"])  # type: ignore[index]
            message["parts"].append({"type": part_type, "text": ""})
        elif phase == 1:
            idx = active.get(sid)  # type: ignore[arg-type]
            if idx is None or idx >= len(message["parts"]):
                return
            part = message["parts"][idx]
            if part.get("type") == part_type:
                part["text"] = part.get("text", "") + str(chunk.get("delta", ""))
        else:
            active.pop(sid, None)  # type: ignore[arg-type]

    def _fold_tool_input(self, chunk: Mapping[str, Any], ctype: str, cmid: str) -> None:
        message = self._ensure_message(cmid)
        trackers = self._ensure_trackers(cmid)
        call_id = str(chunk.get("toolCallId"))
        parts = message["parts"]
        match ctype:
            case "tool-input-start":
                trackers.tools[call_id] = [len(parts), ""]
                parts.append({**_tool_base(chunk), "state": "input-streaming"})
            case "tool-input-delta":
                tracker = trackers.tools.get(call_id)
                if tracker is None:
                    return
                tracker[1] += str(chunk.get("inputTextDelta", ""))
                try:
                    parsed: Any = parse_json(tracker[1])
                except ValueError:
                    parsed = MISSING
                found = self._tool_part(message, trackers, call_id)
                if found is not None:
                    new = {**_tool_identity(found[1]), "state": "input-streaming"}
                    _put(new, "input", parsed)
                    parts[found[0]] = new
            case "tool-input-available":
                found = self._tool_part(message, trackers, call_id)
                if found is not None:
                    new = {**_tool_identity(found[1]), "state": "input-available"}
                    _put(new, "input", chunk.get("input", MISSING))
                    parts[found[0]] = new
            case _:  # tool-input-error
                found = self._tool_part(message, trackers, call_id)
                base = _tool_identity(found[1]) if found is not None else _tool_base(chunk)
                new = {**base, "state": "output-error"}
                _put(new, "input", chunk.get("input", MISSING))
                _put(new, "errorText", chunk.get("errorText", MISSING))
                if found is not None:
                    parts[found[0]] = new
                else:
                    trackers.tools[call_id] = [len(parts), ""]
                    parts.append(new)

    def _fold_tool_output_anywhere(self, chunk: Mapping[str, Any]) -> None:
        """Tool outputs locate their call by toolCallId in any message of the node (fold-tool-output.ts)."""
        call_id = str(chunk.get("toolCallId"))
        for entry in self.messages:
            trackers = self._trackers.get(entry.codec_message_id)
            if trackers is None:
                continue
            found = self._tool_part(entry.message, trackers, call_id)
            if found is not None:
                entry.message["parts"][found[0]] = _transition(found[1], chunk)
                return

    def _fold_data(self, chunk: Mapping[str, Any], ctype: str, cmid: str) -> None:
        if chunk.get("transient"):
            return
        message = self._ensure_message(cmid)
        part: dict[str, Any] = {"type": ctype}
        _put(part, "id", chunk.get("id", MISSING))
        _put(part, "data", chunk.get("data", MISSING))
        if "id" in chunk:
            for idx, existing in enumerate(message["parts"]):
                if existing.get("type") == ctype and "id" in existing and existing["id"] == chunk["id"]:
                    message["parts"][idx] = part
                    return
        message["parts"].append(part)
