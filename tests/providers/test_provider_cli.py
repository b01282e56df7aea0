"""``agent-worker providers`` lists what is installed and explains the default choice."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from agent_worker.providers import cli


def app() -> typer.Typer:
    application = typer.Typer()
    cli.register(application)

    @application.command("noop")
    def noop() -> None:  # a second command keeps typer in multi-command mode
        """Nothing."""

    return application


def test_lists_providers_tools_prompts_and_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every built-in shows up; the default is marked with its reason; flags are shown."""
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "mock-api-key")
    result = CliRunner().invoke(app(), ["providers"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert " * anthropic" in out
    assert "default: anthropic (ANTHROPIC_API_KEY is set)" in out
    for name in ("echo", "openai-compatible", "local", "current_time", "default", "small-model"):
        assert name in out
    assert "send_notification" in out and "[approval]" in out
    assert "[client-side]" in out
    assert "mock-api-key" not in out
