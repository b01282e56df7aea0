"""Where the worker's Ably connection goes, from ``[ably]``: Ably, a local server, or the embedded one.

With no endpoint and no key the embedded Ably-compatible server is started in-process (the offline
default); its dev key also signs the HTTP dev-token endpoint's JWTs.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Any

from agent_worker.config import Config, Secret
from agent_worker.errors import ConfigError
from agent_worker.logs import get_logger
from agent_worker.transport.ably import AblySettings

__all__ = ["Connection", "connect", "embedded_server_config"]

log = get_logger("agent_worker.worker.connect")

_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


@dataclass(slots=True)
class Connection:
    settings: AblySettings
    embedded: Any = None
    """The embedded server this worker started (``None`` for Ably or an external server)."""

    @property
    def token_key(self) -> str | None:
        """The key that signs dev tokens (the embedded server's, else the configured one)."""
        if self.embedded is not None:
            key: str = self.embedded.default_key
            return key
        return self.settings.key.get() if self.settings.key is not None else None

    async def close(self) -> None:
        if self.embedded is not None:
            await self.embedded.stop()
            self.embedded = None


def embedded_server_config(cfg: Config, port: int) -> Any:
    """The embedded server's config: the ``[server]`` table, and unless it sets channel rules,
    mutable messages for the namespaces the worker's sessions use (AIT appends need them)."""
    from agent_worker.server import ServerConfig  # noqa: PLC0415 - only when embedded
    from agent_worker.server.channel_rules import rules_for_sessions  # noqa: PLC0415
    from agent_worker.server.config import server_settings  # noqa: PLC0415

    settings = server_settings(cfg.server)
    settings.setdefault(
        "channel_rules", rules_for_sessions((*cfg.worker.sessions, *cfg.worker.watch_channels))
    )
    return ServerConfig(host="127.0.0.1", port=port, **settings)


async def _start_embedded(cfg: Config) -> Any:
    from agent_worker.server import EmbeddedServer  # noqa: PLC0415 - only when embedded

    port = cfg.ably.embedded_port
    try:
        return await EmbeddedServer(embedded_server_config(cfg, port)).start()
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE or port == 0:
            raise
        log.warning("embedded_port_in_use", port=port)
        return await EmbeddedServer(embedded_server_config(cfg, 0)).start()


async def connect(cfg: Config) -> Connection:
    """Transport settings for ``cfg`` (starting the embedded server when nothing is configured)."""
    common: dict[str, Any] = {
        "client_id": cfg.ably.client_id,
        "max_messages_per_second": cfg.worker.max_messages_per_second,
        "burst": cfg.worker.burst,
        "connections": cfg.ably.connections,
        "max_connections": cfg.ably.max_connections,
        "spare_clients": cfg.ably.spare_clients,
        "warm_connections": cfg.ably.warm_connections,
        "append_rollup_window_ms": cfg.ably.append_rollup_window_ms,
        "echo_messages": cfg.ably.echo_messages,
    }
    if cfg.ably.embedded:
        server = await _start_embedded(cfg)

        async def token() -> dict[str, Any]:
            details: dict[str, Any] = server.token_details(client_id=cfg.ably.client_id)
            return details

        settings = AblySettings(
            endpoint=f"{server.host}:{server.port}", token_source=token, tls=False, **common
        )
        return Connection(settings, server)
    key = cfg.ably.resolved_key()
    host = (cfg.ably.endpoint or "").rsplit(":", 1)[0]
    if key is None and host in _LOCAL_HOSTS:
        from agent_worker.server import DEFAULT_DEV_KEY  # noqa: PLC0415

        key = Secret(DEFAULT_DEV_KEY)  # a local `agent-worker server` accepts its dev key
    if key is None:
        msg = "an Ably endpoint is configured but no key: pass --key or set ABLY_KEY ([ably] key_env)"
        raise ConfigError(msg)
    settings = AblySettings(
        endpoint=cfg.ably.endpoint,
        key=key,
        tls=cfg.ably.tls,
        use_binary_protocol=cfg.ably.use_binary_protocol,
        **common,
    )
    return Connection(settings)
