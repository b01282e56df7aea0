"""The realtime WebSocket protocol: connections, transports, resume, and per-action handling.

A :class:`RealtimeConnection` is the Ably *connection* (id, key, credentials, attachments,
msgSerial dedupe); it outlives any one :class:`Transport` (WebSocket) for
``connection_state_ttl_ms`` so a client can resume it. Inbound frames are handled synchronously
on the event loop; outbound frames go through a per-transport queue so one slow client never
blocks a publisher.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from typing import Any, cast

import msgpack
import structlog
from aiohttp import WSMsgType, web

from agent_worker.errors import AgentWorkerError, AuthError, ProtocolError
from agent_worker.server import constants as C
from agent_worker.server import wsframes
from agent_worker.server.attach_params import mode_error, parse_attach
from agent_worker.server.auth import Principal, resolve_client_id
from agent_worker.server.codec import (
    JSON,
    MSGPACK,
    Format,
    decode_frame,
    encode_frame,
    encode_wire,
    inbound_payload,
)
from agent_worker.server.codec import outbound_payload as _outbound
from agent_worker.server.connection_keys import ConnectionKeys
from agent_worker.server.hub import Attachment, Hub, RateLimiter, check_channel_name
from agent_worker.server.log import APPEND
from agent_worker.server.rollup import TRANSPORT_PARAM, parse_window

__all__ = ["RealtimeConnection", "RealtimeGateway", "Transport"]

log = structlog.get_logger(__name__)

_MAX_QUEUE = 50_000
_HIGH_WATER = 1 << 16  # bytes unsent in the socket's buffer before the writer waits for the client
# Frames that may overtake a pending ACK (see RealtimeConnection._ack).
_AFTER_ACKS = frozenset({C.ACK, C.MESSAGE, C.PRESENCE})
_DEDUPE_WINDOW = 1024


def _has_append(frame: Mapping[str, Any]) -> bool:
    messages = frame.get("messages")
    return isinstance(messages, list) and any(
        isinstance(m, dict) and m.get("action") == APPEND for m in messages
    )


class Transport:
    """One WebSocket with an ordered outbound queue drained by a writer task.

    The writer sends everything queued since its last turn as one socket write (``wsframes``):
    a loop turn that fans out or acknowledges ten frames to a connection costs one syscall, not
    ten. The queue is bounded in bytes (``max_bytes``): a consumer that falls that far behind is a
    slow consumer, and ``on_overflow`` disconnects it (as Ably does) instead of letting it hold the
    server's memory."""

    def __init__(
        self, ws: web.WebSocketResponse, raw: asyncio.BaseTransport | None, max_bytes: int = 1 << 62
    ) -> None:
        self.ws = ws
        self.raw = raw
        self.closing = False
        self.max_bytes = max_bytes
        self.queued_bytes = 0
        self.on_overflow: Callable[[], None] | None = None
        self._queue: deque[str | bytes | None] = deque()
        self._ready = asyncio.Event()
        self._writer = asyncio.get_running_loop().create_task(self._write())

    def enqueue(self, data: str | bytes) -> None:
        if self.closing:
            return
        if len(self._queue) > _MAX_QUEUE or self.queued_bytes + len(data) > self.max_bytes:
            log.warning("slow_consumer_dropped", queued=len(self._queue), queued_bytes=self.queued_bytes)
            if self.on_overflow is not None:
                self.on_overflow()
            else:
                self.abort()
            return
        self.queued_bytes += len(data)
        self._queue.append(data)
        self._ready.set()

    def overflow(self, last: str | bytes) -> None:
        """Drop everything queued, send ``last`` (the DISCONNECTED error), then close."""
        self._queue.clear()
        self.queued_bytes = len(last)
        self._queue.append(last)
        self._ready.set()
        self.close_soon()

    async def _write(self) -> None:
        queue = self._queue
        while True:
            if not queue:
                self._ready.clear()
                await self._ready.wait()
                continue
            batch: list[str | bytes] = []
            close = False
            while queue:
                data = queue.popleft()
                if data is None:
                    close = True
                    break
                self.queued_bytes -= len(data)
                batch.append(data)
            try:
                await self._send(batch)
            except (ConnectionError, RuntimeError, asyncio.CancelledError):
                self.abort()
                return
            if close:
                break
        with contextlib.suppress(Exception):
            await self.ws.close()

    async def _send(self, batch: list[str | bytes]) -> None:
        # A write transport (uvloop's does not subclass asyncio's, hence the cast).
        raw = cast("asyncio.WriteTransport | None", self.raw)
        if raw is None or self.ws.compress:  # aiohttp frames (and compresses) one at a time
            for data in batch:
                if isinstance(data, bytes):
                    await self.ws.send_bytes(data)
                else:
                    await self.ws.send_str(data)
            return
        if raw.is_closing():
            msg = "websocket transport closing"
            raise ConnectionResetError(msg)
        raw.write(wsframes.frames(batch))
        # A client that does not read: later frames wait in the queue, where ``max_bytes`` counts
        # them, not in the socket's buffer (aiohttp's writer drains at the same 64 KiB). Polled:
        # the resume-writing callback is aiohttp's protocol's, with no public way to wait for it.
        while raw.get_write_buffer_size() > _HIGH_WATER and not raw.is_closing():  # noqa: ASYNC110
            await asyncio.sleep(0.005)

    def close_soon(self) -> None:
        """Flush what is queued, then close the socket cleanly."""
        if not self.closing:
            self.closing = True
            self._queue.append(None)
            self._ready.set()

    def abort(self) -> None:
        """Drop the TCP connection without a close handshake (clients see an abrupt disconnect)."""
        self.closing = True
        self._writer.cancel()
        if self.raw is not None:
            self.raw.abort()  # type: ignore[attr-defined]
        else:  # pragma: no cover - aiohttp always exposes the transport
            asyncio.get_running_loop().create_task(self.ws.close())

    async def wait_closed(self) -> None:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._writer


class RealtimeConnection:
    def __init__(
        self,
        gateway: RealtimeGateway,
        principal: Principal,
        requested_client_id: str | None,
        fmt: Format,
        echo: bool,
    ) -> None:
        self.gateway = gateway
        self.rollup_window_ms = gateway.hub.config.append_rollup_window_ms
        self.hub = gateway.hub
        self.id = secrets.token_urlsafe(9).replace("-", "x").replace("_", "y")
        self.key = gateway.keys.issue(self.id)
        self.principal = principal
        self.requested_client_id = requested_client_id
        self.fmt = fmt
        self.echo = echo
        self.transport: Transport | None = None
        self.attachments: dict[str, Attachment] = {}
        self.closed = False
        # Test hooks (EmbeddedServer.withhold_acks, lose_inbound, refuse_appends), faults of the
        # current socket (a resume's new socket starts without them): handle publishes but send no
        # ACK, as when the socket dies with the ACK in flight; drop inbound MESSAGE and PRESENCE
        # frames unread, as when they die with the socket; NACK the next appends.
        self.withhold_acks = False
        self.lose_inbound = False
        self.refuse_appends = 0
        self._processed: OrderedDict[int, tuple[bytes, list[dict[str, Any]]]] = OrderedDict()
        self._top_serial = -1  # the highest msgSerial handled
        self._limiter = RateLimiter(gateway.hub.config.rate_limit_per_s)
        # ACKs of consecutive msgSerials handled in one loop turn go out as one ACK (``count``).
        self._ack_run: tuple[int, list[int], list[dict[str, Any]]] | None = None  # serial, [count], res
        self._expiry: asyncio.TimerHandle | None = None
        self._leave: asyncio.TimerHandle | None = None
        self._discard: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"RealtimeConnection(id={self.id!r}, client_id={self.principal.client_id!r})"

    # -- outbound ----------------------------------------------------------------------------

    def send(self, msg: dict[str, Any]) -> None:
        transport = self.transport
        if transport is None:
            return
        if self._ack_run is not None and msg["action"] not in _AFTER_ACKS:
            self._flush_acks()  # ACKs keep their place before NACKs and state changes
        if msg.get("messages"):
            msg = dict(msg, messages=[_outbound(m, self.fmt) for m in msg["messages"]])
        if msg.get("presence"):
            msg = dict(msg, presence=[_outbound(p, self.fmt) for p in msg["presence"]])
        transport.enqueue(encode_frame(msg, self.fmt))

    def send_frame(self, data: str | bytes) -> None:
        """Queue an encoded MESSAGE or PRESENCE frame (they may overtake a pending ACK, see
        ``_ack``); the fan-out encodes one for every subscriber of this connection's format."""
        transport = self.transport
        if transport is not None:
            transport.enqueue(data)

    def connection_details(self) -> dict[str, Any]:
        cfg = self.hub.config
        p = self.principal
        client_id = p.client_id if p.client_id is not None else ("*" if p.wildcard and p.expires_ms else None)
        return {
            "clientId": client_id,
            "connectionKey": self.key,
            "maxMessageSize": cfg.max_message_size,
            "maxFrameSize": cfg.max_frame_size,
            "maxInboundRate": cfg.rate_limit_per_s if cfg.enforce_rate_limits else 1000,
            "connectionStateTtl": cfg.connection_state_ttl_ms,
            "maxIdleInterval": cfg.max_idle_interval_ms,
            "serverId": "agent-worker-embedded",
            "siteCode": "local",
        }

    def send_connected(self, error: dict[str, Any] | None = None) -> None:
        self.send(
            {
                "action": C.CONNECTED,
                "connectionId": self.id,
                "connectionKey": self.key,
                "connectionDetails": self.connection_details(),
                "error": error,
            }
        )

    def send_error(self, exc: AgentWorkerError, channel: str | None = None) -> None:
        self.send({"action": C.ERROR, "channel": channel, "error": exc.to_error_info()})

    # -- transport lifecycle -----------------------------------------------------------------

    def attach_transport(self, transport: Transport) -> None:
        # ACKs owed on the old transport: the client re-sends those messages on resume (and gets
        # them ACKed from the dedupe window), so they must not arrive twice.
        self._ack_run = None
        old = self.transport
        self.transport = transport
        transport.on_overflow = self._slow_consumer
        if old is not None and old is not transport:
            old.abort()
        self.withhold_acks = self.lose_inbound = False
        for handle in (self._leave, self._discard):
            if handle is not None:
                handle.cancel()
        self._leave = self._discard = None
        self._schedule_expiry()

    def transport_gone(self, transport: Transport) -> None:
        if self.transport is not transport:
            return
        self._ack_run = None
        self.transport = None
        if self.closed:
            return
        for att in self.attachments.values():
            att.live = False
        loop = asyncio.get_running_loop()
        cfg = self.hub.config
        self._leave = loop.call_later(cfg.presence_leave_delay_ms / 1000, self._leave_presence)
        self._discard = loop.call_later(cfg.connection_state_ttl_ms / 1000, self.discard)
        log.info("connection_dropped", connection_id=self.id)

    def _slow_consumer(self) -> None:
        """The client fell more than ``max_outbound_bytes`` behind: disconnect it with 80020 and
        drop the connection's state, so it cannot resume past the frames it never got (its channels
        re-attach from the last channelSerial they saw and are replayed from the log)."""
        transport = self.transport
        if transport is None or transport.closing:
            return
        err = ProtocolError("continuity loss: the client was too slow to consume messages", code=80020)
        log.warning("slow_consumer_disconnected", connection_id=self.id, client_id=self.principal.client_id)
        frame = encode_frame({"action": C.DISCONNECTED, "error": err.to_error_info()}, self.fmt)
        transport.overflow(frame)
        # Not now: this runs inside a channel's fan-out loop over its attachments.
        asyncio.get_running_loop().call_soon(self.discard)

    def _leave_presence(self) -> None:
        self._leave = None
        self.hub.leave_presence(self.id, list(self.attachments))

    def discard(self) -> None:
        """Forget the connection (CLOSE, or no resume within connectionStateTtl)."""
        if self.closed:
            return
        self.closed = True
        for handle in (self._expiry, self._leave, self._discard):
            if handle is not None:
                handle.cancel()
        self.hub.leave_presence(self.id, list(self.attachments))
        for name in self.attachments:
            rt = self.hub.channels.get(name)
            if rt is not None:
                rt.attachments.pop(self.id, None)
        self.attachments.clear()
        self.gateway.forget(self)

    def _schedule_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        expires = self.principal.expires_ms
        if expires is None:
            return
        delay = max(0.0, (expires - self.hub.now_ms()) / 1000)
        self._expiry = asyncio.get_running_loop().call_later(delay, self._token_expired)

    def _token_expired(self) -> None:
        self._expiry = None
        transport = self.transport
        if transport is None:
            return
        err = AuthError("token expired", code=40142, status_code=401)
        log.info("connection_token_expired", connection_id=self.id)
        self.send({"action": C.DISCONNECTED, "error": err.to_error_info()})
        transport.close_soon()

    # -- inbound -----------------------------------------------------------------------------

    def handle(self, frame: dict[str, Any], size: int | None = None) -> None:
        """One inbound frame (``size``: its encoded length, which bounds its messages' sizes)."""
        action = frame.get("action")
        if not isinstance(action, int) or isinstance(action, bool):
            msg = "protocol message has no integer action"
            raise ProtocolError(msg, code=40000)
        if self.lose_inbound and action in (C.MESSAGE, C.PRESENCE):
            return
        if action == C.HEARTBEAT:
            if frame.get("id") is not None:
                self.send({"action": C.HEARTBEAT, "id": frame["id"]})
        elif action == C.MESSAGE:
            self._on_message(frame, size)
        elif action == C.ATTACH:
            self._on_attach(frame)
        elif action == C.DETACH:
            self._on_detach(frame)
        elif action == C.PRESENCE:
            self._on_presence(frame)
        elif action == C.AUTH:
            self._on_auth(frame)
        elif action == C.SYNC:
            name = frame.get("channel")
            att = self.attachments.get(name) if isinstance(name, str) else None
            if att is not None:
                self.hub.channel(att.channel).send_sync(att)
        elif action == C.CLOSE:
            self.send({"action": C.CLOSED})
            transport = self.transport
            self.discard()
            if transport is not None:
                transport.close_soon()
        elif action == C.DISCONNECT:
            self.send({"action": C.DISCONNECTED})
            if self.transport is not None:
                self.transport.close_soon()
        elif action == C.ACTIVATE:
            return
        elif action in (C.OBJECT, C.ANNOTATION):
            serial = self._msg_serial(frame)
            err = ProtocolError("LiveObjects and annotations are not supported by this server", code=40000)
            self.send({"action": C.NACK, "msgSerial": serial, "count": 1, "error": err.to_error_info()})
        else:
            msg = f"unexpected protocol action {action} from a client"
            raise ProtocolError(msg, code=40000)

    @staticmethod
    def _msg_serial(frame: Mapping[str, Any]) -> int:
        serial = frame.get("msgSerial")
        if not isinstance(serial, int) or isinstance(serial, bool) or serial < 0:
            msg = "msgSerial must be a non-negative integer"
            raise ProtocolError(msg, code=40000)
        return serial

    def _ack(self, serial: int, res: list[dict[str, Any]]) -> None:
        """ACK ``serial``. Consecutive serials handled in the same loop turn (the frames one read
        brought in) are acknowledged by one ACK with ``count`` and one ``res`` entry each, as Ably
        may do and both SDKs handle (RTN7); it goes out on the next loop turn, after those frames'
        echoes, or before any other frame but a message or presence."""
        if self.withhold_acks:
            return
        run = self._ack_run
        if run is not None and run[0] + run[1][0] == serial:
            run[1][0] += 1
            run[2].extend(res)
            return
        if run is not None:
            self._flush_acks()
        self._ack_run = (serial, [1], list(res))
        asyncio.get_running_loop().call_soon(self._flush_acks)

    def _flush_acks(self) -> None:
        run, self._ack_run = self._ack_run, None
        transport = self.transport
        if run is not None and transport is not None:
            # Built without None fields (``res`` holds serial lists), so encoded without a walk.
            ack = {"action": C.ACK, "msgSerial": run[0], "count": run[1][0], "res": run[2]}
            transport.enqueue(encode_wire(ack, self.fmt))

    def _nack(self, serial: int, exc: AgentWorkerError) -> None:
        log.info("publish_refused", connection_id=self.id, code=exc.code, reason=exc.message)
        self.hub.refused[exc.code] += 1
        self.send({"action": C.NACK, "msgSerial": serial, "count": 1, "error": exc.to_error_info()})

    def _remember(self, serial: int, digest: bytes, res: list[dict[str, Any]]) -> None:
        self._processed[serial] = (digest, res)
        while len(self._processed) > _DEDUPE_WINDOW:
            self._processed.popitem(last=False)

    @staticmethod
    def _digest(frame: Mapping[str, Any]) -> bytes:
        body = [frame.get("channel"), frame.get("messages"), frame.get("presence")]
        try:
            return hashlib.sha1(msgpack.packb(body, use_bin_type=True, default=str)).digest()
        except (TypeError, ValueError):
            return b""

    def _acked(self, frame: dict[str, Any], handle: Callable[[int], list[dict[str, Any]]]) -> None:
        """Run a ``msgSerial``-acknowledged request (MESSAGE, PRESENCE): NACK a refusal, ACK (and
        remember) ``handle``'s result, and ACK a retransmit again without handling it twice."""
        serial = self._msg_serial(frame)
        digest = self._digest(frame)
        seen = self._processed.get(serial)
        if seen is not None and seen[0] == digest:
            # A retransmit after resume: ACK again without publishing twice. On its own: ably-python
            # (3.1.4) completes an ACK's first ``res`` entry with the oldest message it still waits
            # for, and after a reconnect that need not be the oldest serial in the ACK; an ACK of
            # one message is matched or ignored, never given another message's serials.
            self._flush_acks()
            self.send({"action": C.ACK, "msgSerial": serial, "count": 1, "res": seen[1]})
            return
        if serial <= self._top_serial:
            # Not a retransmit (above), yet not above the highest seen: a client that kept old
            # msgSerials on a new connection (Ably may take it for a repeat and drop it).
            log.warning("msg_serial_not_rising", connection_id=self.id, serial=serial, top=self._top_serial)
        self._top_serial = max(self._top_serial, serial)
        try:
            if self.refuse_appends and _has_append(frame):
                self.refuse_appends -= 1
                msg = "append refused (test hook: EmbeddedServer.refuse_appends)"
                raise AgentWorkerError(msg, code=42911, status_code=429)
            res = handle(serial)
        except AgentWorkerError as exc:
            self._nack(serial, exc)
            return
        self._remember(serial, digest, res)
        self._ack(serial, res)

    @staticmethod
    def _non_empty(frame: dict[str, Any], key: str, action: str) -> list[Any]:
        raw = frame.get(key)
        if not isinstance(raw, list) or not raw:
            msg = f"{action} must carry a non-empty {key} array"
            raise ProtocolError(msg, code=40000)
        return raw

    def _payloads(self, raw: list[Any]) -> list[dict[str, Any]]:
        """Canonical payloads, charged against the per-connection publish rate."""
        items = [inbound_payload(m, self.fmt) for m in raw]
        self._charge(len(items))
        return items

    def _charge(self, n: int) -> None:
        """Count ``n`` published messages against the connection's inbound limit (42911)."""
        if self.hub.config.enforce_rate_limits and not self._limiter.take(n):
            msg = f"max per-connection publish rate ({self.hub.config.rate_limit_per_s}/s) exceeded"
            raise AgentWorkerError(msg, code=42911, status_code=429)

    def _on_message(self, frame: dict[str, Any], size: int | None = None) -> None:
        def publish(serial: int) -> list[dict[str, Any]]:
            channel = check_channel_name(frame.get("channel"))
            self._require_mode(channel, C.MODE_PUBLISH, "publish a message", "PUBLISH")
            items = [inbound_payload(m, self.fmt) for m in self._non_empty(frame, "messages", "MESSAGE")]
            # An append inside its rollup window is held (and charged once per window), see rollup.py.
            held = self.hub.rollup.offer(
                channel,
                items,
                self.principal,
                publisher_id=self.id,
                window_ms=self.rollup_window_ms,
                charge=self._charge,
                frame_size=size,
            )
            if held is not None:
                return held
            self._charge(len(items))
            proto_id = f"{self.id}:{serial}"
            published = self.hub.publish(
                channel,
                items,
                self.principal,
                publisher_id=self.id,
                proto_id=proto_id,
                id_base=proto_id,
                frame_size=size,
            )
            return [{"serials": published.serials}]

        self._acked(frame, publish)

    def _require_mode(self, channel: str, mode: int, operation: str, mode_name: str) -> None:
        """40165 when the channel is attached without ``mode`` (an unattached publish is fine); a
        capability that lacks the operation is left to the 40160 check."""
        att = self.attachments.get(channel)
        if (
            att is not None
            and not att.modes & mode
            and self.principal.capability.allows(channel, C.MODE_TO_OP[mode])
        ):
            raise mode_error(operation, mode_name)

    def _on_presence(self, frame: dict[str, Any]) -> None:
        def update(serial: int) -> list[dict[str, Any]]:
            channel = check_channel_name(frame.get("channel"))
            raw = self._non_empty(frame, "presence", "PRESENCE")
            if channel not in self.attachments:
                msg = "unable to enter presence channel (invalid channel state)"
                raise ProtocolError(msg, code=91001)
            self._require_mode(channel, C.MODE_PRESENCE, "enter presence", "PRESENCE")
            items = self._payloads(raw)
            self.hub.presence_update(channel, items, self.principal, connection_id=self.id, msg_serial=serial)
            return [{"serials": []}]

        self._acked(frame, update)

    def _on_attach(self, frame: dict[str, Any]) -> None:
        name = frame.get("channel")
        if not isinstance(name, str):
            msg = "ATTACH without a channel"
            raise ProtocolError(msg, code=40010)
        try:
            check_channel_name(name)
            caps = self.principal.capability.ops_for(name)
            if not caps:
                msg = f"operation not permitted with provided capability: attach to {name!r}"
                raise AuthError(msg, code=40160, status_code=401)
            self.hub.rules.require_identified(name, self.principal.client_id)
            request = parse_attach(name, frame)
            limit = self.hub.config.max_channels_per_connection
            if name not in self.attachments and len(self.attachments) >= limit:
                msg = f"maximum number of channels per connection ({limit}) exceeded"
                raise ProtocolError(msg, code=90010, status_code=400)
        except AgentWorkerError as exc:
            log.info("attach_refused", connection_id=self.id, code=exc.code, reason=exc.message)
            self.send_error(exc, channel=name)
            return
        modes = 0
        for mode, op in C.MODE_TO_OP.items():
            if request.modes & mode and op in caps:
                modes |= mode
        params = request.params
        serial = frame.get("channelSerial")
        serial = serial if isinstance(serial, str) and serial else None
        rt = self.hub.channel(name)
        chlog = rt.log
        att = self.attachments.get(name)
        fresh = att is None
        resumable = serial is not None and chlog.resumable_from(serial)
        forced = (self.principal.client_id, name)
        if forced in self.gateway.lose_continuity:
            self.gateway.lose_continuity.discard(forced)
            resumable = False
        resumed = False
        replay_from: str | None = None
        error: dict[str, Any] | None = None
        if att is not None and (resumable or serial is None):
            # The connection (and so this attachment) survived: continuity is kept. A client that
            # re-attaches without a channelSerial gets what it missed since the last delivery.
            resumed = True
            if serial is not None:
                replay_from = max(serial, att.last_delivered) if att.live else serial
            elif not att.live:
                replay_from = att.last_delivered or att.attach_point
        elif att is None and resumable:
            assert serial is not None
            att = Attachment(self, name, modes, params, attach_point=serial)
            resumed, replay_from = True, serial
        else:
            if att is None:
                att = Attachment(self, name, modes, params, attach_point=chlog.head)
            else:
                att.attach_point, att.seen = chlog.head, set()
            att.last_delivered = chlog.head
            if serial is not None:
                error = ProtocolError(
                    "unable to resume the channel from that channelSerial; attached at the current position",
                    code=90005,
                ).to_error_info()
        att.modes, att.params, att.live = modes, params, True
        self.attachments[name] = att
        rt.attachments[self.id] = att
        channel_serial = chlog.head
        if resumed:
            channel_serial = replay_from or max(att.attach_point, att.last_delivered)
        # A rewind applies to a first attach only: not on resume, nor when the client continues from
        # a channelSerial or says it was attached before (ATTACH_RESUME), e.g. after a lost connection.
        now = self.hub.now_ms()
        backlog = (
            rt.rewind_records(params["rewind"], now, self.hub.rules.history_horizon(name, now))
            if fresh
            and not resumed
            and serial is None
            and not request.attach_resume
            and params.get("rewind")
            and modes & C.MODE_SUBSCRIBE
            else []
        )
        out_flags = modes
        if resumed:
            out_flags |= C.FLAG_RESUMED
        if backlog:
            out_flags |= C.FLAG_HAS_BACKLOG
        has_presence = bool(rt.presence.members) and bool(modes & C.MODE_PRESENCE_SUBSCRIBE)
        if has_presence:
            out_flags |= C.FLAG_HAS_PRESENCE
        self.send(
            {
                "action": C.ATTACHED,
                "channel": name,
                "flags": out_flags,
                "channelSerial": channel_serial,
                "params": request.echoed or None,
                "error": error,
            }
        )
        if has_presence:
            rt.send_sync(att)
        if replay_from is not None:
            rt.replay(att, replay_from)
        elif backlog:
            rt.send_rewind(att, backlog)

    def _on_detach(self, frame: dict[str, Any]) -> None:
        name = frame.get("channel")
        if not isinstance(name, str):
            msg = "DETACH without a channel"
            raise ProtocolError(msg, code=40010)
        att = self.attachments.pop(name, None)
        if att is not None:
            rt = self.hub.channels.get(name)
            if rt is not None:
                rt.attachments.pop(self.id, None)
            self.hub.leave_presence(self.id, [name])
        self.send({"action": C.DETACHED, "channel": name})

    def _on_auth(self, frame: dict[str, Any]) -> None:
        auth = frame.get("auth")
        token = auth.get("accessToken") if isinstance(auth, dict) else None
        try:
            if not isinstance(token, str) or not token:
                msg = "AUTH must carry auth.accessToken"
                raise AuthError(msg, code=40101, status_code=401)
            principal = self.gateway.principal_from_token(token, self.requested_client_id)
            if principal.client_id != self.principal.client_id:
                # Fixed for the connection's life (an anonymous connection cannot become alice).
                msg = "the new token's clientId differs from the connection's clientId"
                raise AuthError(msg, code=40102, status_code=401)
        except AgentWorkerError as exc:
            log.info("reauth_refused", connection_id=self.id, code=exc.code, reason=exc.message)
            self.send_error(exc)
            if self.transport is not None:
                self.transport.close_soon()
            return
        self.principal = principal
        self._schedule_expiry()
        self.send_connected()
        self._recheck_attachments()

    def _recheck_attachments(self) -> None:
        """After a re-auth: channels the new capability no longer allows are detached (40160), and
        the others keep only the modes it still grants."""
        for name, att in list(self.attachments.items()):
            caps = self.principal.capability.ops_for(name)
            if caps:
                att.modes = sum(mode for mode, op in C.MODE_TO_OP.items() if att.modes & mode and op in caps)
                continue
            del self.attachments[name]
            rt = self.hub.channels.get(name)
            if rt is not None:
                rt.attachments.pop(self.id, None)
            self.hub.leave_presence(self.id, [name])
            err = AuthError(f"capability no longer allows channel {name!r}", code=40160, status_code=401)
            log.info("attachment_revoked", connection_id=self.id, channel=name)
            self.send({"action": C.DETACHED, "channel": name, "error": err.to_error_info()})


class RealtimeGateway:
    """Accepts WebSockets, authenticates them, and keeps connections for resume."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.connections: dict[str, RealtimeConnection] = {}
        self._by_key: dict[str, RealtimeConnection] = {}
        self.keys = ConnectionKeys(hub.keyring.default.secret)
        self._heartbeat: asyncio.Task[None] | None = None
        # (clientId, channel) pairs whose next ATTACH must not resume (test hook, see drop()).
        self.lose_continuity: set[tuple[str | None, str]] = set()
        # clientIds whose new sockets wait here before CONNECTED (test hook, see hold()).
        self.held: dict[str | None, asyncio.Event] = {}

    def start(self) -> None:
        self._heartbeat = asyncio.get_running_loop().create_task(self._heartbeats())

    async def stop(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        for conn in list(self.connections.values()):
            transport = conn.transport
            conn.discard()
            if transport is not None:
                transport.abort()

    async def _heartbeats(self) -> None:
        interval = self.hub.config.heartbeat_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            for conn in list(self.connections.values()):
                if conn.transport is not None:
                    conn.send({"action": C.HEARTBEAT})
            released = self.hub.sweep()
            if released:
                log.info("channels_released", count=released, remaining=len(self.hub.channels))

    def live_connection(self, key: str) -> RealtimeConnection | None:
        """The connection ``key`` currently names (for REST publishes on its behalf)."""
        conn = self._by_key.get(key) if isinstance(key, str) else None
        return conn if conn is not None and not conn.closed else None

    def forget(self, conn: RealtimeConnection) -> None:
        self.connections.pop(conn.id, None)
        self._by_key.pop(conn.key, None)

    def drop(self, client_id: str | None = None, *, continuity: bool = True) -> int:
        """Abort matching sockets. ``continuity=False`` also forgets the connections and makes
        each of their channels' next ATTACH answer without RESUMED (as when Ably cannot resume)."""
        n = 0
        for conn in list(self.connections.values()):
            if conn.transport is not None and (client_id is None or conn.principal.client_id == client_id):
                transport = conn.transport
                if not continuity:
                    self.lose_continuity.update((conn.principal.client_id, ch) for ch in conn.attachments)
                    conn.discard()
                transport.abort()
                n += 1
        return n

    def withhold_acks(self, client_id: str) -> int:
        """Stop ACKing the publishes of ``client_id``'s current connections (see ``drop``)."""
        return self.arm(client_id, "withhold_acks", True)

    def arm(self, client_id: str, fault: str, value: object) -> int:
        """Set test hook ``fault`` on ``client_id``'s connections with a socket; how many."""
        conns = [c for c in self.connections.values() if c.principal.client_id == client_id and c.transport]
        for conn in conns:
            setattr(conn, fault, value)
        return len(conns)

    def hold(self, client_id: str | None, *, held: bool = True) -> None:
        """While held, ``client_id``'s new sockets (a resume too) get no CONNECTED: the client
        stays CONNECTING, as when Ably is slow to answer a reconnect."""
        if held:
            self.held.setdefault(client_id, asyncio.Event())
        elif (gate := self.held.pop(client_id, None)) is not None:
            gate.set()

    # -- auth --------------------------------------------------------------------------------

    def principal_from_token(self, token: str, requested: str | None) -> Principal:
        claims = self.hub.keyring.verify_token(token, self.hub.now_ms())
        client_id, wildcard = resolve_client_id(claims.client_id, requested, via_token=True)
        return Principal(claims.key_name, client_id, wildcard, claims.capability, claims.expires_ms)

    def _check_key_quota(self, principal: Principal, resume_key: str | None) -> None:
        if resume_key and resume_key in self._by_key:
            return  # a resume reuses its connection
        limit = self.hub.config.max_connections_per_key
        held = sum(1 for c in self.connections.values() if c.principal.key_name == principal.key_name)
        if held >= limit:
            msg = f"connection limit exceeded: {limit} connections for key {principal.key_name}"
            raise AuthError(msg, code=40111, status_code=403)

    def authenticate(self, q: Mapping[str, str]) -> Principal:
        requested = q.get("clientId") or None
        token = q.get("accessToken") or q.get("access_token")
        if token:
            return self.principal_from_token(token, requested)
        key_text = q.get("key")
        if key_text:
            key = self.hub.keyring.check_key(key_text)
            client_id, wildcard = resolve_client_id(None, requested, via_token=False)
            return Principal(key.name, client_id, wildcard, key.capability, None)
        msg = "no credentials: pass key or accessToken"
        raise AuthError(msg, code=40101, status_code=401)

    # -- websocket endpoint ------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        cfg = self.hub.config
        ws = web.WebSocketResponse(
            autoping=True,
            # aiohttp drops frames past this without buffering them; up to it we answer 40009.
            max_msg_size=2 * cfg.frame_limit,
            compress=cfg.websocket_compression,
        )
        await ws.prepare(request)
        transport = Transport(ws, request.transport, cfg.max_outbound_bytes)
        q = request.query
        fmt: Format = MSGPACK if q.get("format") == "msgpack" else JSON
        try:
            principal = self.authenticate(q)
            self._check_key_quota(principal, q.get("resume") or q.get("recover"))
            window = parse_window(q.get(TRANSPORT_PARAM), cfg.append_rollup_window_ms)
        except AgentWorkerError as exc:
            log.info("connection_refused", code=exc.code, reason=exc.message)
            transport.enqueue(encode_frame({"action": C.ERROR, "error": exc.to_error_info()}, fmt))
            transport.close_soon()
            await transport.wait_closed()
            return ws
        gate = self.held.get(principal.client_id)
        if gate is not None:
            await gate.wait()
        conn, error = self._resume_or_create(q, principal, fmt)
        conn.rollup_window_ms = window
        conn.attach_transport(transport)
        conn.send_connected(error)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    data: str | bytes = msg.data
                    frame_fmt: Format = JSON
                elif msg.type == WSMsgType.BINARY:
                    data, frame_fmt = msg.data, MSGPACK
                else:
                    break
                if conn.transport is not transport or transport.closing:
                    break
                try:
                    conn.handle(decode_frame(data, frame_fmt, cfg.frame_limit), len(data))
                except ProtocolError as exc:
                    log.info("frame_refused", connection_id=conn.id, code=exc.code, reason=exc.message)
                    conn.send_error(exc)
                    transport.close_soon()
                    break
                except Exception:
                    log.exception("frame_handler_failed", connection_id=conn.id)
                    conn.send_error(AgentWorkerError("internal error", code=50000))
                    transport.close_soon()
                    break
        finally:
            conn.transport_gone(transport)
            if not transport.closing:
                transport.close_soon()
            await transport.wait_closed()
        return ws

    def _resume_or_create(
        self, q: Mapping[str, str], principal: Principal, fmt: Format
    ) -> tuple[RealtimeConnection, dict[str, Any] | None]:
        requested = q.get("clientId") or None
        echo = q.get("echo", "true") != "false"
        key = q.get("resume") or q.get("recover")
        if key:
            conn = self._by_key.get(key)
            if conn is not None and not conn.closed and conn.principal.client_id == principal.client_id:
                conn.principal, conn.fmt, conn.echo = principal, fmt, echo
                if not q.get("resume"):
                    # Recover (RTN16d): same connectionId, a new key; the key the old client holds
                    # stops working, so it cannot take the connection back (its transport is
                    # dropped when the new one is attached).
                    self._by_key.pop(conn.key, None)
                    conn.key = self.keys.issue(conn.id)
                    self._by_key[conn.key] = conn
                log.info("connection_resumed", connection_id=conn.id, recover=not q.get("resume"))
                return conn, None
        conn = RealtimeConnection(self, principal, requested, fmt, echo)
        self.connections[conn.id] = conn
        self._by_key[conn.key] = conn
        error = None
        if key:
            if self.keys.verify(key):
                error = ProtocolError("unable to recover connection (connection expired)", code=80008)
            else:
                error = ProtocolError("invalid connection id (invalid format)", code=80018, status_code=400)
        log.info("connection_opened", connection_id=conn.id, client_id=principal.client_id, format=fmt)
        return conn, error.to_error_info() if error is not None else None
