"""The codec-agnostic halves of every AIT codec (src/core/codec/encoder.ts, decoder.ts).

:class:`EncoderCore` tracks an assistant message's streams (start → pipelined appends → closing
append, cancel, append-failure recovery) and builds every outbound message; :class:`DecoderCore`
tracks streams by serial on the receiving side (first contact, replay guard, prefix updates).
A codec (``protocol.vercel``, ``protocol.openai``) subclasses both and supplies only its
descriptor logic: which chunk opens/extends/closes which stream, and how events rebuild.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent_worker.errors import CodecError
from agent_worker.protocol.frozen import fast_init
from agent_worker.protocol.headers import (
    AI_INPUT,
    AI_OUTPUT,
    H_DISCRETE,
    H_RUN_ID,
    H_STATUS,
    H_STREAM,
    H_STREAM_ID,
    KIND,
    MISSING,
    build_extras,
    has_ai_envelope,
)
from agent_worker.protocol.wire import (
    NO_HEADERS,
    AppendOp,
    InboundMessage,
    OutboundMessage,
    PublishOp,
    UpdateOp,
    WireOp,
)

__all__ = [
    "CodecMessage",
    "Decoded",
    "DecoderCore",
    "EncoderCore",
    "Projection",
    "StreamTracker",
    "input_message",
    "strip",
]

Event = dict[str, Any]


class Repair(dict[str, Any]):
    """An event the decoder synthesised to repair a mid-stream join (it saw a stream before the
    lifecycle chunks that open it). Equal to the plain dict; the type lets the tree tell it apart
    when it refolds a run in serial order (:meth:`DecoderCore.repair_filter`)."""

    __slots__ = ()


@dataclass(slots=True)
class CodecMessage:
    """A codec's message (a UIMessage, an OpenAIMessage) paired with its wire codec-message-id."""

    codec_message_id: str
    message: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """The JS ``CodecMessage`` shape ``{codecMessageId, message}``."""
        return {"codecMessageId": self.codec_message_id, "message": self.message}


class Projection(Protocol):
    """A codec reducer's per-node state (``init``/``fold``/``getMessages``)."""

    @property
    def messages(self) -> list[CodecMessage]: ...

    def find(self, codec_message_id: str) -> CodecMessage | None: ...

    def fold_input(self, event: Mapping[str, Any], codec_message_id: str | None) -> None: ...

    def fold_output(self, event: Mapping[str, Any], codec_message_id: str | None) -> None: ...


def strip(**kv: Any) -> dict[str, Any]:
    """JS ``stripUndefined``: keys whose value is :data:`MISSING` vanish."""
    for v in kv.values():
        if v is MISSING:
            return {k: v for k, v in kv.items() if v is not MISSING}
    return kv  # nothing to strip (the usual case): ``**kv`` is already a fresh dict


def input_message(
    transport_headers: Mapping[str, str], codec: dict[str, str], data: Any, *, discrete: bool = False
) -> OutboundMessage:
    """A client ``ai-input`` (``discrete`` marks a batch part, as ``publishDiscreteBatch`` does)."""
    transport = {**transport_headers, H_STREAM: "false"}
    if discrete:
        transport[H_DISCRETE] = "true"
    return OutboundMessage(name=AI_INPUT, data=data, extras=build_extras(transport, codec))


# --- encoding -------------------------------------------------------------------------------------


class _Text:
    """A stream's text, built by appends in time linear in its length (``x.attr += delta`` on a
    ``str`` copies the whole text each time: CPython resizes in place only for local variables)."""

    __slots__ = ("_parts",)

    def __init__(self, text: str = "") -> None:
        self._parts = [text] if text else []

    def add(self, delta: str) -> None:
        self._parts.append(delta)

    @property
    def value(self) -> str:
        parts = self._parts
        if len(parts) > 1:
            self._parts = parts = ["".join(parts)]
        return parts[0] if parts else ""


_CLOSED_TEXT = _Text()
"""The text of every closed stream tracker (see ``DecoderCore._close``); never added to."""


@dataclass(slots=True)
class _Stream:
    stream_key: str
    stream_id: str
    text: _Text
    transport: dict[str, str]
    codec: dict[str, str]
    cancelled: bool = False
    completed: bool = False


@dataclass(slots=True)
class EncoderCore:
    """Stream bookkeeping for one assistant message (one ``pipe``/``send``), pure.

    ``default_headers`` are the per-message transport defaults (:func:`build_output_headers`).
    Streams are tracked by stream id, as in the JS encoder core; every stream gets a globally unique
    ``stream_key`` under which the runtime records the publish serial.
    """

    default_headers: dict[str, str]
    _injected: dict[str, str] = field(default_factory=dict)
    _streams: dict[str, _Stream] = field(default_factory=dict)
    _by_key: dict[str, _Stream] = field(default_factory=dict)
    _seq: int = 0

    def encode(self, event: Mapping[str, Any]) -> list[WireOp]:
        """Encode one codec output event (each codec implements it)."""
        raise NotImplementedError

    def set_default_header(self, key: str, value: str | None) -> None:
        """Stamp ``key`` on every message built from now on (None stops stamping it).

        Mirrors the JS ``onAblyMessage`` stamping of ``step-start-serial`` / ``steer-codec-message-ids``:
        an injected header overrides the defaults and is captured into a stream's persistent headers
        when the stream opens.
        """
        if value is None:
            self._injected.pop(key, None)
        else:
            self._injected[key] = value

    @property
    def open_stream_keys(self) -> tuple[str, ...]:
        """Keys of streams neither completed nor cancelled, in open order."""
        return tuple(s.stream_key for s in self._by_key.values() if not (s.completed or s.cancelled))

    def stream_key_for(self, stream_id: str) -> str | None:
        """The current stream key tracked for a stream id, if any."""
        s = self._streams.get(stream_id)
        return s.stream_key if s else None

    def cancel_open_streams(self) -> list[AppendOp]:
        """Closing appends with ``status: cancelled`` for every stream not yet completed/cancelled."""
        ops: list[AppendOp] = []
        for s in self._streams.values():
            if s.cancelled or s.completed:
                continue
            s.cancelled = True
            transport = {**s.transport, **self.default_headers, **self._injected, H_STATUS: "cancelled"}
            ops.append(AppendOp(s.stream_key, _append_message("", transport, dict(s.codec)), closing=True))
        return ops

    def recovery_update(self, stream_key: str, *, streaming: bool = False) -> UpdateOp:
        """The full-content ``updateMessage`` that repairs a stream after a failed append.

        Status is ``cancelled`` when the stream was cancelled, else ``complete`` (encoder.ts
        ``_doFlush``), or ``streaming`` for a repair sent before the stream's closing append.
        """
        s = self._by_key.get(stream_key)
        if s is None:
            msg = f"no stream for key {stream_key!r}"
            raise CodecError(msg, field="stream_key")
        status = "streaming" if streaming else "cancelled" if s.cancelled else "complete"
        transport = {**s.transport, H_STATUS: status}
        return UpdateOp(stream_key, _append_message(s.text.value, transport, dict(s.codec)))

    # --- for subclasses ------------------------------------------------------------------------

    def discrete(self, data: Any, codec: dict[str, str], *, ephemeral: bool = False) -> OutboundMessage:
        """A discrete ``ai-output`` (``stream: false``)."""
        transport = {**self.default_headers, H_STREAM: "false", **self._injected}
        return OutboundMessage(
            name=AI_OUTPUT, data=data, extras=build_extras(transport, codec, ephemeral=ephemeral)
        )

    def open_stream(self, sid: str, codec: dict[str, str]) -> PublishOp:
        """``startStream``: publish the stream's first message and track it under a fresh key."""
        transport = {**self.default_headers, H_STREAM: "true", H_STATUS: "streaming", H_STREAM_ID: sid}
        transport.update(self._injected)
        self._seq += 1
        key = f"{self.default_headers.get('codec-message-id', '')}:{sid}:{self._seq}"
        stream = _Stream(key, sid, _Text(), transport, codec)
        self._streams[sid] = stream
        self._by_key[key] = stream
        msg = OutboundMessage(name=AI_OUTPUT, data="", extras=build_extras(transport, codec))
        return PublishOp(msg, stream_key=key)

    def has_stream(self, sid: str) -> bool:
        return sid in self._streams

    def require_stream(self, sid: str, chunk: Mapping[str, Any], verb: str) -> _Stream:
        """The tracked stream, or the JS ``no active stream`` error."""
        s = self._streams.get(sid)
        if s is None:
            msg = f"unable to {verb} stream; no active stream for streamId {sid!r}"
            raise CodecError(msg, field="streamId", payload=chunk)
        return s

    def append_stream(self, sid: str, delta: str, chunk: Mapping[str, Any]) -> AppendOp:
        """``appendStream``: the append carries the stream's persistent headers (re-stamped)."""
        s = self.require_stream(sid, chunk, "append to")
        s.text.add(delta)
        transport = {**s.transport, **self._injected}
        return AppendOp(s.stream_key, _append_message(delta, transport, dict(s.codec)))

    def close_stream(self, sid: str, closing_codec: Mapping[str, str], chunk: Mapping[str, Any]) -> AppendOp:
        """``closeStream``: the closing append (``status: complete``) merges the closing codec headers."""
        s = self.require_stream(sid, chunk, "close")
        s.completed = True
        transport = {**s.transport, **self.default_headers, **self._injected, H_STATUS: "complete"}
        codec = {**s.codec, **closing_codec}
        return AppendOp(s.stream_key, _append_message("", transport, codec), closing=True)


def _append_message(data: str, transport: dict[str, str], codec: dict[str, str]) -> OutboundMessage:
    return OutboundMessage(name=None, data=data, extras=build_extras(transport, codec))


# --- decoding -------------------------------------------------------------------------------------


@fast_init
@dataclass(frozen=True, slots=True)
class Decoded:
    """What one wire message decodes to; the message name fixes the direction."""

    inputs: list[Event] = field(default_factory=list)
    outputs: list[Event] = field(default_factory=list)


@dataclass(slots=True)
class StreamTracker:
    """The receiving side's view of one stream (``StreamSequenceState``)."""

    name: str
    stream_id: str
    text: _Text
    # The message's own header mappings (read only, never changed in place) or copies of them.
    codec: Mapping[str, str]
    transport: Mapping[str, str]
    version: str
    closed: bool = False

    @property
    def accumulated(self) -> str:
        return self.text.value

    @accumulated.setter
    def accumulated(self, value: str) -> None:
        self.text = _Text(value)


_CLOSED_STREAM = StreamTracker("", "", _CLOSED_TEXT, NO_HEADERS, NO_HEADERS, "", closed=True)
"""What a closed stream's serial maps to (see ``DecoderCore._close``); never changed: every path
returns on ``closed`` before writing to a tracker."""


class DecoderCore:
    """Per-channel stateful decoder core (one per conversation tree).

    Never raises on wire content (any channel publisher can write garbage): unknown kinds, malformed
    JSON and foreign messages decode to nothing; ``strict=True`` turns those silent drops into
    :class:`CodecError` for diagnostics and tests. Subclasses implement the hooks below.
    """

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict
        self._trackers: dict[str, StreamTracker] = {}

    # --- codec hooks ---------------------------------------------------------------------------

    def decode_input(
        self, kind: str, codec: Mapping[str, str], transport: Mapping[str, str], data: Any
    ) -> list[Event]:
        raise NotImplementedError

    def decode_output(
        self, kind: str, codec: Mapping[str, str], transport: Mapping[str, str], data: Any
    ) -> list[Event]:
        """A discrete ``ai-output`` (including any lifecycle repair events that lead it)."""
        raise NotImplementedError

    def build_start(self, t: StreamTracker, run_id: str) -> list[Event]:
        raise NotImplementedError

    def build_delta(self, t: StreamTracker, delta: str) -> list[Event]:
        raise NotImplementedError

    def build_end(self, t: StreamTracker, closing: Mapping[str, str]) -> list[Event]:
        raise NotImplementedError

    def repair_filter(self) -> Callable[[list[Event]], list[Event]] | None:
        """For refolding one run's outputs in serial order: a fresh filter taking each message's
        events in turn and dropping the :class:`Repair` events that folding in that order would not
        have needed (the opening chunks they stand in for came from an older message that folded
        later). None: the codec's repairs are harmless when repeated."""
        return None

    # --- core dispatch (decoder.ts) ------------------------------------------------------------

    def decode(self, msg: InboundMessage) -> Decoded:
        """Decode one delivery (live or history). Replays already incorporated decode to nothing."""
        events = self.decode_events(msg)
        if msg.name == AI_INPUT:
            return Decoded(inputs=events)
        return Decoded(outputs=events)

    def decode_events(self, msg: InboundMessage) -> list[Event]:
        """:meth:`decode` without its :class:`Decoded`: the events, inputs for an ``ai-input`` and
        outputs otherwise (the tree's per-message path)."""
        match msg.action:
            case "message.create":
                if msg.transport_headers.get(H_STREAM) == "true":
                    return self._streamed_create(msg)
                return self._discrete(msg)
            case "message.append":
                return self._append(msg)
            case "message.update":
                return self._update(msg)
            case "message.delete":
                if msg.serial and (t := self._trackers.get(msg.serial)) is not None:
                    self._close(msg.serial, t)
                return []
            case _:
                return []

    def fail(self, message: str, field_name: str, payload: object) -> None:
        if self.strict:
            raise CodecError(message, field=field_name, payload=payload)

    def _discrete(self, msg: InboundMessage) -> list[Event]:
        # Read only (decoders take Mappings): no per-message copies.
        codec = msg.codec_headers
        transport = msg.transport_headers
        kind = codec.get(KIND, "")
        if msg.name == AI_INPUT:
            out = self.decode_input(kind, codec, transport, msg.data)
            if not out and kind != "regenerate":
                self.fail(f"unknown ai-input kind {kind!r}", "kind", codec)
            return out
        if msg.name == AI_OUTPUT:
            out = self.decode_output(kind, codec, transport, msg.data)
            if not out:
                self.fail(f"unknown ai-output kind {kind!r}", "kind", codec)
            return out
        return []

    def _new_tracker(
        self,
        msg: InboundMessage,
        serial: str,
        data: str,
        transport: Mapping[str, str] | None = None,
        codec: Mapping[str, str] | None = None,
    ) -> StreamTracker:
        """``transport``/``codec``: the headers the tracker keeps, when the caller chose them
        (default: copies of the message's)."""
        if transport is None:
            transport = dict(msg.transport_headers)
        t = StreamTracker(
            name=msg.name or "",
            stream_id=transport.get(H_STREAM_ID, ""),
            text=_Text(data),
            codec=dict(msg.codec_headers) if codec is None else codec,
            transport=transport,
            version=msg.version_serial if msg.version_serial is not None else serial,
        )
        self._trackers[serial] = t
        return t

    def _streamed_create(self, msg: InboundMessage) -> list[Event]:
        serial = msg.serial
        if not serial or serial in self._trackers:
            return []
        return self._start_events(self._new_tracker(msg, serial, ""))

    @staticmethod
    def _already_incorporated(t: StreamTracker, version: str | None) -> bool:
        if version is not None and version <= t.version:
            return True
        if t.closed:
            return True
        if version is not None:
            t.version = version
        return False

    def _close(self, serial: str, t: StreamTracker) -> None:
        # A closed stream is never read or extended again (every path checks ``closed`` first and
        # ignores the message): its serial keeps one shared closed tracker, not a tracker, its text
        # and two header maps per stream the session ever saw.
        t.closed = True
        t.text = _CLOSED_TEXT
        self._trackers[serial] = _CLOSED_STREAM

    def _terminal(
        self, serial: str, t: StreamTracker, status: str | None, closing: Mapping[str, str], out: list[Event]
    ) -> None:
        if status == "complete":
            out.extend(self._end_events(t, closing))
            self._close(serial, t)
        elif status == "cancelled":
            self._close(serial, t)

    def _append(self, msg: InboundMessage) -> list[Event]:
        serial = msg.serial
        if not serial:
            return []
        t = self._trackers.get(serial)
        if t is None:
            if not has_ai_envelope(msg):
                return []  # a foreign append on a shared channel
            # Out of contract (the platform should deliver a first post-attach append as an update).
            return self._update(msg)
        if self._already_incorporated(t, msg.version_serial):
            return []
        delta = msg.data if isinstance(msg.data, str) else ""
        out: list[Event] = []
        if delta:
            t.text.add(delta)
            out.extend(self._delta_events(t, delta))
        self._terminal(serial, t, msg.transport_headers.get(H_STATUS), msg.codec_headers, out)
        return out

    def _update(self, msg: InboundMessage) -> list[Event]:
        serial = msg.serial
        if not serial:
            return []
        t = self._trackers.get(serial)
        if t is None:
            return self._first_contact(msg, serial)
        if self._already_incorporated(t, msg.version_serial):
            return []
        data = msg.data if isinstance(msg.data, str) else ""
        if data.startswith(t.accumulated):
            delta = data[len(t.accumulated) :]
            out: list[Event] = []
            if delta:
                t.accumulated = data
                out.extend(self._delta_events(t, delta))
            self._terminal(serial, t, msg.transport_headers.get(H_STATUS), msg.codec_headers, out)
            return out
        # A replacement (not a prefix extension): adopt the new state, emit nothing.
        t.accumulated = data
        t.codec = dict(msg.codec_headers)
        t.transport = dict(msg.transport_headers)
        return []

    def _first_contact(self, msg: InboundMessage, serial: str) -> list[Event]:
        transport = msg.transport_headers
        if transport.get(H_STREAM) != "true":
            return self._discrete(msg)
        codec = msg.codec_headers
        status = transport.get(H_STATUS)
        data = msg.data if isinstance(msg.data, str) else ""
        closes = status in ("complete", "cancelled")
        # A stream that closes here (history's rolled-up streams) is read only now: its tracker
        # reads the message's own headers; one left open keeps copies.
        t = self._new_tracker(
            msg, serial, data, transport if closes else dict(transport), codec if closes else dict(codec)
        )
        out = self._start_events(t)
        if data:
            out.extend(self._delta_events(t, data))
        if status == "complete":
            out.extend(self._end_events(t, codec))
        if closes:
            self._close(serial, t)
        return out

    # --- hooks (define-codec.ts buildHooks: only ai-output streams rebuild) ---------------------

    def _start_events(self, t: StreamTracker) -> list[Event]:
        if t.name != AI_OUTPUT:
            return []
        return self.build_start(t, t.transport.get(H_RUN_ID, ""))

    def _delta_events(self, t: StreamTracker, delta: str) -> list[Event]:
        return self.build_delta(t, delta) if t.name == AI_OUTPUT else []

    def _end_events(self, t: StreamTracker, closing: Mapping[str, str]) -> list[Event]:
        return self.build_end(t, closing) if t.name == AI_OUTPUT else []
