"""``EmbeddedServer``: the Ably-compatible server, WebSocket and REST on one aiohttp port."""

from __future__ import annotations

import dataclasses
import enum
from types import TracebackType
from typing import Any

import structlog
from aiohttp import web

from agent_worker.conncap import CappedSite, ConnectionCap
from agent_worker.errors import ConfigError
from agent_worker.hostcheck import HOST_REFUSED_CODE, HostAllowList
from agent_worker.server.auth import ApiKey, Capability, KeyRing, token_details
from agent_worker.server.config import DEFAULT_DEV_KEY, ServerConfig
from agent_worker.server.gateway import RealtimeGateway
from agent_worker.server.hub import Hub
from agent_worker.server.push import PushApi
from agent_worker.server.rest import RestApi
from agent_worker.server.store import MemoryStore, SQLiteStore, Store

__all__ = ["EmbeddedServer"]

log = structlog.get_logger(__name__)


def _cors_headers(request: web.Request, origin: str, *, preflight: bool) -> dict[str, str]:
    """CORS as Ably's REST hosts answer it, so ably-js in a web page served from another origin (the
    worker's browser client) can read history and presence. The origin is echoed with credentials
    allowed because ably-js sends ``credentials: include`` with an ``Authorization`` header, and the
    paging ``Link`` header is exposed."""
    headers = {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Credentials": "true",
        "Vary": "Origin",
    }
    if preflight:
        headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
        headers["Access-Control-Allow-Headers"] = request.headers.get(
            "Access-Control-Request-Headers", "Authorization, Content-Type, Accept"
        )
        headers["Access-Control-Max-Age"] = "86400"
    else:
        headers["Access-Control-Expose-Headers"] = (
            "Link, X-Ably-ErrorCode, X-Ably-ErrorMessage, X-Ably-Serverid"
        )
    return headers


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


class TokenMint:
    """Test-side JWTs signed with ``self._keyring``'s default key; shared by :class:`EmbeddedServer`
    and :class:`~agent_worker.server.testing.RemoteServer`."""

    _keyring: KeyRing

    def mint_token(
        self,
        client_id: str | None = None,
        capability: dict[str, list[str]] | str | None = None,
        ttl_s: float = 3600,
    ) -> str:
        """An HS256 JWT signed with the default key (``capability`` defaults to everything)."""
        return str(self.token_details(client_id, capability, ttl_s)["token"])

    def token_details(
        self,
        client_id: str | None = None,
        capability: dict[str, list[str]] | str | None = None,
        ttl_s: float = 3600,
    ) -> dict[str, Any]:
        """Like :meth:`mint_token` but as an Ably TokenDetails dict."""
        cap = Capability.parse(capability) if capability is not None else None
        token, claims = self._keyring.mint(
            client_id=client_id, capability=cap, ttl_ms=int(ttl_s * 1000), now_ms=Hub.now_ms()
        )
        return token_details(token, claims)


def _api_keys(config: ServerConfig) -> list[ApiKey]:
    """The accepted keys, each with its capability (``config.key_capabilities``; default all)."""
    keys = [ApiKey.parse(k) for k in list(config.keys) or [DEFAULT_DEV_KEY]]
    names = {k.name for k in keys}
    unknown = sorted(set(config.key_capabilities) - names)
    if unknown:
        msg = f"capability given for unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
        raise ConfigError(msg)
    return [
        dataclasses.replace(k, capability=Capability.parse(config.key_capabilities[k.name]))
        if k.name in config.key_capabilities
        else k
        for k in keys
    ]


class EmbeddedServer(TokenMint):
    """Start with ``await server.start()`` (or ``async with``); ``server.endpoint`` is ``host:port``."""

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        self._keyring = KeyRing(_api_keys(self.config))
        self._state = _State.NEW
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._store: Store | None = None
        self._hub: Hub | None = None
        self._gateway: RealtimeGateway | None = None
        self._rest: RestApi | None = None
        self._hosts_refused: set[str] = set()
        self.connection_cap = ConnectionCap(
            self.config.max_connections, name="the server", write_timeout_s=self.config.http_write_timeout_s
        )

    def __repr__(self) -> str:
        endpoint = self.endpoint if self._port else None
        return f"EmbeddedServer(endpoint={endpoint!r}, state={self._state.value})"

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> EmbeddedServer:
        if self._state is not _State.NEW:
            msg = f"EmbeddedServer.start() called in state {self._state.value}; create a new server instead"
            raise RuntimeError(msg)
        cfg = self.config
        self._store = SQLiteStore(cfg.data_dir) if cfg.data_dir is not None else MemoryStore()
        self._hub = Hub(cfg, self._keyring, self._store)
        self._gateway = RealtimeGateway(self._hub)
        rest = self._rest = RestApi(self._hub, self._gateway.live_connection)
        gateway = self._gateway
        hosts = HostAllowList(cfg.allowed_hosts, cfg.host)

        async def root(request: web.Request) -> web.StreamResponse:
            host = request.headers.get("Host")
            if not hosts.allows(host):  # a DNS-rebinding name (see agent_worker/hostcheck.py)
                assert host is not None
                return self._host_refused(request, hosts, host)
            if request.path == "/" and request.headers.get("Upgrade", "").lower() == "websocket":
                return await gateway.handle(request)
            origin = request.headers.get("Origin")
            if origin is None:
                return await rest.dispatch(request)
            if request.method == "OPTIONS":  # a browser's CORS preflight
                return web.Response(status=204, headers=_cors_headers(request, origin, preflight=True))
            response = await rest.dispatch(request)
            response.headers.update(_cors_headers(request, origin, preflight=False))
            return response

        app = web.Application(client_max_size=cfg.body_limit)
        app.router.add_route("*", "/{tail:.*}", root)
        # keepalive_timeout closes a connection only while it waits for a request (its first one
        # included), never during a handler: a realtime socket is one long handler.
        self._runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            keepalive_timeout=cfg.http_idle_timeout_s,
            shutdown_timeout=1.0,
        )
        await self._runner.setup()
        # Realtime sockets and REST connections share the cap (agent_worker/conncap.py).
        site = CappedSite(self._runner, cfg.host, cfg.port, self.connection_cap)
        await site.start()
        self._port = site.port
        self._gateway.start()
        self._state = _State.RUNNING
        log.info(
            "server_started",
            endpoint=self.endpoint,
            persistence="sqlite" if cfg.data_dir is not None else "memory",
            keys=[k.split(":", 1)[0] for k in self.keys],
            restricted_keys=sorted(cfg.key_capabilities),
            channel_rules=[r.describe() for r in cfg.channel_rules],
            max_connections=cfg.max_connections,
            close_timeout_ms=cfg.close_timeout_ms,
            http_body_timeout_s=cfg.http_body_timeout_s,
            http_write_timeout_s=cfg.http_write_timeout_s,
        )
        return self

    def _host_refused(self, request: web.Request, hosts: HostAllowList, host: str) -> web.Response:
        """421 (42100), logged once per Host value (a page retrying would otherwise log each time)."""
        if host not in self._hosts_refused and len(self._hosts_refused) < 100:
            self._hosts_refused.add(host)
            log.warning("http_host_refused", host=host[:100], remote=request.remote)
        message = hosts.refusal(host, "--allowed-host or [server] allowed_hosts")
        body = {"error": {"code": HOST_REFUSED_CODE, "statusCode": 421, "message": message}}
        return web.json_response(body, status=421)

    async def stop(self) -> None:
        """Close every connection and the listener; idempotent."""
        if self._state is not _State.RUNNING:
            self._state = _State.STOPPED
            return
        self._state = _State.STOPPED
        if self._hub is not None:
            self._hub.rollup.flush_all()  # held appends were ACKed: publish them before closing
            self._hub.close()
        if self._gateway is not None:
            await self._gateway.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._rest is not None:
            await self._rest.push.close()
        if self._store is not None:
            self._store.close()
        log.info("server_stopped", endpoint=self.endpoint)

    async def __aenter__(self) -> EmbeddedServer:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- facts -------------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return self.config.host

    @property
    def port(self) -> int:
        if self._port is None:
            msg = "the server has not been started"
            raise RuntimeError(msg)
        return self._port

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def keys(self) -> list[str]:
        """Accepted keys as ``app.keyid:secret`` strings (secrets! never log these)."""
        return list(self.config.keys) or [DEFAULT_DEV_KEY]

    @property
    def default_key(self) -> str:
        return self.keys[0]

    @property
    def push(self) -> PushApi:
        """The push admin API (device registrations, deliveries, the VAPID key)."""
        if self._rest is None:
            msg = "the server has not been started"
            raise RuntimeError(msg)
        return self._rest.push

    @property
    def hub(self) -> Hub:
        if self._hub is None:
            msg = "the server has not been started"
            raise RuntimeError(msg)
        return self._hub

    # -- test hooks and helpers --------------------------------------------------------------

    def drop_connections(self, client_id: str | None = None, *, resume: bool = True) -> int:
        """Abruptly close client sockets (all, or those of ``client_id``); returns how many.

        By default connection state is kept, so clients resume and re-attach with RESUMED and no
        gap. ``resume=False`` simulates lost continuity: the connection state is discarded (resume
        declined with 80008) and each affected channel's next ATTACH is answered without RESUMED
        and without replay.
        """
        if self._gateway is None:
            return 0
        n = self._gateway.drop(client_id, continuity=resume)
        log.info("connections_dropped", count=n, client_id=client_id, resume=resume)
        return n

    def withhold_acks(self, client_id: str) -> int:
        """Test hook: ``client_id``'s current connections go on handling publishes (delivered and
        stored) but send no ACK, as if each ACK were lost; with :meth:`drop_connections` this makes
        a message the server applied but the client never saw acknowledged. Returns how many."""
        return 0 if self._gateway is None else self._gateway.withhold_acks(client_id)

    def lose_inbound(self, client_id: str) -> int:
        """Test hook: ``client_id``'s current sockets drop the messages and presence they bring in,
        unread, as if lost with a dying socket (a resumed connection's client re-sends them)."""
        return 0 if self._gateway is None else self._gateway.arm(client_id, "lose_inbound", True)

    def refuse_appends(self, client_id: str, count: int = 1) -> int:
        """Test hook: NACK (42911) the next ``count`` appends of ``client_id``'s current sockets."""
        return 0 if self._gateway is None else self._gateway.arm(client_id, "refuse_appends", count)

    def hold_connections(self, client_id: str | None, *, held: bool = True) -> None:
        """Test hook: while held, ``client_id``'s new sockets (resumes too) wait for CONNECTED, so
        its SDK stays CONNECTING; ``held=False`` lets them (and later ones) through."""
        if self._gateway is not None:
            self._gateway.hold(client_id, held=held)
