"""The located trigger of a run: the ``ai-input`` an invocation names by ``event-id``.

Reads the trigger's transport headers once (agent-session.ts ``resolveTriggerMetadata``), computes
the two anchors of the spec's §4.3 step 5 against the conversation tree, and refuses inputs the
runtime must not act on (wrong message name, missing identity, unknown kind, oversized payload).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from agent_worker.errors import ProtocolError
from agent_worker.protocol.branch import TriggerInfo, resolve_anchors
from agent_worker.protocol.headers import AI_INPUT, H_CODEC_MESSAGE_ID, KIND, has_ai_envelope
from agent_worker.protocol.tree import ConversationTree
from agent_worker.protocol.wire import InboundMessage
from agent_worker.transport.ably import Undecodable

__all__ = ["INPUT_KINDS", "Trigger", "payload_size"]

INPUT_KINDS = frozenset(
    {"user-message", "regenerate", "tool-result", "tool-result-error", "tool-approval-response"}
)


def payload_size(msg: InboundMessage) -> int:
    data = msg.data
    if data is None:
        return 0
    if isinstance(data, str):
        return len(data.encode("utf-8"))
    if isinstance(data, bytes | bytearray):
        return len(data)
    try:
        return len(json.dumps(data, separators=(",", ":")).encode("utf-8"))
    except (TypeError, ValueError):
        return 0


@dataclass(frozen=True, slots=True)
class Trigger:
    message: InboundMessage
    info: TriggerInfo
    kind: str
    role: str
    codec_message_id: str
    run_id: str | None
    """Present ⇒ a continuation (``ai-run-resume``) of that run."""
    parent: str | None
    fork_of: str | None
    regenerates: str | None
    supersedes: str | None
    run_client_id: str | None
    """Client-asserted run owner (``run-client-id``), re-stamped on every agent message."""
    client_id: str | None
    """Ably-verified publisher clientId (``input-client-id``); the cancel policy's run owner."""
    leaf_anchor: str | None
    """``parent`` of the run's outputs; where the prompt's branch walk starts."""
    structural_parent: str | None
    """``parent`` of the ``ai-run-start`` (differs from the leaf anchor for a client-tool fork)."""

    @property
    def is_fork(self) -> bool:
        return self.run_id is None and self.role != "user"

    @classmethod
    def from_message(cls, msg: InboundMessage, tree: ConversationTree, *, max_bytes: int) -> Trigger:
        """Validate the located message and read it; :class:`ProtocolError` explains a refusal."""
        if msg.name != AI_INPUT:
            text = f"the invocation's event-id names a {msg.name or 'nameless'} message, not an ai-input"
            raise ProtocolError(text, code=40003)
        if not has_ai_envelope(msg):
            text = "the trigger ai-input has no extras.ai envelope"
            raise ProtocolError(text, code=40003)
        h = msg.transport_headers
        codec = msg.codec_headers
        cmid = h.get(H_CODEC_MESSAGE_ID)
        if not isinstance(cmid, str) or not cmid:
            text = "the trigger ai-input has no codec-message-id header"
            raise ProtocolError(text, code=40003)
        kind = codec.get(KIND)
        if kind not in INPUT_KINDS:
            text = f"the trigger ai-input has an unknown kind {kind!r}"
            raise ProtocolError(text, code=40003)
        if isinstance(msg.data, Undecodable):
            text = (
                f"the trigger ai-input data could not be decoded (encoding {msg.data.encoding or 'none'!r})"
            )
            raise ProtocolError(text, code=40003)
        size = payload_size(msg)
        if size > max_bytes:
            text = f"the trigger ai-input payload is {size} bytes; the limit is {max_bytes}"
            raise ProtocolError(text, code=40009, status_code=413)
        if kind in ("tool-result", "tool-result-error") and not isinstance(msg.data, dict):
            text = f"the trigger {kind} must carry a JSON object, got {type(msg.data).__name__}"
            raise ProtocolError(text, code=40003)
        if kind == "user-message" and not isinstance(msg.data, str | dict | list | None):
            text = "the trigger user-message part has unreadable data"
            raise ProtocolError(text, code=40003)
        info = TriggerInfo.from_message(msg)
        anchors = resolve_anchors(tree, info)
        return cls(
            message=msg,
            info=info,
            kind=str(kind),
            role=info.role or "user",
            codec_message_id=cmid,
            run_id=info.run_id or None,
            parent=info.parent or None,
            fork_of=info.fork_of or None,
            regenerates=info.regenerates or None,
            supersedes=info.supersedes or None,
            run_client_id=info.run_client_id,
            client_id=info.input_client_id,
            leaf_anchor=anchors.leaf,
            structural_parent=anchors.run_parent,
        )
