"""The realtime protocol's per-connection state and per-action handling.

A :class:`RealtimeConnection` is the Ably *connection* (id, key, credentials, attachments,
msgSerial dedupe); it outlives any one :class:`~agent_worker.server.websocket.Transport`
(WebSocket) for ``connection_state_ttl_ms`` so a client can resume it. Inbound frames are handled
synchronously on the event loop; outbound frames go through a per-transport queue so one slow
client never blocks a publisher. The endpoint that accepts sockets is
:class:`~agent_worker.server.gateway.RealtimeGateway`.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from agent_worker.errors import AgentWorkerError, AuthError, ProtocolError
from agent_worker.server import constants as C
from agent_worker.server.attach_params import mode_error, parse_attach
from agent_worker.server.auth import Principal
from agent_worker.server.codec import (
    Format,
    encode_frame,
    encode_wire,
    inbound_payload,
    pack_lenient,
)
from agent_worker.server.codec import outbound_payload as _outbound
from agent_worker.server.connection_keys import ConnectionKeys
from agent_worker.server.hub import Attachment, Hub, RateLimiter, check_channel_name
from agent_worker.server.log import APPEND

if TYPE_CHECKING:
    from agent_worker.server.websocket import Transport

__all__ = ["ConnectionHost", "RealtimeConnection"]

log = structlog.get_logger(__name__)


class ConnectionHost(Protocol):
    """What a connection needs from the endpoint that keeps it (``gateway.RealtimeGateway``)."""

    hub: Hub
    keys: ConnectionKeys
    # (clientId, channel) pairs whose next ATTACH must not resume (a test hook).
    lose_continuity: set[tuple[str | None, str]]

    def forget(self, conn: RealtimeConnection) -> None: ...

    def principal_from_token(self, token: str, requested: str | None) -> Principal: ...


# Frames that may overtake a pending ACK (see RealtimeConnection._ack).
_AFTER_ACKS = frozenset({C.ACK, C.MESSAGE, C.PRESENCE})
_DEDUPE_WINDOW = 1024


def _has_append(frame: Mapping[str, Any]) -> bool:
    messages = frame.get("messages")
    return isinstance(messages, list) and any(
        isinstance(m, dict) and m.get("action") == APPEND for m in messages
    )


class RealtimeConnection:
    def __init__(
        self,
        gateway: ConnectionHost,
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
        # The last _DEDUPE_WINDOW msgSerials handled, one slot per serial modulo the window (a
        # client's serials rise one by one): (serial, digest, ACK res). A list indexed by serial
        # rather than an ordered dict evicting its oldest entry: ~1.5 µs less per publish.
        self._processed: list[tuple[int, int, list[dict[str, Any]]] | None] = [None] * _DEDUPE_WINDOW
        self._top_serial = -1  # the highest msgSerial handled
        self._limiter = RateLimiter(gateway.hub.config.rate_limit_per_s)
        self._refusals_logged: set[int] = set()  # error codes of this connection's NACKs logged
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

    def send_clean(self, msg: dict[str, Any]) -> None:
        """:meth:`send` for a frame built without ``None`` fields at any depth and without
        messages or presence: the same bytes, encoded without the walk."""
        transport = self.transport
        if transport is None:
            return
        if self._ack_run is not None and msg["action"] not in _AFTER_ACKS:
            self._flush_acks()
        transport.enqueue(encode_wire(msg, self.fmt))

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
        # Logged once per code per connection: a client flooding past its rate limit (or repeating
        # one bad message) must not turn each refusal into a log line; hub.refused counts them all.
        if exc.code not in self._refusals_logged:
            self._refusals_logged.add(exc.code)
            log.info("publish_refused", connection_id=self.id, code=exc.code, reason=exc.message)
        self.hub.refused[exc.code] += 1
        self.send({"action": C.NACK, "msgSerial": serial, "count": 1, "error": exc.to_error_info()})

    def _remember(self, serial: int, digest: int, res: list[dict[str, Any]]) -> None:
        self._processed[serial % _DEDUPE_WINDOW] = (serial, digest, res)

    @staticmethod
    def _digest(frame: Mapping[str, Any]) -> int:
        """What tells a retransmit from another message under the same msgSerial: the content as
        msgpack (the same whichever format the client resumed in), hashed with Python's keyed
        ``hash`` (SipHash, per-process key) rather than SHA-1, whose OpenSSL set-up alone is ~1 µs
        per frame. A collision only concerns a client that reuses a msgSerial, and 64 bits of an
        unpredictable key make even that out of reach."""
        body = [frame.get("channel"), frame.get("messages"), frame.get("presence")]
        try:
            return hash(pack_lenient(body))
        except (TypeError, ValueError):
            return 0

    def _acked(self, frame: dict[str, Any], handle: Callable[[int], list[dict[str, Any]]]) -> None:
        """Run a ``msgSerial``-acknowledged request (MESSAGE, PRESENCE): NACK a refusal, ACK (and
        remember) ``handle``'s result, and ACK a retransmit again without handling it twice."""
        serial = self._msg_serial(frame)
        digest = self._digest(frame)
        seen = self._processed[serial % _DEDUPE_WINDOW]
        if seen is not None and seen[0] == serial and seen[1] == digest:
            # A retransmit after resume: ACK again without publishing twice. On its own: ably-python
            # (3.1.4) completes an ACK's first ``res`` entry with the oldest message it still waits
            # for, and after a reconnect that need not be the oldest serial in the ACK; an ACK of
            # one message is matched or ignored, never given another message's serials.
            self._flush_acks()
            self.send({"action": C.ACK, "msgSerial": serial, "count": 1, "res": seen[2]})
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
            rt = self.hub.channel(name)  # 40114 when the server holds max_channels, all in use
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
        attached: dict[str, Any] = {
            "action": C.ATTACHED,
            "channel": name,
            "flags": out_flags,
            "channelSerial": channel_serial,
        }
        if request.echoed:  # str -> str
            attached["params"] = request.echoed
        if error is None:
            self.send_clean(attached)  # built without None fields: no walk
        else:
            attached["error"] = error
            self.send(attached)
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
