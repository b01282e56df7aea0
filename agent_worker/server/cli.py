"""``agent-worker server``: run the embedded Ably-compatible server until SIGINT/SIGTERM."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["register"]


def _server_table(path: Path) -> dict[str, Any]:
    import tomllib  # noqa: PLC0415

    from agent_worker.errors import ConfigError  # noqa: PLC0415

    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        msg = f"cannot read config file {path}: {exc}"
        raise ConfigError(msg) from None
    table = raw.get("server", {})
    if not isinstance(table, dict):
        msg = f"[server] in {path} must be a table"
        raise ConfigError(msg)
    return table


def register(app: typer.Typer) -> None:
    @app.command("server")
    def server(  # noqa: PLR0917 - typer maps each parameter to a CLI option
        host: Annotated[str, typer.Option(help="Interface to bind (keep it on loopback).")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="TCP port; 0 picks a free one.")] = 8080,
        key: Annotated[
            list[str] | None,
            typer.Option("--key", help="Accepted API key APP.KEY:SECRET (repeatable; default: a dev key)."),
        ] = None,
        data_dir: Annotated[
            Path | None, typer.Option(help="Persist channel logs in SQLite here (default: in memory).")
        ] = None,
        max_message_size: Annotated[int, typer.Option(help="maxMessageSize in bytes.")] = 65536,
        connection_state_ttl_ms: Annotated[
            int, typer.Option(help="How long a dropped connection can resume.")
        ] = (120_000),
        enforce_rate_limits: Annotated[
            bool, typer.Option(help="Reproduce Ably's 50 msg/s per-connection and per-channel limits.")
        ] = False,
        append_rollup_window_ms: Annotated[
            int,
            typer.Option(
                min=0,
                max=500,
                help="Default appendRollupWindow for connections that do not set it (0 = off).",
            ),
        ] = 40,
        retention_messages: Annotated[
            int | None, typer.Option(help="Keep at most this many messages per channel.")
        ] = None,
        retention_seconds: Annotated[
            float | None,
            typer.Option(help="Drop messages older than this (seconds; in memory default 24 h)."),
        ] = None,
        key_capability: Annotated[
            list[str] | None,
            typer.Option(
                "--key-capability",
                help='Restrict a key: APP.KEY=\'{"chat:*":["subscribe"]}\' (repeatable; default: all).',
            ),
        ] = None,
        channel_rule: Annotated[
            list[str] | None,
            typer.Option(
                "--channel-rule",
                help="NAMESPACE=mutable,persisted,identified as on Ably's dashboard (repeatable; "
                "default: mutable messages on every channel).",
            ),
        ] = None,
        config: Annotated[
            Path | None,
            typer.Option(
                "--config",
                help="TOML file whose `server` table has keys and channel rules (see docs/server.md).",
            ),
        ] = None,
        retention_bytes: Annotated[
            int | None,
            typer.Option(help="Keep about this many bytes per channel (in memory default 16 MiB)."),
        ] = None,
        http_idle_timeout_s: Annotated[
            float,
            typer.Option(
                min=0.001,
                help="Close an HTTP connection without a complete request for this long (seconds; "
                "realtime sockets are not affected).",
            ),
        ] = 75.0,
        http_body_timeout_s: Annotated[
            float,
            typer.Option(
                min=0.001,
                help="Answer 408 (40800) to a REST request whose body takes longer than this to "
                "arrive after its headers (seconds).",
            ),
        ] = 10.0,
        http_write_timeout_s: Annotated[
            float,
            typer.Option(
                min=0.001,
                help="Drop a connection (REST or realtime) whose answers drain less than 16 KiB in "
                "this long: a client that stopped reading, or trickles (seconds).",
            ),
        ] = 30.0,
        close_timeout_ms: Annotated[
            int,
            typer.Option(
                min=1,
                help="How long closing a realtime socket may take to flush its last frames before "
                "it is dropped (a client that stopped reading).",
            ),
        ] = 5_000,
        max_connections: Annotated[
            int,
            typer.Option(
                min=1,
                help="TCP connections (realtime and REST) the port holds at once; past it a new "
                "one is answered 503 (50300) and closed.",
            ),
        ] = 4096,
        allowed_host: Annotated[
            list[str] | None,
            typer.Option(
                "--allowed-host",
                help="A Host name to answer besides loopback names and IP addresses (repeatable; "
                "'*.example.com', '*' for any): bound to loopback others get 421 (DNS rebinding).",
            ),
        ] = None,
        max_channels: Annotated[
            int | None,
            typer.Option(
                min=1,
                help="Channels held at once (default 10000); past it idle ones are released (least "
                "recently used first; in memory with their history), with none idle a new one is "
                "refused (40114).",
            ),
        ] = None,
        max_history_bytes: Annotated[
            int | None,
            typer.Option(
                min=1,
                help="Approximate bytes of history all channels hold together (default 64 MiB); "
                "past it idle channels are released as at --max-channels.",
            ),
        ] = None,
        log_format: Annotated[str, typer.Option(help="Diagnostics on stderr: console or json.")] = "console",
        log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    ) -> None:
        """Run the embedded Ably-compatible server (WebSocket + REST on one port)."""
        # Heavy imports stay inside the command so `agent-worker --help` is fast.
        import asyncio  # noqa: PLC0415
        import signal  # noqa: PLC0415

        from agent_worker import eventloop  # noqa: PLC0415
        from agent_worker.errors import AgentWorkerError  # noqa: PLC0415
        from agent_worker.gcpause import tune_gc  # noqa: PLC0415
        from agent_worker.logs import configure_logging  # noqa: PLC0415
        from agent_worker.server import EmbeddedServer, Retention, ServerConfig  # noqa: PLC0415
        from agent_worker.server.channel_rules import ChannelRule  # noqa: PLC0415
        from agent_worker.server.config import parse_key_capability, server_settings  # noqa: PLC0415

        if log_format not in ("console", "json"):
            msg = "--log-format must be console or json"
            raise typer.BadParameter(msg)
        configure_logging(log_format, log_level)  # type: ignore[arg-type]

        retention = None
        # Without any flag: in memory 24 h / 16 MiB per channel, with --data-dir everything.
        if retention_messages is not None or retention_seconds is not None or retention_bytes is not None:
            retention = Retention(
                max_messages=retention_messages, max_age_s=retention_seconds, max_bytes=retention_bytes
            )
        try:
            settings = server_settings(_server_table(config)) if config is not None else {}
            if key:
                settings["keys"] = list(key)
            caps = dict(settings.get("key_capabilities", {}))
            caps.update(parse_key_capability(spec) for spec in key_capability or [])
            settings["key_capabilities"] = caps
            for name, value in (("max_channels", max_channels), ("max_history_bytes", max_history_bytes)):
                if value is not None:
                    settings[name] = value
            if allowed_host:
                settings["allowed_hosts"] = tuple(allowed_host)
            if channel_rule:
                settings["channel_rules"] = tuple(ChannelRule.parse(spec) for spec in channel_rule)
            server_config = ServerConfig(
                host=host,
                port=port,
                data_dir=data_dir,
                max_message_size=max_message_size,
                connection_state_ttl_ms=connection_state_ttl_ms,
                enforce_rate_limits=enforce_rate_limits,
                append_rollup_window_ms=append_rollup_window_ms,
                retention=retention,
                http_idle_timeout_s=http_idle_timeout_s,
                http_body_timeout_s=http_body_timeout_s,
                http_write_timeout_s=http_write_timeout_s,
                close_timeout_ms=close_timeout_ms,
                max_connections=max_connections,
                **settings,
            )
            srv_check = EmbeddedServer(server_config)  # validates keys and capabilities now
        except AgentWorkerError as exc:
            typer.echo(f"agent-worker server: {exc.message}", err=True)
            raise typer.Exit(2) from None

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            async with srv_check as srv:
                tune_gc()  # start-up is over (see gcpause.tune_gc)
                typer.echo(f"endpoint: {srv.endpoint}")
                for k in srv.keys:
                    name = k.partition(":")[0]
                    restricted = server_config.key_capabilities.get(name)
                    typer.echo(f"key: {k}" + (f"  capability: {restricted}" if restricted else ""))
                for rule in server_config.channel_rules:
                    typer.echo(f"channel rule: {rule.describe()}")
                typer.echo(
                    f'ably-python: AblyRealtime(endpoint="{srv.endpoint}/", tls=False, token=...)  '
                    f"ably-js: {{endpoint: '{srv.host}', port: {srv.port}, tls: false, key}}"
                )
                await stop.wait()

        eventloop.run(main())
