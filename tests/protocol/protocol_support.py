"""Shared helpers for the protocol tests: a pure in-memory "channel" and the JS codec oracle."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.node_support import JS_ROOT, node_config, run_node

__all__ = ["JS_ROOT", "node_config", "run_node"]

from agent_worker.errors import CodecError
from agent_worker.protocol.codec_core import EncoderCore
from agent_worker.protocol.headers import build_output_headers
from agent_worker.protocol.tree import ConversationTree
from agent_worker.protocol.wire import (
    Action,
    AppendOp,
    InboundMessage,
    OutboundMessage,
    PublishOp,
    UpdateOp,
    WireOp,
)

CODEC_SCRIPT = JS_ROOT / "protocol" / "codec.mjs"


def section_10_output_headers() -> dict[str, str]:
    """§10's agent-output defaults B (run R1 of user-abc answering CU), before ``step-start-serial``."""
    return build_output_headers(
        codec_message_id="CA",
        run_id="R1",
        run_client_id="user-abc",
        parent="CU",
        invocation_id="I1",
        input_client_id="user-abc",
        input_codec_message_id="CU",
        step_id="I1-step-0",
        step_client_id="user-abc",
    )


def js_codec(mode: str, **config: Any) -> dict[str, Any]:
    """Run the official JS codec over a scenario (tests/js/protocol/codec.mjs)."""
    return run_node(CODEC_SCRIPT, env=node_config(mode=mode, **config), timeout=60)


def message_json(msg: OutboundMessage, serial: str | None = None) -> dict[str, Any]:
    """An outbound message as ably-js would serialise it (absent data = no key)."""
    out: dict[str, Any] = {}
    if serial is not None:
        out["serial"] = serial
    if msg.name is not None:
        out["name"] = msg.name
    if msg.data is not None:
        out["data"] = msg.data
    out["extras"] = msg.extras
    return out


def run_encoder(
    encoder: EncoderCore,
    chunks: Sequence[Mapping[str, Any]],
    *,
    cancel_at_end: bool = False,
    fail_appends: Sequence[int] = (),
) -> dict[str, Any]:
    """Execute an encoder the way the runtime must (the JS encoder core's flush points), recording
    calls in the same shape as the JS oracle's recording writer."""
    ops: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    serials: dict[str, str] = {}
    pending: list[tuple[str, bool]] = []
    counter = {"serial": 0, "append": 0}

    def flush() -> None:
        failed: list[str] = []
        for key, ok in pending:
            if not ok and key not in failed:
                failed.append(key)
        pending.clear()
        for key in failed:
            upd = encoder.recovery_update(key)
            ops.append({"op": "update", "message": message_json(upd.message, serials[upd.stream_key])})

    def execute(op: WireOp, *, defer_flush: bool = False) -> None:
        match op:
            case PublishOp():
                counter["serial"] += 1
                serial = f"s{counter['serial']:04d}"
                if op.stream_key is not None:
                    serials[op.stream_key] = serial
                ops.append({"op": "publish", "messages": [message_json(op.message)], "serials": [serial]})
            case AppendOp():
                index = counter["append"]
                counter["append"] += 1
                ops.append({"op": "append", "message": message_json(op.message, serials[op.stream_key])})
                pending.append((op.stream_key, index not in fail_appends))
                if op.closing and not defer_flush:
                    flush()
            case UpdateOp():
                ops.append({"op": "update", "message": message_json(op.message, serials[op.stream_key])})

    for chunk in chunks:
        try:
            for op in encoder.encode(chunk):
                execute(op)
        except CodecError as exc:
            errors.append({"type": chunk.get("type"), "error": str(exc)})
    if cancel_at_end:
        for append in encoder.cancel_open_streams():
            execute(append, defer_flush=True)
        flush()
    flush()
    return {"ops": ops, "errors": errors}


# --- an in-memory channel ----------------------------------------------------------------------------


@dataclass
class _Stored:
    serial: str
    name: str | None
    data: Any
    extras: dict[str, Any]
    client_id: str | None
    version: str
    appended: bool = False
    ephemeral: bool = False


@dataclass
class Channel:
    """A minimal ordered Ably channel model: what subscribers receive live, and what history returns."""

    live: list[InboundMessage] = field(default_factory=list)
    _stored: list[_Stored] = field(default_factory=list)
    _by_serial: dict[str, _Stored] = field(default_factory=dict)
    _seq: int = 0

    def _next(self) -> str:
        self._seq += 1
        return f"{self._seq:06d}"

    def publish(self, msg: OutboundMessage, *, client_id: str | None = None) -> str:
        serial = self._next()
        stored = _Stored(serial, msg.name, msg.data, msg.extras, client_id, serial)
        stored.ephemeral = bool(msg.extras.get("ephemeral"))
        self._stored.append(stored)
        self._by_serial[serial] = stored
        self.live.append(_inbound(stored, "message.create", msg.data, msg.extras, serial))
        return serial

    def append(self, serial: str, msg: OutboundMessage) -> None:
        stored = self._by_serial[serial]
        version = self._next()
        stored.data = (stored.data or "") + (msg.data or "")
        stored.extras = msg.extras
        stored.version = version
        stored.appended = True
        self.live.append(_inbound(stored, "message.append", msg.data, msg.extras, version))

    def update(self, serial: str, msg: OutboundMessage) -> None:
        stored = self._by_serial[serial]
        version = self._next()
        stored.data = msg.data
        stored.extras = msg.extras
        stored.version = version
        stored.appended = True
        self.live.append(_inbound(stored, "message.update", msg.data, msg.extras, version))

    def history(self) -> list[InboundMessage]:
        """Oldest first; a mutated message appears once, at its create position, as a full update."""
        out: list[InboundMessage] = []
        for s in self._stored:
            if s.ephemeral:
                continue
            action: Action = "message.update" if s.appended else "message.create"
            out.append(_inbound(s, action, s.data, s.extras, s.version))
        return out

    def run_ops(
        self, ops: Iterable[WireOp], streams: dict[str, str], *, client_id: str | None = None
    ) -> None:
        """Execute encoder ops against this channel (``streams`` maps stream_key → serial)."""
        for op in ops:
            match op:
                case PublishOp():
                    serial = self.publish(op.message, client_id=client_id)
                    if op.stream_key is not None:
                        streams[op.stream_key] = serial
                case AppendOp():
                    self.append(streams[op.stream_key], op.message)
                case UpdateOp():
                    self.update(streams[op.stream_key], op.message)


def _inbound(s: _Stored, action: Action, data: Any, extras: dict[str, Any], version: str) -> InboundMessage:
    return InboundMessage(
        name=s.name,
        data=json.loads(json.dumps(data)) if data is not None else None,
        extras=json.loads(json.dumps(extras)),
        action=action,
        serial=s.serial,
        version_serial=version,
        client_id=s.client_id,
    )


def inbound_json(msg: InboundMessage) -> dict[str, Any]:
    """An InboundMessage as the JS oracle's decode mode takes it."""
    out: dict[str, Any] = {"action": msg.action, "serial": msg.serial, "extras": msg.extras}
    if msg.name is not None:
        out["name"] = msg.name
    if msg.data is not None:
        out["data"] = msg.data
    if msg.version_serial is not None:
        out["version"] = {"serial": msg.version_serial}
    if msg.client_id is not None:
        out["clientId"] = msg.client_id
    return out


# Every §8.1 output kind, with optional fields exercised.
ALL_OUTPUT_CHUNKS: list[dict[str, Any]] = [
    {"type": "start", "messageMetadata": {"model": "m1", "n": 0}},
    {"type": "start", "messageId": "ui-assistant-1"},
    {"type": "start-step"},
    {"type": "reasoning-start", "id": "r0", "providerMetadata": {"openai": {"itemId": "rs_1"}}},
    {"type": "reasoning-delta", "id": "r0", "delta": "Thinking…"},
    {"type": "reasoning-end", "id": "r0", "providerMetadata": {"openai": {"itemId": "rs_1", "done": True}}},
    {"type": "text-start", "id": "t0"},
    {"type": "text-delta", "id": "t0", "delta": "Héllo "},
    {"type": "text-delta", "id": "t0", "delta": "wörld"},
    {"type": "text-end", "id": "t0"},
    {
        "type": "tool-input-start",
        "toolCallId": "call_1",
        "toolName": "search",
        "dynamic": True,
        "title": "Search",
        "providerExecuted": False,
        "providerMetadata": {"x": 1},
    },
    {"type": "tool-input-delta", "toolCallId": "call_1", "inputTextDelta": '{"q":"ably"}'},
    {
        "type": "tool-input-available",
        "toolCallId": "call_1",
        "toolName": "search",
        "input": {"q": "ably"},
        "providerMetadata": {"y": 2},
    },
    {
        "type": "tool-output-available",
        "toolCallId": "call_1",
        "output": [1, 2],
        "dynamic": True,
        "preliminary": True,
    },
    {
        "type": "tool-output-available",
        "toolCallId": "call_1",
        "output": {"hits": 2},
        "providerExecuted": False,
    },
    {
        "type": "tool-input-available",
        "toolCallId": "call_2",
        "toolName": "calc",
        "input": {"expr": "1+1"},
        "title": "Calc",
    },
    {"type": "tool-output-error", "toolCallId": "call_2", "errorText": "division by zero"},
    {
        "type": "tool-input-error",
        "toolCallId": "call_3",
        "toolName": "calc",
        "input": "{bad",
        "errorText": "bad json",
    },
    {"type": "tool-input-available", "toolCallId": "call_4", "toolName": "rm", "input": {}},
    {"type": "tool-approval-request", "toolCallId": "call_4", "approvalId": "ap_1"},
    {"type": "tool-output-denied", "toolCallId": "call_4"},
    {"type": "file", "url": "https://example.com/a.png", "mediaType": "image/png"},
    {"type": "source-url", "sourceId": "src1", "url": "https://ably.com", "title": "Ably"},
    {
        "type": "source-document",
        "sourceId": "doc1",
        "mediaType": "application/pdf",
        "title": "Spec",
        "filename": "spec.pdf",
    },
    {"type": "data-weather", "id": "w1", "data": {"tempC": 21}},
    {"type": "data-progress", "data": {"pct": 50}, "transient": True},
    {"type": "message-metadata", "messageMetadata": {"tokens": 42}},
    {"type": "error", "errorText": "provider exploded"},
    {"type": "abort", "reason": "user stop"},
    {"type": "abort"},
    {"type": "custom", "kind": "x"},
    {"type": "text-delta", "id": "gone", "delta": "x"},
    {"type": "finish-step"},
    {"type": "finish", "finishReason": "tool-calls", "messageMetadata": {"done": True}},
]


def dump(tree: ConversationTree) -> list[dict[str, Any]]:
    """Every node as plain data: its fields (statuses, serials, steps) and folded messages."""
    out = []
    for node in tree.nodes():
        fields = {f.name: getattr(node, f.name) for f in dataclasses.fields(node) if f.name != "projection"}
        fields["messages"] = [(m.codec_message_id, m.message) for m in node.messages]
        out.append(fields)
    return out
