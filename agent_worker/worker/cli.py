"""``agent-worker run [TARGET]``: the worker service.

``TARGET`` is an import path to the agent to serve, arq-style: ``myapp.agents:support_agent`` (an
``Agent``, a ``Worker`` or a run handler); without it the config file describes the agent. With no
Ably endpoint and no key configured it starts the embedded Ably-compatible server in-process
and prints its endpoint and key — the offline default. Flags override the config file; each flag
also reads an environment variable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run(  # noqa: PLR0917 - typer maps each parameter to a CLI option
        target: Annotated[
            str | None,
            typer.Argument(
                help="The agent to serve, 'package.module:attribute' (an Agent, a Worker or a run "
                "handler); default: the agent the config describes.",
                show_default=False,
            ),
        ] = None,
        config: Annotated[
            Path | None,
            typer.Option(
                "--config", envvar="AGENT_WORKER_CONFIG", help="TOML config file (see config.example.toml)."
            ),
        ] = None,
        ably_endpoint: Annotated[
            str | None,
            typer.Option(
                "--ably-endpoint",
                envvar="AGENT_WORKER_ABLY_ENDPOINT",
                help="HOST:PORT of an Ably-compatible service, or 'ably' for Ably itself "
                "(default: start the embedded server).",
            ),
        ] = None,
        key: Annotated[
            str | None,
            typer.Option(
                "--key", envvar="ABLY_KEY", help="Ably API key (APP.KEY:SECRET).", show_default=False
            ),
        ] = None,
        http: Annotated[
            str | None,
            typer.Option(
                "--http", envvar="AGENT_WORKER_HTTP", help="HOST:PORT for /api/chat, /healthz, /metrics."
            ),
        ] = None,
        http_max_connections: Annotated[
            int | None,
            typer.Option(
                "--http-max-connections",
                envvar="AGENT_WORKER_HTTP_MAX_CONNECTIONS",
                help="Connections the HTTP port holds at once; past it 503 (default 1024).",
                show_default=False,
            ),
        ] = None,
        http_write_timeout_s: Annotated[
            float | None,
            typer.Option(
                "--http-write-timeout-s",
                envvar="AGENT_WORKER_HTTP_WRITE_TIMEOUT_S",
                help="Seconds an answer may drain less than 16 KiB to a client that stopped reading "
                "(or trickles) before the connection is dropped (default 30).",
                show_default=False,
            ),
        ] = None,
        http_metrics_token: Annotated[
            str | None,
            typer.Option(
                "--http-metrics-token",
                envvar="AGENT_WORKER_HTTP_METRICS_TOKEN",
                help="Bearer token /metrics and /healthz's details require (prefer the environment "
                "variable: a flag shows in the process list); default: open on loopback, closed "
                "beyond it.",
                show_default=False,
            ),
        ] = None,
        http_metrics_auth: Annotated[
            str | None,
            typer.Option(
                "--http-metrics-auth",
                envvar="AGENT_WORKER_HTTP_METRICS_AUTH",
                help="Who may read /metrics: auto (open on loopback, a token beyond it), token or "
                "none (anyone who can reach the port).",
                show_default=False,
            ),
        ] = None,
        http_allowed_host: Annotated[
            list[str] | None,
            typer.Option(
                "--http-allowed-host",
                envvar="AGENT_WORKER_HTTP_ALLOWED_HOSTS",
                help="A Host name the HTTP API answers besides loopback names and IP addresses "
                "(repeatable; '*.example.com', '*' for any; the variable: space-separated). Bound to "
                "loopback, other names get 421 (a DNS-rebinding guard).",
                show_default=False,
            ),
        ] = None,
        provider: Annotated[
            str | None,
            typer.Option(
                "--provider", envvar="AGENT_WORKER_PROVIDER", help="Model provider (echo, openai, ...)."
            ),
        ] = None,
        watch: Annotated[
            list[str] | None,
            typer.Option(
                "--watch", help="Channel-watch mode: serve this session without invocations (repeatable)."
            ),
        ] = None,
        log_format: Annotated[
            str | None,
            typer.Option("--log-format", envvar="AGENT_WORKER_LOG_FORMAT", help="console or json."),
        ] = None,
        log_level: Annotated[
            str | None, typer.Option("--log-level", envvar="AGENT_WORKER_LOG_LEVEL", help="debug, info, ...")
        ] = None,
        state_dir: Annotated[
            str | None,
            typer.Option(
                "--state-dir",
                envvar="AGENT_WORKER_STATE_DIR",
                help="Crash journal directory (one worker per dir; default: a per-user state dir for "
                "the Ably service, none for the in-memory embedded server; '' = off).",
                show_default=False,
            ),
        ] = None,
        engine: Annotated[
            str | None,
            typer.Option(
                "--engine",
                envvar="AGENT_WORKER_ENGINE",
                help="Where runs execute: local (this process) or temporal (a durable workflow per "
                "invocation; a fleet of workers on one task queue).",
            ),
        ] = None,
        temporal_address: Annotated[
            str | None,
            typer.Option(
                "--temporal-address", envvar="TEMPORAL_ADDRESS", help="HOST:PORT of the Temporal frontend."
            ),
        ] = None,
        temporal_namespace: Annotated[
            str | None,
            typer.Option("--temporal-namespace", envvar="TEMPORAL_NAMESPACE", help="Temporal namespace."),
        ] = None,
        temporal_task_queue: Annotated[
            str | None,
            typer.Option(
                "--temporal-task-queue",
                envvar="AGENT_WORKER_TEMPORAL_TASK_QUEUE",
                help="The fleet's task queue (one per agent).",
            ),
        ] = None,
    ) -> None:
        """Run the agent worker (HTTP invocations + channel sessions) until SIGINT/SIGTERM."""
        import sys  # noqa: PLC0415

        if target is not None and "" not in sys.path:
            sys.path.insert(0, "")  # like `python -m` and arq: the target may live in the cwd
        from agent_worker import eventloop  # noqa: PLC0415
        from agent_worker.errors import AgentWorkerError  # noqa: PLC0415
        from agent_worker.worker.main import Overrides, serve_forever  # noqa: PLC0415

        overrides = Overrides(
            config=config,
            ably_endpoint=ably_endpoint,
            key=key,
            http=http,
            http_max_connections=http_max_connections,
            http_write_timeout_s=http_write_timeout_s,
            http_metrics_token=http_metrics_token,
            http_metrics_auth=http_metrics_auth,
            http_allowed_hosts=tuple(http_allowed_host or ()),
            provider=provider,
            watch=tuple(watch or ()),
            log_format=log_format,
            log_level=log_level,
            state_dir=state_dir,
            engine=engine,
            temporal_address=temporal_address,
            temporal_namespace=temporal_namespace,
            temporal_task_queue=temporal_task_queue,
        )
        try:
            eventloop.run(serve_forever(overrides, target))
        except AgentWorkerError as exc:
            typer.echo(f"agent-worker: {exc.message}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:  # pragma: no cover - a second Ctrl-C during shutdown
            raise typer.Exit(130) from None
