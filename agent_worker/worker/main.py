"""``agent-worker run``'s composition root: config + flags → an agent → :meth:`Worker.serve`.

The agent is the import path's object (``myapp.agents:support_agent``: an ``Agent``, a ``Worker``
or any run handler, arq-style) or, without one, the agent the config file describes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from agent_worker.agent import Agent
from agent_worker.config import Config, Secret, load_config, parse_host_port
from agent_worker.errors import ConfigError
from agent_worker.plugins import import_path
from agent_worker.runtime.journal import default_state_dir
from agent_worker.worker.service import Worker

__all__ = ["Overrides", "apply_overrides", "build_worker", "serve_forever", "with_state_dir"]


@dataclass(frozen=True, slots=True)
class Overrides:
    config: Path | None = None
    ably_endpoint: str | None = None
    key: str | None = None
    http: str | None = None
    http_max_connections: int | None = None
    http_write_timeout_s: float | None = None
    http_metrics_token: str | None = None
    http_metrics_auth: str | None = None
    http_allowed_hosts: tuple[str, ...] = ()
    provider: str | None = None
    watch: tuple[str, ...] = ()
    log_format: str | None = None
    log_level: str | None = None
    state_dir: str | None = None
    engine: str | None = None
    temporal_address: str | None = None
    temporal_namespace: str | None = None
    temporal_task_queue: str | None = None


def _engine_overrides(o: Overrides) -> dict[str, Any]:
    engine: dict[str, Any] = {}
    if o.engine is not None:
        if o.engine not in ("local", "temporal"):
            msg = "--engine must be local or temporal"
            raise ConfigError(msg)
        engine["kind"] = o.engine
    if o.temporal_address is not None:
        host, port = parse_host_port(o.temporal_address)
        engine["address"] = f"{host}:{port}"
    if o.temporal_namespace is not None:
        engine["namespace"] = o.temporal_namespace
    if o.temporal_task_queue is not None:
        engine["task_queue"] = o.temporal_task_queue
    return engine


def apply_overrides(cfg: Config, o: Overrides) -> Config:
    """The flags (and their environment variables) on top of the config file."""
    ably: dict[str, Any] = {}
    if o.ably_endpoint is not None:
        ably["endpoint"] = None if o.ably_endpoint in ("", "ably") else o.ably_endpoint
        if o.ably_endpoint == "ably":
            ably["tls"] = True
    if o.key:
        ably["key"] = Secret(o.key)
    http: dict[str, Any] = {}
    if o.http is not None:
        http["host"], http["port"] = parse_host_port(o.http)
    if o.http_max_connections is not None:
        if o.http_max_connections < 1:
            msg = "--http-max-connections must be at least 1"
            raise ConfigError(msg)
        http["max_connections"] = o.http_max_connections
    if o.http_write_timeout_s is not None:
        if not (math.isfinite(o.http_write_timeout_s) and o.http_write_timeout_s > 0):
            value = o.http_write_timeout_s
            msg = f"--http-write-timeout-s must be a finite number of seconds above 0, not {value}"
            raise ConfigError(msg)
        http["write_timeout_s"] = o.http_write_timeout_s
    if o.http_metrics_token:
        http["metrics_token"] = Secret(o.http_metrics_token)
    if o.http_metrics_auth is not None:
        if o.http_metrics_auth not in ("auto", "none", "token"):
            msg = "--http-metrics-auth must be auto, none or token"
            raise ConfigError(msg)
        http["metrics_auth"] = o.http_metrics_auth
    if o.http_allowed_hosts:
        http["allowed_hosts"] = tuple(dict.fromkeys((*cfg.http.allowed_hosts, *o.http_allowed_hosts)))
    worker: dict[str, Any] = {}
    if o.watch:
        worker["watch_channels"] = tuple(dict.fromkeys((*cfg.worker.watch_channels, *o.watch)))
    if o.log_format is not None:
        if o.log_format not in ("console", "json"):
            msg = "--log-format must be console or json"
            raise ConfigError(msg)
        worker["log_format"] = o.log_format
    if o.log_level is not None:
        worker["log_level"] = o.log_level
    if o.state_dir is not None:
        worker["state_dir"] = o.state_dir
    http_cfg = cfg.http.model_copy(update=http)
    http_cfg.check_metrics_auth()  # before anything starts
    return cfg.model_copy(
        update={
            "ably": cfg.ably.model_copy(update=ably),
            "http": http_cfg,
            "worker": cfg.worker.model_copy(update=worker),
            "engine": cfg.engine.model_copy(update=_engine_overrides(o)),
        }
    )


def with_state_dir(cfg: Config) -> Config:
    """``agent-worker run``'s crash journal: unless configured, a per-user state dir per Ably service.
    An in-memory embedded server dies with the process, taking its channels along: no journal; nor
    under Temporal, which keeps the runs (and a fleet's workers share no directory)."""
    if cfg.worker.state_dir is not None or cfg.ably.embedded or cfg.engine.kind == "temporal":
        return cfg
    state_dir = str(default_state_dir(cfg.ably.endpoint or "ably"))
    return cfg.model_copy(update={"worker": cfg.worker.model_copy(update={"state_dir": state_dir})})


def build_worker(o: Overrides, target: str | None = None) -> Worker:
    """The worker ``agent-worker run [TARGET]`` serves: the target's agent (or worker), else the
    config's agent; the config file and the flags apply either way."""
    obj: Any = None
    if target is not None:
        if o.provider:
            msg = "--provider applies to the agent built from the config; the target brings its own"
            raise ConfigError(msg)
        obj = import_path(target)
        if not (isinstance(obj, Agent | Worker) or callable(obj)):
            msg = f"{target!r} is a {type(obj).__name__}; expected an Agent, a Worker or a run handler"
            raise ConfigError(msg)
    if isinstance(obj, Worker):
        base = load_config(o.config) if o.config is not None else obj.settings
        obj.configure(with_state_dir(apply_overrides(base, o)))
        return obj
    cfg = with_state_dir(apply_overrides(load_config(o.config), o))
    agent = obj if obj is not None else Agent.from_config(o.config or cfg, provider=o.provider or None)
    return Worker(agent, config=cfg)


async def serve_forever(o: Overrides, target: str | None = None) -> None:
    """Run until SIGINT/SIGTERM; then drain (see :meth:`Worker.close`)."""
    await build_worker(o, target).serve(on_ready=_banner)


def _banner(worker: Worker) -> None:
    lines = ["agent-worker is running"]
    embedded = worker.connection.embedded if worker.connection is not None else None
    if embedded is not None:
        lines.append(f"  embedded Ably server: {embedded.endpoint}   key: {embedded.default_key}")
        rules = "; ".join(r.describe() for r in embedded.config.channel_rules) or "none"
        lines.append(f"  channel rules: {rules} (on Ably, enable the same rules for these namespaces)")
    else:
        lines.append(f"  Ably: {worker.settings.ably.endpoint or 'Ably (default endpoint)'}")
    if worker.http_url is not None:
        http = worker.settings.http
        if http.metrics_open():
            metrics = "/metrics"
        elif http.resolved_metrics_token() is not None:
            metrics = "/metrics (bearer token)"
        else:
            metrics = "/metrics (closed beyond loopback: --http-metrics-token)"
        lines.append(f"  invocations: POST {worker.http_url}   health: /healthz   metrics: {metrics}")
    if worker.web_url is not None:
        lines.append(f"  web client: {worker.web_url}?clientId=alice   (and ?clientId=bob in another tab)")
    agent = worker.agent
    if isinstance(agent, Agent):
        reason = agent.provider_reason
        lines.append(
            f"  provider: {agent.provider_name}" + ("" if reason == "configured" else f" ({reason})")
        )
    else:
        lines.append(f"  handler: {getattr(agent, '__qualname__', type(agent).__name__)}")
    if worker.journal is not None:
        lines.append(f"  crash journal: {worker.journal.journal.state_dir}")
    engine = worker.settings.engine
    if engine.kind == "temporal":
        lines.append(
            f"  engine: temporal at {engine.address} (namespace {engine.namespace}, "
            f"task queue {engine.task_queue})"
        )
    if worker.config.watch_channels:
        lines.append(f"  watching: {', '.join(worker.config.watch_channels)}")
    lines.append("  stop with Ctrl-C (in-flight runs drain, then end cancelled)")
    typer.echo("\n".join(lines), err=False)
