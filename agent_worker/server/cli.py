"""``agent-worker server``: run the embedded Ably-compatible server until SIGINT/SIGTERM."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["register"]


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
        retention_messages: Annotated[
            int | None, typer.Option(help="Keep at most this many messages per channel (default: all).")
        ] = None,
        retention_seconds: Annotated[
            float | None, typer.Option(help="Drop messages older than this many seconds (default: never).")
        ] = None,
    ) -> None:
        """Run the embedded Ably-compatible server (WebSocket + REST on one port)."""
        # Heavy imports stay inside the command so `agent-worker --help` is fast.
        import asyncio  # noqa: PLC0415
        import signal  # noqa: PLC0415

        from agent_worker.server import EmbeddedServer, Retention, ServerConfig  # noqa: PLC0415

        retention = None
        if retention_messages is not None or retention_seconds is not None:
            retention = Retention(max_messages=retention_messages, max_age_s=retention_seconds)
        config = ServerConfig(
            host=host,
            port=port,
            keys=list(key or []),
            data_dir=data_dir,
            max_message_size=max_message_size,
            connection_state_ttl_ms=connection_state_ttl_ms,
            enforce_rate_limits=enforce_rate_limits,
            retention=retention,
        )

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            async with EmbeddedServer(config) as srv:
                typer.echo(f"endpoint: {srv.endpoint}")
                for k in srv.keys:
                    typer.echo(f"key: {k}")
                typer.echo(
                    f'ably-python: AblyRealtime(endpoint="{srv.endpoint}/", tls=False, token=...)  '
                    f"ably-js: {{endpoint: '{srv.host}', port: {srv.port}, tls: false, key}}"
                )
                await stop.wait()

        asyncio.run(main())
