"""The realtime WebSocket endpoint: authenticate a socket, resume or create its connection, and
feed its frames to :class:`~agent_worker.server.connection.RealtimeConnection`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

import structlog
from aiohttp import WSMsgType, web

from agent_worker.errors import AgentWorkerError, AuthError, ProtocolError
from agent_worker.server import constants as C
from agent_worker.server.auth import Principal, resolve_client_id
from agent_worker.server.codec import JSON, MSGPACK, Format, decode_frame, encode_frame
from agent_worker.server.connection import RealtimeConnection
from agent_worker.server.connection_keys import ConnectionKeys
from agent_worker.server.hub import Hub
from agent_worker.server.rollup import TRANSPORT_PARAM, parse_window
from agent_worker.server.websocket import Transport

__all__ = ["RealtimeGateway"]

log = structlog.get_logger(__name__)


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
        writer = await ws.prepare(request)
        transport = Transport(
            ws, request.transport, cfg.max_outbound_bytes, writer, close_timeout_s=cfg.close_timeout_ms / 1000
        )
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
        frame_limit = cfg.frame_limit
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
                    conn.handle(decode_frame(data, frame_fmt, frame_limit), len(data))
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
