"""Shared server state: channels, their attachments and fan-out, and the checks every publish passes.

Used by both the realtime connection handler and the REST handlers. Everything here runs on the
event loop without awaiting, so a publish is assigned its serial and fanned out atomically: every
subscriber sees the channel in serial order, and a publisher's echo is queued before its ACK.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from agent_worker.errors import AgentWorkerError, AuthError, ProtocolError
from agent_worker.server import constants as C
from agent_worker.server.auth import KeyRing, Principal
from agent_worker.server.channel_rules import ChannelRules
from agent_worker.server.codec import MSGPACK, Format, encode_wire, outbound_payload, wire_payload
from agent_worker.server.config import ServerConfig
from agent_worker.server.log import CREATE, DELETE, ChannelLog, MessageRecord, Published, Retention
from agent_worker.server.presence import ENTER, LEAVE, PRESENT, UPDATE, PresenceSet, member_key
from agent_worker.server.rollup import AppendRollup
from agent_worker.server.store import Store

__all__ = ["SIZE_PER_FRAME_BYTE", "Attachment", "ChannelRuntime", "Hub", "RateLimiter", "Subscriber"]

log = structlog.get_logger(__name__)


class Subscriber(Protocol):
    """What a channel needs from a realtime connection to deliver to it."""

    id: str
    echo: bool
    fmt: Format

    def send(self, msg: dict[str, Any]) -> None: ...

    def send_frame(self, data: str | bytes) -> None:
        """Queue a MESSAGE or PRESENCE frame already encoded in :attr:`fmt` (see ``deliver``)."""


@dataclass(slots=True)
class Attachment:
    sub: Subscriber
    channel: str
    modes: int
    params: dict[str, str]
    attach_point: str  # channel serial at the (first) attach; later creates count as seen
    seen: set[str] = field(default_factory=set)  # older messages this attachment has been shown
    live: bool = True  # False while the connection has no transport (until it re-attaches)
    last_delivered: str = ""  # newest channel serial sent on the current transport

    def has_seen(self, record: MessageRecord) -> bool:
        return record.channel_serial > self.attach_point or record.serial in self.seen

    def mark_seen(self, record: MessageRecord) -> None:
        if record.channel_serial <= self.attach_point:
            self.seen.add(record.serial)


class RateLimiter:
    """Token bucket: ``rate`` events per second with a burst of ``rate``."""

    def __init__(self, rate: int) -> None:
        self.rate = float(rate)
        self.tokens = float(rate)
        self.at = time.monotonic()

    def take(self, n: int = 1) -> bool:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < n:
            return False
        self.tokens -= n
        return True


class ChannelRuntime:
    def __init__(self, log_: ChannelLog, rate: int, retention: Retention | None = None) -> None:
        self.log = log_
        self.name = log_.name
        self.presence = PresenceSet()
        self.attachments: dict[str, Attachment] = {}
        self.limiter = RateLimiter(rate)
        self.retention = retention  # what this channel's log keeps (see Hub.retention_for)
        self.used = 0  # Hub's use counter at the last use (least recently used go first)

    @property
    def idle(self) -> bool:
        """Nobody attached (resumable attachments count) or present."""
        return not self.attachments and not self.presence.members

    def deliver(
        self, published: Published, *, publisher_id: str | None, proto_id: str | None, now_ms: int
    ) -> None:
        """Fan a publish out to every live SUBSCRIBE attachment (appends per first sight).

        The frame is encoded once per (format, which messages the attachment sees for the first
        time) and the same bytes go to every subscriber of that kind: with N subscribers, one render
        and one encode instead of N."""
        frames: dict[tuple[Format, tuple[bool, ...]], str | bytes] = {}
        items = published.items
        cs = published.channel_serial
        for att in self.attachments.values():
            if not att.live or not att.modes & C.MODE_SUBSCRIBE:
                continue
            sub = att.sub
            if publisher_id is not None and sub.id == publisher_id and not sub.echo:
                continue
            sight = []
            for record, _ in items:
                sight.append(not att.has_seen(record))
                att.mark_seen(record)
            key = (sub.fmt, tuple(sight))
            frame = frames.get(key)
            if frame is None:
                frame = frames[key] = self._message_frame(published, key, publisher_id, proto_id, now_ms)
            sub.send_frame(frame)
            att.last_delivered = cs

    def _message_frame(
        self,
        published: Published,
        key: tuple[Format, tuple[bool, ...]],
        publisher_id: str | None,
        proto_id: str | None,
        now_ms: int,
    ) -> str | bytes:
        """The MESSAGE frame of ``published`` (what ``send`` would encode, built without ``None``s)."""
        fmt, sight = key
        frame: dict[str, Any] = {
            "action": C.MESSAGE,
            "channel": self.name,
            "channelSerial": published.channel_serial,
        }
        if proto_id is not None:
            frame["id"] = proto_id
        if publisher_id is not None:
            frame["connectionId"] = publisher_id
        frame["timestamp"] = now_ms
        # render() leaves unset fields out: a msgpack subscriber gets its dicts as they are.
        msgs = [
            record.render(idx, first_sight=first)
            for (record, idx), first in zip(published.items, sight, strict=True)
        ]
        frame["messages"] = msgs if fmt == MSGPACK else [outbound_payload(m, fmt) for m in msgs]
        return encode_wire(frame, fmt)

    def replay(self, att: Attachment, after: str) -> None:
        """Send every logged version after channel serial ``after``, grouped per channel serial."""
        batch: list[dict[str, Any]] = []
        batch_cs = ""
        for cs, message_serial, index in self.log.events_after(after):
            record = self.log.records.get(message_serial)
            if record is None:
                continue
            if batch and cs != batch_cs:
                self._send_replay(att, batch_cs, batch)
                batch = []
            batch_cs = cs
            batch.append(record.render(index, first_sight=not att.has_seen(record)))
            att.mark_seen(record)
        if batch:
            self._send_replay(att, batch_cs, batch)

    def _send_replay(self, att: Attachment, cs: str, msgs: list[dict[str, Any]]) -> None:
        if att.modes & C.MODE_SUBSCRIBE:
            att.sub.send({"action": C.MESSAGE, "channel": self.name, "channelSerial": cs, "messages": msgs})
        att.last_delivered = cs

    def rewind_records(self, spec: str, now_ms: int, horizon_ms: int | None = None) -> list[MessageRecord]:
        """What ``params.rewind`` (N messages, or ``30s``/``2m``/``1h``) replays, oldest first."""
        m = re.fullmatch(r"(\d+)([smh]?)", spec.strip())
        if m is None:
            return []
        n, unit = int(m.group(1)), m.group(2)
        if unit:
            cutoff = now_ms - n * {"s": 1000, "m": 60_000, "h": 3_600_000}[unit]
            page, _ = self.log.history(backwards=True, limit=100, start=max(cutoff, horizon_ms or 0))
        else:
            page, _ = self.log.history(backwards=True, limit=min(n, 100), start=horizon_ms)
        return list(reversed(page))

    def send_rewind(self, att: Attachment, records: Sequence[MessageRecord]) -> None:
        """Replay ``records`` to a fresh attachment, each rolled up to its latest version."""
        msgs = []
        for record in records:
            msgs.append(record.render_latest())
            att.mark_seen(record)
        att.sub.send(
            {"action": C.MESSAGE, "channel": self.name, "channelSerial": att.attach_point, "messages": msgs}
        )

    def deliver_presence(self, events: Sequence[dict[str, Any]], now_ms: int) -> None:
        if not events:
            return
        frames: dict[Format, str | bytes] = {}  # encoded once per format, as in ``deliver``
        for att in self.attachments.values():
            if att.live and att.modes & C.MODE_PRESENCE_SUBSCRIBE:
                fmt = att.sub.fmt
                frame = frames.get(fmt)
                if frame is None:
                    msg = {
                        "action": C.PRESENCE,
                        "channel": self.name,
                        "timestamp": now_ms,
                        "presence": [wire_payload(e, fmt) for e in events],
                    }
                    frame = frames[fmt] = encode_wire(msg, fmt)
                att.sub.send_frame(frame)

    def send_sync(self, att: Attachment, page_size: int = 100) -> None:
        members = list(self.presence.members.values())
        sync_id = f"sync-{att.sub.id}"
        for start in range(0, max(len(members), 1), page_size):
            page = members[start : start + page_size]
            last = start + page_size >= len(members)
            cursor = "" if last else str(start + page_size)
            att.sub.send(
                {
                    "action": C.SYNC,
                    "channel": self.name,
                    "channelSerial": f"{sync_id}:{cursor}",
                    "presence": page,
                }
            )


PREENCODE_DELAY_S = 1.0
"""How long a new message waits before its history encoding is made (see ``Hub._encode_soon``):
past a start-up burst of 100 conversations on the bench machine (first tokens by ~0.3-0.6 s)."""

PREENCODE_CHUNK = 128
"""How many pending messages one loop turn encodes."""

#: An upper bound of :func:`message_size` per unit of the frame that carried the message (a byte of
#: msgpack, a character of JSON text), with a margin: the worst payloads found are ~7 (a non-BMP
#: character, 1 character of JSON text, is a 12-character surrogate escape in ``json.dumps``; ``false``
#: in an array is 7 per msgpack byte; ext values and binary through ``str()``, ~6). So a frame within
#: ``max_message_size / 16`` never carries an oversize message and its exact size is not computed
#: (tests/server/test_fanout_frames.py holds the bound against those payloads).
SIZE_PER_FRAME_BYTE = 16


def message_size(m: dict[str, Any]) -> int:
    """Ably's size rule (TO3l8): name + data + clientId + extras (as JSON)."""
    size = 0
    for key in ("name", "clientId"):
        v = m.get(key)
        if isinstance(v, str):
            size += len(v.encode())
    data = m.get("data")
    if isinstance(data, str):
        size += len(data.encode())
    elif isinstance(data, (bytes, bytearray)):
        size += len(data)
    elif data is not None:
        size += len(json.dumps(data, default=str).encode())
    extras = m.get("extras")
    if extras is not None:
        size += len(json.dumps(extras, default=str).encode())
    return size


_CHANNEL_NAME_RE = re.compile(r"^(\[[^\]]*\])?[^\[:\n\r][^\n\r]*$")


# Names already found valid (every publish names its channel; the regex is ~1 µs of it). Bounded:
# only names up to 256 characters, and cleared at 10,000, so a client making up names costs at
# most ~2.5 MB here.
_VALID_NAMES: set[str] = set()


def check_channel_name(name: Any) -> str:
    if isinstance(name, str) and name in _VALID_NAMES:
        return name
    if not isinstance(name, str) or not _CHANNEL_NAME_RE.match(name) or len(name) > 2048:
        msg = "invalid channel name"
        raise ProtocolError(msg, code=40010)
    if len(name) <= 256:
        if len(_VALID_NAMES) >= 10_000:
            _VALID_NAMES.clear()
        _VALID_NAMES.add(name)
    return name


class Hub:
    def __init__(self, config: ServerConfig, keyring: KeyRing, store: Store) -> None:
        self.config = config
        self.keyring = keyring
        self.store = store
        self.channels: dict[str, ChannelRuntime] = {}
        self.rules = ChannelRules(config.channel_rules, config.unpersisted_history_ms)
        self.rollup = AppendRollup(self)
        self.refused: Counter[int] = Counter()  # realtime NACKs by Ably error code (bench, metrics)
        # New messages waiting for their history encoding (see _encode_soon).
        self._preencode: list[MessageRecord] = []
        self._preencode_timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self.held_bytes = 0  # sum of the held channels' log.bytes (see ServerConfig.max_history_bytes)
        self._uses = 0
        self._refusing = False  # refusing new channels at max_channels (logged once per episode)
        # Set when a scan for idle channels found none: until an attachment goes (every path that
        # drops one calls leave_presence), new channels are refused without scanning them all again.
        self._full_in_use = False
        # held_bytes beyond which a publish makes room: the budget, or while the channels in use
        # alone exceed it, a tenth more than they held at the last try (not a scan per publish).
        self._room_at = config.max_history_bytes

    @staticmethod
    def now_ms() -> int:
        return int(time.time() * 1000)

    def retention_for(self, name: str) -> Retention | None:
        """What the log of channel ``name`` keeps: the configured retention, and in memory, for a
        channel without a persistence rule, no more than Ably keeps there — its two minutes of
        history (``unpersisted_history_ms``) or the connection state TTL a resume may reach back,
        whichever is longer. With ``--data-dir`` and no retention set: everything."""
        retention = self.config.effective_retention
        if retention is None or self.store.persistent or self.rules.for_channel(name).persists:
            return retention
        keep_s = max(self.config.unpersisted_history_ms, self.config.connection_state_ttl_ms) / 1000
        if retention.max_age_s is not None and retention.max_age_s <= keep_s:
            return retention
        return Retention(retention.max_messages, keep_s, retention.max_bytes)

    def sweep(self) -> int:
        """Apply retention by age to idle channels too, and release the runtimes of channels nobody
        is attached to or present on whose log is empty (or persisted: it is reloaded on next use).
        Returns how many were released."""
        now = self.now_ms()
        released = 0
        for name, rt in list(self.channels.items()):
            if rt.retention is not None:
                before = rt.log.bytes
                rt.log.prune(rt.retention, now)
                self.held_bytes += rt.log.bytes - before
            if not rt.idle:
                continue
            if rt.log.order and not self.store.persistent:
                continue
            self._release(name, rt)
            released += 1
        # Recounted here, so an accounting slip (a publish that raised half way) cannot last.
        self.held_bytes = sum(rt.log.bytes for rt in self.channels.values())
        self._room_at = self.config.max_history_bytes
        if self.held_bytes > self._room_at:
            self._make_room()
        return released

    def _release(self, name: str, rt: ChannelRuntime) -> None:
        del self.channels[name]
        self._full_in_use = False
        self.held_bytes -= rt.log.bytes

    def _make_room(self, keep: ChannelRuntime | None = None) -> None:
        """Release idle channels until the server holds 90 % of ``max_channels`` and of
        ``max_history_bytes``: first those that lose nothing (an empty log, or a persisted one,
        reloaded on next use), then the least recently used; in memory those take their history
        with them, logged once per call. Never ``keep`` (the channel being published to)."""
        cfg = self.config
        max_channels = max(1, cfg.max_channels * 9 // 10)
        max_bytes = cfg.max_history_bytes * 9 // 10
        persistent = self.store.persistent
        idle = [rt for rt in self.channels.values() if rt.idle and rt is not keep]
        idle.sort(key=lambda rt: (bool(rt.log.order) and not persistent, rt.used))
        dropped = released = 0
        for rt in idle:
            if len(self.channels) <= max_channels and self.held_bytes <= max_bytes:
                break
            if rt.log.order and not persistent:
                dropped += len(rt.log.order)
            self._release(rt.name, rt)
            released += 1
        self._room_at = max(cfg.max_history_bytes, self.held_bytes + cfg.max_history_bytes // 10)
        if dropped:
            log.warning(
                "channels_evicted",
                released=released,
                messages_dropped=dropped,
                channels=len(self.channels),
                history_bytes=self.held_bytes,
                max_channels=cfg.max_channels,
                max_history_bytes=cfg.max_history_bytes,
            )

    def channel(self, name: str) -> ChannelRuntime:
        rt = self.channels.get(name)
        if rt is None:
            if len(self.channels) >= self.config.max_channels:
                if not self._full_in_use:  # a flood of new names costs one scan, not one each
                    self._make_room()
                if len(self.channels) >= self.config.max_channels:
                    self._full_in_use = True
                    limit = self.config.max_channels
                    if not self._refusing:
                        self._refusing = True
                        log.warning("channels_refused", max_channels=limit, reason="every channel is in use")
                    msg = (
                        f"channel limit exceeded: the server holds {limit} channels, all in use "
                        "(attached or with presence); detach unused channels (max_channels)"
                    )
                    raise AgentWorkerError(msg, code=40114, status_code=403)
            self._refusing = False
            rt = ChannelRuntime(
                self.store.open_channel(name), self.config.rate_limit_per_s, self.retention_for(name)
            )
            self.held_bytes += rt.log.bytes
            self.channels[name] = rt
        self._uses += 1
        rt.used = self._uses
        return rt

    # -- publish -----------------------------------------------------------------------------

    def prepare_messages(
        self,
        rt: ChannelRuntime,
        items: list[dict[str, Any]],
        principal: Principal,
        *,
        frame_size: int | None = None,
    ) -> list[dict[str, Any]]:
        """Capability, clientId and size checks; stamps the publisher's clientId on creates.

        ``frame_size``: the length of the realtime frame that carried ``items``; when even
        :data:`SIZE_PER_FRAME_BYTE` times it (plus the clientIds stamped here) is within
        ``max_message_size``, the exact size is not computed (it cannot be over)."""
        if not items:
            msg = "no messages to publish"
            raise ProtocolError(msg, code=40000)
        if len(items) > self.config.max_messages_per_publish:
            msg = (
                f"too many messages in one publish: {len(items)}, the maximum is "
                f"{self.config.max_messages_per_publish}"
            )
            raise ProtocolError(msg, code=40034, status_code=400)
        self.rules.require_identified(rt.name, principal.client_id)
        limit = self.config.max_message_size
        sized = frame_size is None or (
            SIZE_PER_FRAME_BYTE * frame_size + len(items) * len((principal.client_id or "").encode()) > limit
        )
        total = 0
        out: list[dict[str, Any]] = []
        for item in items:
            m = dict(item)
            action = m.get("action", CREATE)
            if action == CREATE:
                self.require(principal, rt.name, "publish")
                cid = m.get("clientId")
                if cid is not None:
                    if not principal.can_assume(cid):
                        msg = f"message clientId {cid!r} does not match the connection's clientId"
                        raise AuthError(msg, code=40012, status_code=400)
                elif principal.client_id is not None:
                    m["clientId"] = principal.client_id
                # Only mutations address an existing message.
                m.pop("serial", None)
                m.pop("version", None)
            else:
                self.rules.require_mutable(rt.name)
                record = rt.log.records.get(m.get("serial") or "")
                kind = "delete" if action == DELETE else "update"
                own = (
                    record is not None
                    and record.client_id is not None
                    and record.client_id == principal.client_id
                )
                caps = principal.capability.ops_for(rt.name)
                if f"message-{kind}-any" not in caps and not (own and f"message-{kind}-own" in caps):
                    msg = f"operation not permitted: message-{kind} on channel {rt.name!r}"
                    raise AuthError(msg, code=40160, status_code=401)
            if sized:
                total += message_size(m)
            out.append(m)
        if total > limit:
            msg = f"message size {total} exceeds the maximum of {limit} bytes"
            raise ProtocolError(msg, code=40009, status_code=400)
        return out

    def require(self, principal: Principal, channel: str, op: str) -> None:
        if not principal.capability.allows(channel, op):
            msg = f"operation not permitted with provided capability: {op} on channel {channel!r}"
            raise AuthError(msg, code=40160, status_code=401)

    def check_channel_rate(self, rt: ChannelRuntime, n: int) -> None:
        if self.config.enforce_rate_limits and not rt.limiter.take(n):
            msg = f"rate limit exceeded on channel {rt.name!r} ({self.config.rate_limit_per_s} messages/s)"
            raise AgentWorkerError(msg, code=42910, status_code=429)

    def publish(
        self,
        channel: str,
        items: list[dict[str, Any]],
        principal: Principal,
        *,
        publisher_id: str | None = None,
        proto_id: str | None = None,
        id_base: str | None = None,
        frame_size: int | None = None,
    ) -> Published:
        """Validate, log and fan out one batch; raises an ``AgentWorkerError`` with the Ably code
        (``frame_size``: see :meth:`prepare_messages`)."""
        rt = self.channel(channel)
        self.rollup.before_publish(channel, items)
        prepared = self.prepare_messages(rt, items, principal, frame_size=frame_size)
        dup = rt.log.find_duplicate(prepared)
        if dup is not None:
            return Published(channel_serial=rt.log.head, items=[], serials=list(dup), duplicate=True)
        self.check_channel_rate(rt, len(prepared))
        return self.commit(
            rt,
            prepared,
            client_id=principal.client_id,
            publisher_id=publisher_id,
            proto_id=proto_id,
            id_base=id_base,
        )

    def commit(
        self,
        rt: ChannelRuntime,
        prepared: list[dict[str, Any]],
        *,
        client_id: str | None,
        publisher_id: str | None = None,
        proto_id: str | None = None,
        id_base: str | None = None,
    ) -> Published:
        """Log and fan out an already checked batch (also the rollup's flush)."""
        now = self.now_ms()
        bytes_before = rt.log.bytes
        published = rt.log.publish(
            prepared,
            connection_id=publisher_id,
            client_id=client_id,
            now_ms=now,
            message_id_base=id_base,
        )
        rt.deliver(published, publisher_id=publisher_id, proto_id=proto_id, now_ms=now)
        for record, index in published.items:
            if index == 0 and not record.ephemeral:
                self._encode_soon(record)
        log_ = rt.log
        retention = rt.retention
        if retention is not None:
            slack = int(retention.max_age_s * 100) if retention.max_age_s is not None else 0
            log_.prune(retention, now, age_slack_ms=slack)
        self.held_bytes += log_.bytes - bytes_before
        if self.held_bytes > self._room_at:
            self._make_room(keep=rt)
        return published

    def _encode_soon(self, record: MessageRecord) -> None:
        """Encode a new message for msgpack history pages (``MessageRecord.history_item``) once it
        has been left alone for :data:`PREENCODE_DELAY_S`, off the publish path.

        A page is its items' cached bytes joined, so a history read of messages published a while
        ago encodes nothing. Encoding each create as it is published cost the start-up burst ~6
        encodes per conversation (its run-start, step-start, the message's opening batch and the
        stream's create), on the CPU the worker's starts wait for, and a stream's create was
        appended to right after, which made its encoding stale before any read. Deferred, the
        encodes run after the burst, and a message that got another version meanwhile is left to
        the next read (as an appended message always was: re-encoding a growing stream per append
        would be quadratic). A read before the delay encodes the item itself, as it would anyway."""
        pending = self._preencode
        pending.append(record)
        if self._preencode_timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # used without a loop (tests of the hub alone): nothing to defer to
            self._preencode_timer = None
            self._encode_pending()
            return
        self._preencode_timer = loop.call_later(PREENCODE_DELAY_S, self._encode_pending)

    def _encode_pending(self) -> None:
        """Encode up to :data:`PREENCODE_CHUNK` pending messages, the rest at the next loop turn
        (a chunk is ~0.5 ms of CPU: the loop serves sockets in between)."""
        pending = self._preencode
        chunk, self._preencode = pending[:PREENCODE_CHUNK], pending[PREENCODE_CHUNK:]
        for record in chunk:
            if len(record.versions) == 1:  # still as published (a later version re-encodes on read)
                record.history_item(MSGPACK)
        if self._preencode:
            try:
                self._preencode_timer = asyncio.get_running_loop().call_soon(self._encode_pending)
            except RuntimeError:
                self._encode_pending()
        else:
            self._preencode_timer = None

    def close(self) -> None:
        """Drop the pending history encodes (the server is stopping)."""
        if self._preencode_timer is not None:
            self._preencode_timer.cancel()
            self._preencode_timer = None
        self._preencode.clear()

    # -- presence ----------------------------------------------------------------------------

    def presence_update(
        self,
        channel: str,
        items: list[dict[str, Any]],
        principal: Principal,
        *,
        connection_id: str,
        msg_serial: int,
    ) -> None:
        rt = self.channel(channel)
        self.require(principal, channel, "presence")
        self.rules.require_identified(channel, principal.client_id)
        now = self.now_ms()
        if len(items) > self.config.max_messages_per_publish:
            msg = (
                f"too many presence messages in one request: {len(items)}, the maximum is "
                f"{self.config.max_messages_per_publish}"
            )
            raise ProtocolError(msg, code=40034, status_code=400)
        stamped: list[dict[str, Any]] = []
        size = 0
        for i, p in enumerate(items):
            action = p.get("action")
            if action not in (ENTER, LEAVE, UPDATE, PRESENT):
                msg = f"invalid presence action {action!r}"
                raise ProtocolError(msg, code=40000)
            cid = p.get("clientId") or principal.client_id
            if cid is None:
                msg = "unable to enter presence channel (no clientId)"
                raise ProtocolError(msg, code=91000, status_code=400)
            if cid != principal.client_id and not principal.can_assume(cid):
                msg = f"presence clientId {cid!r} does not match the connection's clientId"
                raise AuthError(msg, code=40012, status_code=400)
            size += message_size(p)
            stamped.append(
                dict(
                    p,
                    clientId=cid,
                    connectionId=connection_id,
                    timestamp=now,
                    id=f"{connection_id}:{msg_serial}:{i}",
                )
            )
        if size > self.config.max_message_size:
            msg = f"presence message size {size} exceeds the maximum of {self.config.max_message_size} bytes"
            raise ProtocolError(msg, code=40009, status_code=400)
        members = rt.presence.members
        limit = self.config.max_presence_members
        if len(members) + len(stamped) > limit:  # (cheap test first: most sets are far below it)
            entering = {member_key(p) for p in stamped if p.get("action") != LEAVE} - members.keys()
            if len(members) + len(entering) > limit:
                msg = (
                    f"Unable to enter member to presence channel; maximum number of {limit} members exceeded"
                )
                raise ProtocolError(msg, code=91003, status_code=400)
        events = [e for e in (rt.presence.apply(p) for p in stamped) if e is not None]
        rt.deliver_presence(events, now)

    def leave_presence(self, connection_id: str, channels: Sequence[str] | None = None) -> None:
        """Called whenever a connection drops attachments (detach, revocation, discard)."""
        self._full_in_use = False  # a channel may have become idle: the next new one scans again
        now = self.now_ms()
        for name in channels if channels is not None else list(self.channels):
            rt = self.channels.get(name)
            if rt is None:
                continue
            events = rt.presence.leave_connection(connection_id, now)
            rt.deliver_presence(events, now)
            if events:
                log.info("presence_left", channel=name, connection_id=connection_id, members=len(events))
