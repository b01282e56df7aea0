"""Per-channel ordered message log: serials, mutable-message versions, history, replay, retention.

Pure: no I/O, no asyncio; the caller passes the clock and a :class:`LogSink` that persists.

Model. Each published ProtocolMessage gets one *channel serial* ``<ms14>-<ctr3>@<series>``; its
i-th message gets the serial ``<channelSerial>:<i03>``. Serials sort lexicographically in publish
order, which both SDKs and AIT rely on. A message is a :class:`MessageRecord` holding its versions:
the create, then every update / delete / append, each with its own version serial minted the same
way. The replay log is the sequence of versions in channel-serial order; history shows one entry
per message at its create position with the latest content rolled up.
"""

from __future__ import annotations

import bisect
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent_worker.errors import ProtocolError
from agent_worker.server.codec import MSGPACK, Format, drop_none, encode_item, pack

__all__ = [
    "APPEND",
    "CREATE",
    "DELETE",
    "UPDATE",
    "ChannelLog",
    "Event",
    "LogSink",
    "MessageRecord",
    "Retention",
    "Version",
    "channel_part",
    "parse_channel_serial",
]

CREATE, UPDATE, DELETE, APPEND = 0, 1, 2, 5
MUTATIONS = frozenset({UPDATE, DELETE, APPEND})
CONTENT_FIELDS = ("name", "data", "encoding", "extras")
_DELTA_FIELDS = ("name", "extras", "data", "encoding")  # an append's delta, in its wire order
_OP_FIELDS = ("clientId", "description", "metadata")

_CS_RE = re.compile(r"^(\d{14})-(\d{3})@([\w-]+)$")


def parse_channel_serial(serial: str) -> tuple[int, int, str] | None:
    m = _CS_RE.match(serial)
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2)), m.group(3)


def channel_part(serial: str) -> str:
    """The channel serial of a message/version serial (``cs:idx`` → ``cs``); identity otherwise."""
    head, sep, tail = serial.rpartition(":")
    if sep and tail.isdigit() and _CS_RE.match(head):
        return head
    return serial


def new_series() -> str:
    return secrets.token_hex(5)


@dataclass(frozen=True, slots=True)
class Retention:
    """How much of each channel's log to keep; ``None`` fields mean unbounded."""

    max_messages: int | None = None
    max_age_s: float | None = None
    max_bytes: int | None = None  # per channel, counting each version's data (+256 for the envelope)


#: What the in-memory store keeps per channel unless told otherwise (``--data-dir`` keeps all): a
#: persisted channel's 24 h (Ably's Free package), about 16 MiB and 10,000 messages. Channels
#: without a persistence rule keep less (see ``Hub.retention_for``: Ably's two minutes).
DEFAULT_MEMORY_RETENTION = Retention(max_messages=10_000, max_age_s=24 * 3600, max_bytes=16 << 20)


def _approx_size(m: dict[str, Any]) -> int:
    data = m.get("data")
    return 256 + (len(data) if isinstance(data, (str, bytes, bytearray)) else 256 if data is not None else 0)


@dataclass(slots=True)
class Version:
    serial: str
    channel_serial: str
    action: int
    timestamp: int
    # create/update/delete: the full content after the op. append: the fragment (data/encoding)
    # plus the name and extras in force after it, so a delta renders without a walk.
    fields: dict[str, Any]
    op: dict[str, Any] = field(default_factory=dict)  # version clientId / description / metadata
    connection_id: str | None = None  # performer, for echo suppression


@dataclass(slots=True)
class MessageRecord:
    serial: str
    channel_serial: str
    id: str | None
    client_id: str | None
    connection_id: str | None
    timestamp: int
    versions: list[Version]
    content: dict[str, Any]  # latest rolled-up content
    ephemeral: bool = False
    # render_latest() encoded per format, with the version count it was encoded at (see history_item)
    # (made at the first encode: most messages are read by no one before the deferred encode)
    _wire: dict[str, tuple[int, bytes]] | None = field(default=None, repr=False, compare=False)
    # The extras object the appends share and its msgpack bytes (see ChannelLog._append_extras).
    _extras: tuple[Any, bytes] | None = field(default=None, repr=False, compare=False)

    @property
    def latest_action(self) -> int:
        """CREATE while the message has only its create, DELETE if its last full version (not an
        append) is a delete, else UPDATE (a plain loop: a generator was ~1 µs per history item)."""
        versions = self.versions
        n = len(versions)
        if n == 1:
            return DELETE if versions[0].action == DELETE else CREATE
        for i in range(n - 1, -1, -1):
            action = versions[i].action
            if action != APPEND:
                return DELETE if action == DELETE else UPDATE
        return UPDATE

    def content_at(self, k: int) -> dict[str, Any]:
        if k == len(self.versions) - 1:
            return dict(self.content)
        j = k
        while self.versions[j].action == APPEND:
            j -= 1
        out = dict(self.versions[j].fields)
        for v in self.versions[j + 1 : k + 1]:
            out["data"] = _concat(out.get("data"), v.fields.get("data"))
            out["name"] = v.fields.get("name")
            out["extras"] = v.fields.get("extras")
        return out

    def _header(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "clientId": self.client_id,
            "connectionId": self.connection_id,
            "timestamp": self.timestamp,
            "serial": self.serial,
        }

    @staticmethod
    def _version_obj(v: Version) -> dict[str, Any]:
        out: dict[str, Any] = {"serial": v.serial, "timestamp": v.timestamp}
        op = v.op
        if op:
            for k in _OP_FIELDS:
                value = op.get(k)
                if value is not None:
                    # Without None inside (metadata is envelope, not content): what the wire carries.
                    out[k] = drop_none(value) if isinstance(value, (dict, list)) else value
        return out

    def render(self, k: int, *, first_sight: bool = False) -> dict[str, Any]:
        """Message dict for delivering version ``k``; an append is a delta unless ``first_sight``.

        Unset fields are left out, in the order the wire has them, so for a msgpack subscriber the
        dict is the wire message as it is (``codec.outbound_payload`` adds base64 for JSON)."""
        v = self.versions[k]
        out = self._set_header()
        if v.action == APPEND and not first_sight:
            fields = v.fields
            for key in _DELTA_FIELDS:
                value = fields.get(key)
                if value is not None:
                    out[key] = value
            out["action"] = APPEND
        else:
            # The latest version's content is self.content itself (read here, not copied).
            content = self.content if k == len(self.versions) - 1 else self.content_at(k)
            for key, value in content.items():
                if value is not None:
                    out[key] = value
            out["action"] = v.action if v.action in (CREATE, DELETE) else UPDATE
        out["version"] = self._version_obj(v)
        return out

    def _set_header(self) -> dict[str, Any]:
        """The envelope fields that are set, in the wire's order (no ``None`` to drop later)."""
        out: dict[str, Any] = {}
        if self.id is not None:
            out["id"] = self.id
        if self.client_id is not None:
            out["clientId"] = self.client_id
        if self.connection_id is not None:
            out["connectionId"] = self.connection_id
        out["timestamp"] = self.timestamp
        out["serial"] = self.serial
        return out

    def render_latest(self) -> dict[str, Any]:
        out = self._header()
        out.update(self.content)
        out["action"] = self.latest_action
        out["version"] = self._version_obj(self.versions[-1])
        return out

    def _latest_clean(self) -> dict[str, Any]:
        """:meth:`render_latest` without its unset fields, built in one pass: the message's header,
        content, action and version object, none of which holds a ``None`` below the top level
        (the version object is built without them, ``data`` and ``extras`` go verbatim)."""
        out = self._set_header()
        for key, value in self.content.items():
            if value is not None:
                out[key] = value
        out["action"] = self.latest_action
        out["version"] = self._version_obj(self.versions[-1])
        return out

    def history_item(self, fmt: Format) -> bytes:
        """:meth:`render_latest` encoded for a ``fmt`` history page, kept until the next version:
        a page is then its messages' bytes joined (codec.join_items) instead of 1,000 dicts rendered
        and encoded per request. Byte for byte ``codec.encode_item(self.render_latest(), fmt)``; a
        msgpack item is packed from :meth:`_latest_clean` without the ``None`` walk."""
        n = len(self.versions)
        wire = self._wire
        if wire is None:
            wire = self._wire = {}
        else:
            cached = wire.get(fmt)
            if cached is not None and cached[0] == n:
                return cached[1]
        encoded = pack(self._latest_clean()) if fmt == MSGPACK else encode_item(self.render_latest(), fmt)
        wire[fmt] = (n, encoded)
        return encoded

    def render_versions(self) -> list[dict[str, Any]]:
        """Oldest first; a run of appends collapses to its last version (the aggregate)."""
        out: list[dict[str, Any]] = []
        for k, v in enumerate(self.versions):
            nxt = self.versions[k + 1] if k + 1 < len(self.versions) else None
            if v.action == APPEND and nxt is not None and nxt.action == APPEND:
                continue
            out.append(self.render(k, first_sight=True))
        return out

    def fold(self, v: Version) -> None:
        """Apply an already-minted version (live or when loading from the store)."""
        if v.action == APPEND:
            self.content["data"] = _concat(self.content.get("data"), v.fields.get("data"))
            self.content["name"] = v.fields.get("name")
            self.content["extras"] = v.fields.get("extras")
        elif v.action != CREATE:
            self.content = dict(v.fields)
        self.versions.append(v)


def _append_extras(record: MessageRecord, extras: Any) -> Any:
    """The extras an append's version keeps: the message's current extras object when the append
    carries none or the same ones (a streamed append repeats its message's headers: both agents
    send them with every token), so the log holds one extras per message, not one per append.
    That is memory, and what the collector walks: the server makes no cyclic garbage while
    streaming, so its collections walk only what the log keeps (2 dicts fewer per append, of ~5).
    "The same" is compared as msgpack bytes, which tell ``True`` from ``1`` and keep key order
    (Python's ``==`` does neither), so every version still renders exactly what was published."""
    current = record.content.get("extras")
    if extras is None or extras is current:
        return current
    if current is None or type(extras) is not type(current):
        return extras
    try:
        cached = record._extras
        if cached is None or cached[0] is not current:
            cached = record._extras = (current, pack(current))
        same = pack(extras) == cached[1]
    except (TypeError, ValueError, OverflowError):
        return extras
    return current if same else extras


def _concat(a: Any, b: Any) -> Any:
    if b is None:
        return a
    if a is None:
        return b
    _check_concat(a, b)
    return a + b


def _check_concat(a: Any, b: Any) -> None:
    """40013 unless ``a + b`` is an append of like data (checked without building the result)."""
    if a is None or b is None:
        return
    if (isinstance(a, str) and isinstance(b, str)) or (isinstance(a, bytes) and isinstance(b, bytes)):
        return
    msg = "append data must have the same type as the message data (string or binary)"
    raise ProtocolError(msg, code=40013)


_SERIAL_SUFFIX = tuple(f":{i:03d}" for i in range(1000))
"""``f":{i:03d}"``, the i-th message's part of its serial, made once for the first 1,000."""

Event = tuple[str, str, int]
"""One replayable entry: (channel serial, message serial, version index). A plain tuple of strings
and an int, which the collector stops tracking at its first pass: the log keeps one per version,
and later collections need not walk them (a tuple subclass, a dataclass would stay tracked)."""


class LogSink(Protocol):
    def add_version(self, channel: str, record: MessageRecord, index: int) -> None: ...

    def remove_messages(self, channel: str, serials: Sequence[str], horizon: str | None) -> None: ...


class _NullSink:
    def add_version(self, channel: str, record: MessageRecord, index: int) -> None:
        return None

    def remove_messages(self, channel: str, serials: Sequence[str], horizon: str | None) -> None:
        return None


@dataclass(slots=True)
class Published:
    """What one inbound ProtocolMessage did: its channel serial and (record, version index) pairs."""

    channel_serial: str
    items: list[tuple[MessageRecord, int]]
    serials: list[str | None]  # per message, for the ACK ``res`` / REST response
    duplicate: bool = False


class ChannelLog:
    def __init__(self, name: str, series: str | None = None, sink: LogSink | None = None) -> None:
        self.name = name
        self.series = series or new_series()
        self.sink: LogSink = sink or _NullSink()
        self._last_ms = 0
        self._last_ctr = -1
        self.records: dict[str, MessageRecord] = {}
        self.order: list[str] = []  # message serials in create order (sorted)
        self.events: list[Event] = []
        self._event_cs: list[str] = []
        self._ids: dict[str, list[str]] = {}  # client message id -> serials (idempotent publish)
        self.horizon: str | None = None  # newest channel serial dropped by retention
        self.head: str = self.zero_serial
        self.bytes = 0  # approximate bytes held (see Retention.max_bytes)
        self._sizes: dict[str, int] = {}

    # -- serials ---------------------------------------------------------------------------

    @property
    def zero_serial(self) -> str:
        return f"{0:014d}-000@{self.series}"

    def _mint(self, now_ms: int) -> str:
        if now_ms > self._last_ms:
            self._last_ms, self._last_ctr = now_ms, 0
        else:
            self._last_ctr += 1
            if self._last_ctr > 999:
                self._last_ms, self._last_ctr = self._last_ms + 1, 0
        self.head = f"{self._last_ms:014d}-{self._last_ctr:03d}@{self.series}"
        return self.head

    def _observe(self, cs: str) -> None:
        parsed = parse_channel_serial(cs)
        if parsed is not None and (parsed[0], parsed[1]) > (self._last_ms, self._last_ctr):
            self._last_ms, self._last_ctr = parsed[0], parsed[1]
            self.head = cs

    # -- writes ----------------------------------------------------------------------------

    def validate(self, items: Sequence[dict[str, Any]]) -> list[MessageRecord | None]:
        """Check a batch before applying it atomically; returns each mutation's target record."""
        targets: list[MessageRecord | None] = []
        for m in items:
            action = m.get("action", CREATE)
            if action == CREATE:
                targets.append(None)
                continue
            if action not in MUTATIONS:
                msg = f"message action {action} cannot be published"
                raise ProtocolError(msg, code=40003)
            serial = m.get("serial")
            if not isinstance(serial, str) or not serial:
                msg = "an update, delete or append must carry the serial of the message it changes"
                raise ProtocolError(msg, code=40003)
            record = self.records.get(serial)
            if record is None:
                msg = f"no message with serial {serial!r} on this channel"
                raise ProtocolError(msg, code=40400, status_code=404)
            if action == APPEND:
                _check_concat(record.content.get("data"), m.get("data"))
                if (m.get("data") is not None) and (m.get("encoding") or None) != (
                    record.content.get("encoding") or None
                ):
                    msg = "append encoding must match the message encoding"
                    raise ProtocolError(msg, code=40013)
            targets.append(record)
        return targets

    def find_duplicate(self, items: Sequence[dict[str, Any]]) -> list[str] | None:
        """Serials of an earlier publish with the same client-supplied ids (idempotent retry)."""
        # One pass, out at the first message without an id (every append): ~1.5 µs per publish.
        found: list[str] = []
        for m in items:
            i = m.get("id")
            if not isinstance(i, str):
                return None
            serials = self._ids.get(i)
            if not serials:
                return None
            found.append(serials[-1])
        return found or None

    def publish(
        self,
        items: Sequence[dict[str, Any]],
        *,
        connection_id: str | None,
        client_id: str | None,
        now_ms: int,
        message_id_base: str | None = None,
    ) -> Published:
        """Append a batch of creates and/or mutations atomically (call :meth:`validate` first)."""
        targets = self.validate(items)
        cs = self._mint(now_ms)
        out_items: list[tuple[MessageRecord, int]] = []
        serials: list[str | None] = []
        out = Published(cs, out_items, serials)
        sizes = self._sizes
        for i, (m, target) in enumerate(zip(items, targets, strict=True)):
            serial = cs + _SERIAL_SUFFIX[i] if i < 1000 else f"{cs}:{i:03d}"
            size = _approx_size(m)
            self.bytes += size
            key = serial if target is None else target.serial
            sizes[key] = sizes.get(key, 0) + size
            if target is None:
                record = self._create(m, serial, cs, i, connection_id, client_id, now_ms, message_id_base)
                out_items.append((record, 0))
            else:
                idx = self._mutate(
                    target,
                    m,
                    serial=serial,
                    cs=cs,
                    connection_id=connection_id,
                    client_id=client_id,
                    now_ms=now_ms,
                )
                out_items.append((target, idx))
            serials.append(serial)
        return out

    def _create(  # noqa: PLR0917 - called per message: positional is cheaper
        self,
        m: dict[str, Any],
        serial: str,
        cs: str,
        i: int,
        connection_id: str | None,
        client_id: str | None,
        now_ms: int,
        id_base: str | None,
    ) -> MessageRecord:
        content = {k: m[k] for k in CONTENT_FIELDS if m.get(k) is not None}
        extras = m.get("extras")
        ephemeral = isinstance(extras, dict) and extras.get("ephemeral") is True
        msg_id = m.get("id") or (f"{id_base}:{i}" if id_base else None)
        ts = now_ms  # server time, so history time filters follow serial order
        v = Version(serial, cs, CREATE, ts, dict(content), {}, connection_id)
        record = MessageRecord(
            serial=serial,
            channel_serial=cs,
            id=msg_id,
            client_id=m.get("clientId") or client_id,
            connection_id=connection_id,
            timestamp=ts,
            versions=[v],
            content=content,
            ephemeral=ephemeral,
        )
        if ephemeral:
            return record
        self._store(record, 0)
        if isinstance(m.get("id"), str):
            self._ids.setdefault(m["id"], []).append(serial)
        return record

    def _mutate(
        self,
        record: MessageRecord,
        m: dict[str, Any],
        *,
        serial: str,
        cs: str,
        connection_id: str | None,
        client_id: str | None,
        now_ms: int,
    ) -> int:
        action: int = m["action"]
        version = m.get("version")
        op = (
            {k: version[k] for k in _OP_FIELDS if version.get(k) is not None}
            if isinstance(version, dict)
            else {}
        )
        # The message's own clientId is the creator's (SDKs copy it from the original); the
        # version records who performed the operation.
        if "clientId" not in op and client_id:
            op["clientId"] = client_id
        if action == APPEND:
            fields: dict[str, Any] = {
                "data": m.get("data"),
                "encoding": m.get("encoding") if m.get("data") is not None else None,
                "name": m["name"] if m.get("name") is not None else record.content.get("name"),
                "extras": _append_extras(record, m.get("extras")),
            }
        else:
            fields = dict(record.content)
            for k in ("name", "extras"):
                if m.get(k) is not None:
                    fields[k] = m[k]
            if m.get("data") is not None:
                fields["data"] = m["data"]
                fields["encoding"] = m.get("encoding")
            fields = {k: v for k, v in fields.items() if v is not None}
        v = Version(serial, cs, action, now_ms, fields, op, connection_id)
        record.fold(v)
        idx = len(record.versions) - 1
        if not record.ephemeral:
            self.events.append((cs, record.serial, idx))
            self._event_cs.append(cs)
            self.sink.add_version(self.name, record, idx)
        return idx

    def _store(self, record: MessageRecord, idx: int) -> None:
        self.records[record.serial] = record
        self.order.append(record.serial)
        self.events.append((record.channel_serial, record.serial, idx))
        self._event_cs.append(record.channel_serial)
        self.sink.add_version(self.name, record, idx)

    def restore(self, record_meta: dict[str, Any], version: Version) -> None:
        """Rebuild state from a stored version (no new serials, no sink writes)."""
        self._observe(version.channel_serial)
        size = _approx_size(version.fields)
        if version.action == CREATE:
            record = MessageRecord(
                serial=version.serial,
                channel_serial=version.channel_serial,
                id=record_meta.get("id"),
                client_id=record_meta.get("clientId"),
                connection_id=record_meta.get("connectionId"),
                timestamp=version.timestamp,
                versions=[version],
                content=dict(version.fields),
            )
            self.records[record.serial] = record
            self.order.append(record.serial)
            if record.id:
                self._ids.setdefault(record.id, []).append(record.serial)
            idx = 0
            self._sizes[record.serial] = size
        else:
            target = self.records.get(record_meta["messageSerial"])
            if target is None:
                return
            target.fold(version)
            record = target
            idx = len(target.versions) - 1
            self._sizes[record.serial] = self._sizes.get(record.serial, 0) + size
        self.bytes += size
        self.events.append((version.channel_serial, record.serial, idx))
        self._event_cs.append(version.channel_serial)

    def finish_restore(self) -> None:
        self.order.sort()
        order = sorted(range(len(self.events)), key=lambda i: self._event_cs[i])
        self.events = [self.events[i] for i in order]
        self._event_cs = [self._event_cs[i] for i in order]

    # -- reads -----------------------------------------------------------------------------

    def resumable_from(self, channel_serial: str) -> bool:
        """Whether every event after ``channel_serial`` is still in the log."""
        parsed = parse_channel_serial(channel_serial)
        if parsed is None or parsed[2] != self.series:
            return False
        if channel_serial > self.head:
            return False
        return self.horizon is None or channel_serial >= self.horizon

    def events_after(self, channel_serial: str) -> list[Event]:
        start = bisect.bisect_right(self._event_cs, channel_serial)
        return self.events[start:]

    def history(
        self,
        *,
        backwards: bool = True,
        limit: int = 100,
        start: int | None = None,
        end: int | None = None,
        until: str | None = None,
        cursor: str | None = None,
    ) -> tuple[list[MessageRecord], str | None]:
        """One page of messages (latest versions) and the cursor for the next page, if any."""
        order = self.order
        lo, hi = 0, len(order)
        if until is not None:
            hi = bisect.bisect_right(order, channel_part(until) + ";")
        if cursor is not None:
            if backwards:
                hi = min(hi, bisect.bisect_left(order, cursor))
            else:
                lo = bisect.bisect_right(order, cursor)
        indices: Iterable[int] = range(hi - 1, lo - 1, -1) if backwards else range(lo, hi)
        page: list[MessageRecord] = []
        for i in indices:
            record = self.records[order[i]]
            if start is not None and record.timestamp < start:
                if backwards:
                    break
                continue
            if end is not None and record.timestamp > end:
                if backwards:
                    continue
                break
            if len(page) == limit:
                return page, page[-1].serial
            page.append(record)
        return page, None

    # -- retention -------------------------------------------------------------------------

    def prune(self, retention: Retention | None, now_ms: int, *, age_slack_ms: int = 0) -> int:
        """Drop the oldest messages beyond the retention policy; returns how many went.

        ``age_slack_ms``: drop by age only once the oldest message is that much past the window
        (then everything past it goes), so a channel busy for longer than its window rebuilds its
        event list once per slack, not at every publish (the publish path passes a tenth of the
        window; the sweep none)."""
        if retention is None or not self.order:
            return 0
        drop = 0
        cap = retention.max_messages
        # Prune in batches (10% slack) so a full channel does not rebuild its event list per publish.
        if cap is not None and len(self.order) > cap + cap // 10:
            drop = len(self.order) - cap
        if retention.max_age_s is not None:
            cutoff = now_ms - int(retention.max_age_s * 1000)
            if (
                age_slack_ms
                and drop < len(self.order)
                and self.records[self.order[drop]].timestamp >= cutoff - age_slack_ms
            ):
                cutoff = 0  # not yet a slack's worth past the window
            while drop < len(self.order) and self.records[self.order[drop]].timestamp < cutoff:
                drop += 1
        if retention.max_bytes is not None and self.bytes > retention.max_bytes:
            # Down to 90% of the cap, so a full channel is not pruned on every publish.
            excess = self.bytes - retention.max_bytes * 9 // 10
            freed = sum(self._sizes.get(s, 0) for s in self.order[:drop])
            while drop < len(self.order) and freed < excess:
                freed += self._sizes.get(self.order[drop], 0)
                drop += 1
        if drop == 0:
            return 0
        gone = self.order[:drop]
        gone_set = set(gone)
        del self.order[:drop]
        for s in gone:
            self.bytes -= self._sizes.pop(s, 0)
            record = self.records.pop(s)
            if record.id and record.id in self._ids:
                self._ids[record.id] = [x for x in self._ids[record.id] if x != s]
                if not self._ids[record.id]:
                    del self._ids[record.id]
        dropped_cs = [e[0] for e in self.events if e[1] in gone_set]
        keep = [i for i, e in enumerate(self.events) if e[1] not in gone_set]
        self.events = [self.events[i] for i in keep]
        self._event_cs = [self._event_cs[i] for i in keep]
        if dropped_cs:
            newest = max(dropped_cs)
            self.horizon = newest if self.horizon is None else max(self.horizon, newest)
        self.sink.remove_messages(self.name, gone, self.horizon)
        return drop
