"""Assembling a worker process from config + flags (what ``agent-worker run`` executes)."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from agent_worker.config import Config, Secret, load_config, parse_host_port
from agent_worker.errors import ConfigError
from agent_worker.logs import configure_logging, get_logger
from agent_worker.runtime.loop import AgentSpec
from agent_worker.runtime.run import Run
from agent_worker.transport.ably import AblySettings
from agent_worker.worker.http import serve
from agent_worker.worker.service import Worker, tune_gc

__all__ = ["Overrides", "apply_overrides", "serve_forever"]

log = get_logger("agent_worker.worker.main")


@dataclass(frozen=True, slots=True)
class Overrides:
    config: Path | None = None
    ably_endpoint: str | None = None
    ably_key: str | None = None
    http: str | None = None
    provider: str | None = None
    watch: tuple[str, ...] = ()
    log_format: str | None = None
    log_level: str | None = None


def apply_overrides(cfg: Config, o: Overrides) -> Config:
    ably = cfg.ably
    if o.ably_endpoint is not None:
        ably = dataclasses.replace(
            ably, endpoint=None if o.ably_endpoint in ("", "ably") else o.ably_endpoint
        )
        if o.ably_endpoint == "ably":
            ably = dataclasses.replace(ably, tls=True)
    if o.ably_key:
        ably = dataclasses.replace(ably, key=Secret(o.ably_key))
    http = cfg.http
    if o.http is not None:
        host, port = parse_host_port(o.http)
        http = dataclasses.replace(http, host=host, port=port)
    worker = cfg.worker
    if o.watch:
        worker = dataclasses.replace(
            worker, watch_channels=tuple(dict.fromkeys((*worker.watch_channels, *o.watch)))
        )
    if o.log_format is not None:
        if o.log_format not in ("console", "json"):
            msg = "--log-format must be console or json"
            raise ConfigError(msg)
        worker = dataclasses.replace(worker, log_format=o.log_format)  # type: ignore[arg-type]
    if o.log_level is not None:
        worker = dataclasses.replace(worker, log_level=o.log_level)
    return dataclasses.replace(cfg, ably=ably, http=http, worker=worker)


async def _start_embedded(cfg: Config) -> Any:
    from agent_worker.server import EmbeddedServer, ServerConfig  # noqa: PLC0415

    port = cfg.ably.embedded_port
    try:
        return await EmbeddedServer(ServerConfig(host="127.0.0.1", port=port)).start()
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE or port == 0:
            raise
        log.warning("embedded_port_in_use", port=port)
        return await EmbeddedServer(ServerConfig(host="127.0.0.1", port=0)).start()


async def serve_forever(o: Overrides) -> None:
    """Run until SIGINT/SIGTERM; then drain (see :meth:`Worker.close`)."""
    cfg = apply_overrides(load_config(o.config), o)
    configure_logging(cfg.worker.log_format, cfg.worker.log_level)
    from agent_worker.providers.setup import build_agent_setup  # noqa: PLC0415

    setup = build_agent_setup(
        cfg.provider,
        cfg.providers,
        cfg.tools,
        cfg.prompts,
        config_dir=o.config.parent if o.config is not None else None,
        provider_override=o.provider,
    )

    def system_prompt(run: Run) -> str | None:
        return setup.system_prompt(
            session_name=run.session.name, run_id=run.run_id, client_id=run.owner_client_id
        )

    agent = AgentSpec(
        provider=setup.provider,
        tools=setup.tools,
        system_prompt=system_prompt,
        max_model_calls=cfg.worker.max_model_calls,
    )
    embedded: Any = None
    if cfg.ably.embedded:
        embedded = await _start_embedded(cfg)
        server = embedded

        async def token() -> dict[str, Any]:
            details: dict[str, Any] = server.token_details(client_id=cfg.ably.client_id)
            return details

        settings = AblySettings(
            endpoint=f"{server.host}:{server.port}",
            token_source=token,
            tls=False,
            client_id=cfg.ably.client_id,
            max_messages_per_second=cfg.worker.max_messages_per_second,
            burst=cfg.worker.burst,
            connections=cfg.ably.connections,
        )
    else:
        key = cfg.ably.resolved_key()
        host = (cfg.ably.endpoint or "").rsplit(":", 1)[0]
        if key is None and host in ("127.0.0.1", "localhost", "::1", "[::1]"):
            from agent_worker.server import DEFAULT_DEV_KEY  # noqa: PLC0415

            key = Secret(DEFAULT_DEV_KEY)  # a local `agent-worker server` accepts its dev key
        if key is None:
            msg = (
                "an Ably endpoint is configured but no key: pass --ably-key or set ABLY_KEY ([ably] key_env)"
            )
            raise ConfigError(msg)
        settings = AblySettings(
            endpoint=cfg.ably.endpoint,
            key=key,
            tls=cfg.ably.tls,
            client_id=cfg.ably.client_id,
            use_binary_protocol=cfg.ably.use_binary_protocol,
            max_messages_per_second=cfg.worker.max_messages_per_second,
            burst=cfg.worker.burst,
            connections=cfg.ably.connections,
        )
    worker = Worker(
        transport=settings,
        agent=agent,
        config=cfg.worker,
        history_page_size=cfg.ably.history_page_size,
        handle_signals=True,
    )
    runner = None
    try:
        await worker.start()
        if cfg.http.enabled:
            token_key = embedded.default_key if embedded is not None else None
            if token_key is None and settings.key is not None:
                token_key = settings.key.get()
            runner = await serve(worker, cfg.http, token_key=token_key)
        # Start-up is over: keep its objects out of every later full GC (see tune_gc for why).
        if cfg.worker.gc_tuning:
            tune_gc()
        _banner(cfg, embedded, runner, setup.provider_name, setup.provider_reason)
        await worker.wait_closed()
    finally:
        if runner is not None:
            await runner.cleanup()
        await worker.close()
        aclose = getattr(setup.provider, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()
        if embedded is not None:
            await embedded.stop()


def _banner(cfg: Config, embedded: Any, runner: Any, provider: str, reason: str) -> None:
    lines = ["agent-worker is running"]
    if embedded is not None:
        lines.append(f"  embedded Ably server: {embedded.endpoint}   key: {embedded.default_key}")
    else:
        lines.append(f"  Ably: {cfg.ably.endpoint or 'Ably (default endpoint)'}")
    if runner is not None:
        host, port = runner.addresses[0][:2]
        lines.append(
            f"  invocations: POST http://{host}:{port}{cfg.http.path}   health: /healthz   metrics: /metrics"
        )
    lines.append(f"  provider: {provider}" + ("" if reason == "configured" else f" ({reason})"))
    if cfg.worker.watch_channels:
        lines.append(f"  watching: {', '.join(cfg.worker.watch_channels)}")
    lines.append("  stop with Ctrl-C (in-flight runs drain, then end cancelled)")
    typer.echo("\n".join(lines), err=False)
