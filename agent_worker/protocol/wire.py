"""Transport-neutral shapes of Ably messages as the protocol layer sees them.

The protocol layer never touches the network: it consumes :class:`InboundMessage` (built by the
transport adapter from an SDK message) and produces :class:`WireOp` values that the runtime executes
through the adapter (publish / append / update).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from agent_worker.protocol.frozen import fast_init, fast_make

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


_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


def _ai_section(extras: Mapping[str, Any] | None, key: str) -> Mapping[str, str]:
    ai = extras.get("ai") if extras else None
    if type(ai) is dict or isinstance(ai, Mapping):
        section = ai.get(key)
        if type(section) is dict or isinstance(section, Mapping):
            return section
    return _NO_HEADERS


@fast_init
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
    # Read on every fold (several times per message): looked up once, here.
    transport_headers: Mapping[str, str] = field(init=False, repr=False, compare=False)
    codec_headers: Mapping[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _set_transport(self, _ai_section(self.extras, "transport"))
        _set_codec(self, _ai_section(self.extras, "codec"))


# The derived fields' slot setters (frozen: the dataclass's own __setattr__ refuses).
_set_transport = InboundMessage.__dict__["transport_headers"].__set__
_set_codec = InboundMessage.__dict__["codec_headers"].__set__

NO_HEADERS = _NO_HEADERS
"""The headers of a message without that ``extras.ai`` section (shared, read-only)."""
make_inbound = fast_make(InboundMessage)
"""``make_inbound(name, data, extras, action, serial, version_serial, client_id, connection_id, id,
timestamp, transport_headers, codec_headers)``: an :class:`InboundMessage` whose two header fields
the caller read from ``extras`` as ``__post_init__`` would (``transport/inbound.py``)."""


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
