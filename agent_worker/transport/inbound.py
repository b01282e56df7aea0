"""Ably messages as the protocol layer reads them (:class:`InboundMessage`): from the SDK's live
messages and from REST history items."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
from ably.types.message import Message

from agent_worker.protocol.wire import ACTION_BY_NUMBER, NO_HEADERS, Action, InboundMessage, make_inbound

__all__ = ["Undecodable", "at_or_before", "history_item", "history_messages", "raw_inbound", "to_inbound"]


@dataclass(frozen=True, slots=True)
class Undecodable:
    """Message data the SDK could not decode (kept raw with its ``encoding``)."""

    raw: Any
    encoding: str


def at_or_before(serial: str, attach_serial: str, *, strictly: bool = False) -> bool:
    """Whether a message (or version) ``serial`` was published at or before the attach point
    ``attach_serial`` (an ATTACHED ``channelSerial``: the serial of the channel's last message
    then, REST's ``from_serial``). A message serial is its publish's channel serial plus ``:<index>``
    (``01826232498871-001@abcdefghij:001``), sorting after that channel serial: a message of the
    attach point's own publish is at it. ``strictly``: before the attach point's own publish."""
    if serial <= attach_serial:
        return True
    return not strictly and serial.startswith(attach_serial) and serial[len(attach_serial)] == ":"


def to_inbound(msg: Message) -> InboundMessage:
    """Convert an SDK message (live or from history) into the protocol layer's shape."""
    action_value = msg.action
    action: Action = "message.create"
    if action_value is not None:
        action = ACTION_BY_NUMBER.get(int(action_value), "message.create")
    version = msg.version
    version_serial = getattr(version, "serial", None) if version is not None else None
    extras = msg.extras if isinstance(msg.extras, Mapping) else None
    return InboundMessage(
        name=msg.name,
        data=msg.data,
        extras=extras,
        action=action,
        serial=msg.serial,
        version_serial=version_serial or msg.serial,
        client_id=msg.client_id,
        connection_id=msg.connection_id,
        id=msg.id,
        timestamp=msg.timestamp,
    )


def history_item(raw: Mapping[str, Any]) -> InboundMessage:
    """A REST history item (as the response decoded it) as :func:`to_inbound` of the SDK's
    ``Message.from_encoded`` reads it; raises what that raises for an undecodable payload."""
    data = raw.get("data")
    version = raw.get("version")
    if (
        not raw.get("encoding")
        and type(data) is not bytes
        and raw.get("annotations") is None
        and (version is None or type(version) is dict)
    ):
        # Nothing to decode (the usual case on the msgpack wire): the same fields without building
        # an SDK Message per item (a third of the CPU of reading a long history).
        return raw_inbound(raw, data)
    return to_inbound(Message.from_encoded(dict(raw)))


def raw_inbound(raw: Mapping[str, Any], data: Any) -> InboundMessage:
    """A REST history item as :func:`to_inbound` reads it, with ``data`` already decoded."""
    version = raw.get("version")
    action = raw.get("action")
    extras = raw.get("extras")
    serial = raw.get("serial")
    return InboundMessage(
        name=raw.get("name"),
        data=data,
        extras=extras if isinstance(extras, Mapping) else None,
        action=(
            ACTION_BY_NUMBER.get(int(action), "message.create")
            if isinstance(action, int)
            else "message.create"
        ),
        serial=serial,
        version_serial=(version.get("serial") if isinstance(version, Mapping) else None) or serial,
        client_id=raw.get("clientId"),
        connection_id=raw.get("connectionId"),
        id=raw.get("id"),
        timestamp=raw.get("timestamp"),
    )


# --- a msgpack history page straight into messages ----------------------------------------------


class _Version(msgspec.Struct):
    serial: Any = None


class _Item(msgspec.Struct, rename="camel"):
    """The fields of a history item that :func:`raw_inbound` reads; any others are skipped unread."""

    id: Any = None
    client_id: Any = None
    connection_id: Any = None
    timestamp: Any = None
    serial: Any = None
    name: Any = None
    data: Any = None
    encoding: Any = None
    extras: Any = None
    action: Any = None
    version: _Version | None = None
    annotations: Any = None


_PAGE = msgspec.msgpack.Decoder(list[_Item])


def history_messages(body: bytes) -> list[InboundMessage] | None:
    """A msgpack history page (an array of items) as :func:`history_item` reads each item, or None
    when one item needs more than that (an ``encoding``, binary data, annotations, a field of
    another shape, an item that is not a map): the caller then decodes the page item by item.

    msgspec builds only the fields read here (the generic unpack builds every key of every item
    and :func:`raw_inbound` then looks each up): about half the CPU of a 1,000-message page."""
    try:
        items = _PAGE.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        # RecursionError: an item nested deeper than msgspec recurses (~1,000 levels); the generic
        # decoder then refuses the page with 104011 (transport/history.py) instead of a crash.
        return None
    out: list[InboundMessage] = []
    append = out.append
    by_number = ACTION_BY_NUMBER
    make = make_inbound
    none = NO_HEADERS
    for item in items:
        data = item.data
        if item.encoding or type(data) is bytes or item.annotations is not None:
            return None
        extras = item.extras
        # The header sections as InboundMessage.__post_init__ reads them (msgspec makes maps dicts).
        transport = codec = none
        if type(extras) is dict:
            ai = extras.get("ai") if extras else None
            if type(ai) is dict:
                section = ai.get("transport")
                if type(section) is dict:
                    transport = section
                section = ai.get("codec")
                if type(section) is dict:
                    codec = section
        else:
            extras = None
        action = item.action
        serial = item.serial
        version = item.version
        append(
            make(
                item.name,
                data,
                extras,
                by_number.get(int(action), "message.create") if isinstance(action, int) else "message.create",
                serial,
                (version.serial if version is not None else None) or serial,
                item.client_id,
                item.connection_id,
                item.id,
                item.timestamp,
                transport,
                codec,
            )
        )
    return out
