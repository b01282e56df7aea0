"""``agent-worker providers``: what this installation can use — providers (and which one would be
chosen by default, and why), tools with their flags, and the prompts found."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command("providers")
    def providers(
        config: Annotated[
            Path | None, typer.Option(help="Config file whose directory is searched for prompts.")
        ] = None,
    ) -> None:
        """List model providers, tools and system prompts (built-ins and installed plugins)."""
        # Heavy imports stay inside the command so `agent-worker --help` stays fast.
        from agent_worker.errors import ConfigError  # noqa: PLC0415
        from agent_worker.plugins import available_providers, available_tools  # noqa: PLC0415
        from agent_worker.prompts import default_prompt_dirs, list_prompts  # noqa: PLC0415
        from agent_worker.providers.registry import choose_default_provider  # noqa: PLC0415

        try:
            names = available_providers()
            tools = available_tools()
        except ConfigError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
        default, reason = choose_default_provider()
        typer.echo("providers:")
        for name, description in names.items():
            mark = "*" if name == default else " "
            typer.echo(f" {mark} {name:<18} {description}")
        typer.echo(f"   default: {default} ({reason})")
        typer.echo("tools:")
        for tool in sorted(tools.values(), key=lambda t: t.name):
            flags = [
                f for f, on in (("client-side", tool.client_side), ("approval", tool.requires_approval)) if on
            ]
            suffix = f" [{', '.join(flags)}]" if flags else ""
            summary = tool.description.splitlines()[0] if tool.description else ""
            typer.echo(f"   {tool.name:<20} {summary}{suffix}")
        typer.echo("prompts:")
        config_dir = config.resolve().parent if config is not None else None
        for name, path in list_prompts(default_prompt_dirs(config_dir)).items():
            typer.echo(f"   {name:<20} {path}")
