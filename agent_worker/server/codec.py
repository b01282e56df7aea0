"""Frames and bodies: JSON text / msgpack binary, plus binary-payload transcoding.

Pure: no I/O. Messages are held internally in one canonical form — binary ``data`` as ``bytes``
with the trailing ``base64`` step removed from ``encoding`` — so a msgpack publisher and a JSON
subscriber (or REST reader) each see the representation native to their format.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import msgpack

from agent_worker.errors import ProtocolError
from agent_worker.limits import loads_json, loads_msgpack

__all__ = [
    "JSON",
    "MSGPACK",
    "Format",
    "content_type_for",
    "decode_body",
    "decode_frame",
    "drop_none",
    "encode_body",
    "encode_frame",
    "encode_item",
    "encode_wire",
    "error_info",
    "format_from_accept",
    "format_from_content_type",
    "inbound_payload",
    "join_items",
    "outbound_payload",
    "pack",
    "pack_lenient",
    "wire_payload",
]

Format = Literal["json", "msgpack"]
JSON: Format = "json"
MSGPACK: Format = "msgpack"

# Fields a client may put on the wire that the server must never store or relay: ably-js leaks its
# internal ``size``; ``connectionKey`` is only meaningful on a REST publish.
_STRIP_FIELDS = ("size", "connectionKey")


def error_info(code: int, message: str, status_code: int | None = None) -> dict[str, Any]:
    """An Ably ErrorInfo (``message`` is what both SDKs read; the spec calls it ``reason``)."""
    status = status_code if status_code is not None else (code // 100 if 10000 <= code < 60000 else 500)
    return {
        "code": code,
        "statusCode": status,
        "message": message,
        "href": f"https://help.ably.io/error/{code}",
    }


# isinstance() tuples, not ``X | Y`` unions (a union is built on every call): hot paths.
_BINARY = (bytes, bytearray)
_DATA_TYPES = (str, bytes, dict, list, int, float, bool)


class _Packers(threading.local):
    """One msgpack ``Packer`` per thread, reused: ``msgpack.packb`` builds a Packer (and its 256 KiB
    buffer) per call, ~0.6 µs of the ~1.8 µs an AIT message's extras take, and the realtime path
    packs 4-5 times per append (digest, the log's extras check, fan-out frames, ACK). A Packer is
    not safe across threads (an embedding application may run servers in several), hence per
    thread; it resets its buffer when a value cannot be packed, so a failure leaves it usable."""

    def __init__(self) -> None:
        self.strict = msgpack.Packer(use_bin_type=True)
        self.lenient = msgpack.Packer(use_bin_type=True, default=str)


_packers = _Packers()


def pack(obj: Any) -> bytes:
    """``msgpack.packb(obj, use_bin_type=True)``, byte for byte."""
    return _packers.strict.pack(obj)  # type: ignore[no-any-return]


def pack_lenient(obj: Any) -> bytes:
    """``msgpack.packb(obj, use_bin_type=True, default=str)``, byte for byte."""
    return _packers.lenient.pack(obj)  # type: ignore[no-any-return]


def _fail(message: str, code: int = 40000) -> ProtocolError:
    return ProtocolError(message, code=code)


def decode_frame(raw: str | bytes, fmt: Format, max_size: int | None = None) -> dict[str, Any]:
    """Decode one WebSocket frame into a ProtocolMessage dict, or raise ``ProtocolError``
    (40009 over ``max_size`` bytes, 40000 nested too deep, 40013 undecodable)."""
    if max_size is not None and len(raw) > max_size:
        msg = f"frame of {len(raw)} bytes exceeds maxFrameSize {max_size}"
        raise _fail(msg, 40009)
    if fmt == MSGPACK:
        obj = loads_msgpack(raw.encode() if isinstance(raw, str) else raw, f"{fmt} frame")
    else:
        obj = loads_json(raw, f"{fmt} frame")
    if not isinstance(obj, dict):
        msg = f"protocol message must be an object, got {type(obj).__name__}"
        raise _fail(msg)
    return obj


# Publisher-owned content inside a Message / PresenceMessage: relayed exactly as published (a
# ``null`` inside it included), and never walked — it is most of a message's size.
_VERBATIM = frozenset(("data", "extras"))


def _drop_none(obj: Any) -> Any:
    """A copy without ``None``-valued dict entries (both SDKs treat absent as unset, and some
    envelope fields are ``None`` when unset), at every depth except under :data:`_VERBATIM` keys."""
    if isinstance(obj, dict):
        return _drop_none_dict(obj)
    if isinstance(obj, list):
        return [_drop_none(v) for v in obj]
    return obj


def _drop_none_dict(obj: Mapping[Any, Any]) -> dict[Any, Any]:
    # A plain loop, recursing only into containers: most values are strings and numbers, and a call
    # per leaf was most of the cost of encoding a history page.
    out: dict[Any, Any] = {}
    for k, v in obj.items():
        if v is None:
            continue
        if k in _VERBATIM:
            out[k] = v
        elif isinstance(v, dict):
            out[k] = _drop_none_dict(v)
        elif isinstance(v, list):
            out[k] = [_drop_none(x) for x in v]
        else:
            out[k] = v
    return out


def drop_none(obj: Any) -> Any:
    """``obj`` without ``None``-valued dict entries at any depth (as the wire drops them)."""
    return _drop_none(obj)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, _BINARY):
        return base64.b64encode(obj).decode("ascii")
    msg = f"not JSON serialisable: {type(obj).__name__}"
    raise TypeError(msg)


def encode_frame(msg: Mapping[str, Any], fmt: Format) -> str | bytes:
    """Encode a ProtocolMessage; ``None`` fields are omitted (both SDKs treat absent as unset)."""
    return encode_wire(_drop_none(dict(msg)), fmt)


def encode_wire(clean: Any, fmt: Format) -> str | bytes:
    """Encode a frame built without ``None`` envelope fields (no walk): byte for byte what
    :func:`encode_frame` gives for it. The realtime hot paths (fan-out, ACKs) build such frames."""
    if fmt == MSGPACK:
        return pack(clean)
    return json.dumps(clean, separators=(",", ":"), default=_json_default, ensure_ascii=False)


def inbound_payload(item: Any, fmt: Format) -> dict[str, Any]:
    """Canonicalise one Message / PresenceMessage from a client (validates the basic shape)."""
    if not isinstance(item, dict):
        msg = f"message must be an object, got {type(item).__name__}"
        raise _fail(msg)
    out: dict[str, Any] = {k: v for k, v in item.items() if v is not None and k not in _STRIP_FIELDS}
    for key in ("name", "clientId", "encoding", "id", "serial", "connectionId"):
        if key in out and not isinstance(out[key], str):
            msg = f"message field {key!r} must be a string"
            raise _fail(msg, 40013 if key in ("encoding",) else 40000)
    if "extras" in out and not isinstance(out["extras"], dict):
        msg = "message field 'extras' must be an object"
        raise _fail(msg, 40013)
    if "action" in out and (not isinstance(out["action"], int) or isinstance(out["action"], bool)):
        msg = "message field 'action' must be an integer"
        raise _fail(msg, 40013)
    data = out.get("data")
    encoding = out.get("encoding", "")
    if isinstance(data, bytearray):
        out["data"] = bytes(data)
    elif isinstance(data, str) and encoding and encoding.split("/")[-1] == "base64":
        try:
            out["data"] = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            msg = "message data is not valid base64"
            raise _fail(msg, 40013) from None
        rest = encoding.rsplit("/", 1)[0] if "/" in encoding else ""
        if rest:
            out["encoding"] = rest
        else:
            out.pop("encoding", None)
    elif data is not None and not isinstance(data, _DATA_TYPES):
        msg = f"unsupported message data type {type(data).__name__}"
        raise _fail(msg, 40013)
    return out


def outbound_payload(item: Mapping[str, Any], fmt: Format) -> dict[str, Any]:
    """Render a canonical Message / PresenceMessage for a client of format ``fmt``."""
    out = {k: v for k, v in item.items() if v is not None}
    data = out.get("data")
    if fmt == JSON and isinstance(data, _BINARY):
        out["data"] = base64.b64encode(data).decode("ascii")
        enc = out.get("encoding")
        out["encoding"] = f"{enc}/base64" if enc else "base64"
    return out


def wire_payload(item: Mapping[str, Any], fmt: Format) -> dict[str, Any]:
    """:func:`outbound_payload` with the envelope ``None`` fields dropped at every depth, in one pass:
    the element :func:`encode_frame` would put on the wire for it (same keys, same order)."""
    out = _drop_none_dict(item)
    data = out.get("data")
    if fmt == JSON and isinstance(data, _BINARY):
        out["data"] = base64.b64encode(data).decode("ascii")
        enc = out.get("encoding")
        out["encoding"] = f"{enc}/base64" if enc else "base64"
    return out


# --- HTTP bodies -------------------------------------------------------------------------------

_CT_JSON = "application/json"
_CT_MSGPACK = "application/x-msgpack"


def content_type_for(fmt: Format) -> str:
    """Exact content type: ably-js switches on the header value, so no ``; charset`` suffix."""
    return _CT_MSGPACK if fmt == MSGPACK else _CT_JSON


def format_from_accept(accept: str | None, default: Format = JSON) -> Format:
    if not accept:
        return default
    lowered = accept.lower()
    if "msgpack" in lowered:
        return MSGPACK
    if "json" in lowered:
        return JSON
    return default


def format_from_content_type(content_type: str | None) -> Format:
    if content_type and "msgpack" in content_type.lower():
        return MSGPACK
    return JSON


def decode_body(body: bytes, fmt: Format) -> Any:
    """Decode an HTTP request body; empty bodies decode to ``None``."""
    if not body:
        return None
    what = f"{fmt} request body"
    return loads_msgpack(body, what, code=40001) if fmt == MSGPACK else loads_json(body, what, code=40001)


def encode_body(obj: Any, fmt: Format) -> bytes:
    clean = _drop_none(obj)
    if fmt == MSGPACK:
        return pack(clean)
    return json.dumps(clean, separators=(",", ":"), default=_json_default, ensure_ascii=False).encode()


def encode_item(item: Mapping[str, Any], fmt: Format) -> bytes:
    """One canonical Message as an element of a ``fmt`` array body: :func:`join_items` of such
    elements is byte for byte :func:`encode_body` of the list of their :func:`outbound_payload`."""
    return encode_body(outbound_payload(item, fmt), fmt)


def join_items(items: Sequence[bytes], fmt: Format) -> bytes:
    """An array body from already encoded elements: a msgpack array is its header followed by its
    elements, a compact JSON array its elements between brackets, comma-separated."""
    if fmt == MSGPACK:
        n = len(items)
        if n < 16:
            head = bytes((0x90 | n,))
        elif n < 0x10000:
            head = b"\xdc" + n.to_bytes(2, "big")
        else:
            head = b"\xdd" + n.to_bytes(4, "big")
        return head + b"".join(items)
    return b"[" + b",".join(items) + b"]"
