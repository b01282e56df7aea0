"""Transport-neutral shapes of Ably messages as the protocol layer sees them.

The protocol layer never touches the network: it consumes :class:`InboundMessage` (built by the
transport adapter from an SDK message) and produces :class:`WireOp` values that the runtime executes
through the adapter (publish / append / update).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "Action",
    "AppendOp",
    "InboundMessage",
    "OutboundMessage",
    "PublishOp",
    "UpdateOp",
    "WireOp",
]

# Ably message actions as ably-js names them (wire numbers: create 0, update 1, delete 2, meta 3,
# summary 4, append 5).
Action = Literal[
    "message.create", "message.update", "message.delete", "message.append", "meta", "message.summary"
]
ACTION_BY_NUMBER: dict[int, Action] = {
    0: "message.create",
    1: "message.update",
    2: "message.delete",
    3: "meta",
    4: "message.summary",
    5: "message.append",
}


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """One Ably message delivered live or read from history."""

    name: str | None
    data: Any
    extras: Mapping[str, Any] | None
    action: Action = "message.create"
    serial: str | None = None
    version_serial: str | None = None
    client_id: str | None = None
    connection_id: str | None = None
    id: str | None = None
    timestamp: int | None = None

    @property
    def transport_headers(self) -> Mapping[str, str]:
        ai = (self.extras or {}).get("ai")
        if isinstance(ai, Mapping):
            t = ai.get("transport")
            if isinstance(t, Mapping):
                return t
        return {}

    @property
    def codec_headers(self) -> Mapping[str, str]:
        ai = (self.extras or {}).get("ai")
        if isinstance(ai, Mapping):
            c = ai.get("codec")
            if isinstance(c, Mapping):
                return c
        return {}


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """A message to publish: ``extras`` already contains ``{"ai": {"transport": ..., "codec": ...}}``."""

    name: str | None
    data: Any
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PublishOp:
    """Publish a new message. ``stream_key`` is set when this opens a stream: the runtime records the
    serial from the ACK under that key so later appends can target it."""

    message: OutboundMessage
    stream_key: str | None = None
    kind: Literal["publish"] = "publish"


@dataclass(frozen=True, slots=True)
class AppendOp:
    """Append to the stream opened under ``stream_key`` (pipelined: not awaited individually)."""

    stream_key: str
    message: OutboundMessage
    closing: bool = False
    kind: Literal["append"] = "append"


@dataclass(frozen=True, slots=True)
class UpdateOp:
    """Replace a stream's message wholesale (append-failure recovery)."""

    stream_key: str
    message: OutboundMessage
    kind: Literal["update"] = "update"


WireOp = PublishOp | AppendOp | UpdateOp
