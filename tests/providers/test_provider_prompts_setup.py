"""System prompts as Markdown files, and building provider + tools + prompt from config tables."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent_worker.agent import Agent
from agent_worker.errors import ConfigError, UnknownProviderError, UnknownToolError
from agent_worker.plugins import build_provider
from agent_worker.prompts import PromptTemplate, default_prompt_dirs, list_prompts, load_prompt
from agent_worker.providers import EchoProvider
from agent_worker.providers.registry import local_model_available
from agent_worker.tools import RunContext

NOW = datetime(2025, 6, 2, 14, 5, tzinfo=UTC)  # a Monday
REPO_PROMPTS = Path(__file__).resolve().parents[2] / "prompts"


class TestPrompts:
    def test_placeholders_are_filled(self) -> None:
        """Built-in placeholders render; doubled braces and JSON-looking braces stay literal."""
        t = PromptTemplate("t", 'Hi {client_id} on {date} ({weekday} {time} {timezone}). {{x}} {"a": 1}')
        assert (
            t.render(client_id="alice", now=NOW) == 'Hi alice on 2025-06-02 (Monday 14:05 UTC). {x} {"a": 1}'
        )

    def test_timezone_and_custom_values(self) -> None:
        """[prompts] timezone shifts the date; [prompts.values] adds placeholders."""
        t = PromptTemplate("t", "{company}: {datetime}", values={"company": "Acme"}, timezone="Asia/Tokyo")
        assert t.render(now=NOW) == "Acme: 2025-06-02T23:05:00+09:00"

    def test_unknown_placeholder_fails_at_load(self) -> None:
        """A typo such as {clientid} is a ConfigError naming the known placeholders."""
        with pytest.raises(ConfigError, match=r"\{clientid\}.*client_id"):
            PromptTemplate("t", "Hello {clientid}")
        with pytest.raises(ConfigError, match="IANA"):
            PromptTemplate("t", "x", timezone="Mars/Base")

    def test_anonymous_client(self) -> None:
        """A run without a verified clientId renders as 'anonymous'."""
        assert PromptTemplate("t", "{client_id}").render(now=NOW) == "anonymous"

    def test_shipped_prompts_load_and_render(self) -> None:
        """Every prompt in prompts/ is valid and renders without leftover placeholders."""
        found = list_prompts([REPO_PROMPTS])
        assert {"default", "concise", "small-model"} <= set(found)
        assert "README" not in found
        for name in found:
            text = load_prompt(name, dirs=[REPO_PROMPTS]).render(client_id="bob", session_name="s1", now=NOW)
            assert "{" not in text, name
        default = load_prompt("default", dirs=[REPO_PROMPTS]).render(
            client_id="bob", session_name="s1", now=NOW
        )
        assert "`bob`" in default and "2025-06-02" in default

    def test_search_order_and_paths(self, tmp_path: Path) -> None:
        """A prompt next to the config shadows the shipped one; paths to .md files work too."""
        (tmp_path / "prompts").mkdir()
        (tmp_path / "prompts" / "default.md").write_text("Local default for {client_id}.")
        (tmp_path / "mine.md").write_text("Mine.")
        dirs = default_prompt_dirs(tmp_path)
        assert load_prompt("default", dirs=dirs).render(client_id="c", now=NOW) == "Local default for c."
        assert load_prompt(str(tmp_path / "mine.md")).render(now=NOW) == "Mine."
        with pytest.raises(ConfigError, match=r"available: .*concise"):
            load_prompt("nope", dirs=dirs)
        with pytest.raises(ConfigError, match="not found"):
            load_prompt("missing.md", dirs=dirs)


def agent_from(tmp_path: Path, text: str, *, provider: str | None = None) -> Agent[None]:
    """``Agent.from_config`` over a config file with ``text`` in ``tmp_path``."""
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return Agent.from_config(path, provider=provider)


def context(client_id: str = "ann") -> RunContext[None]:
    return RunContext(session_name="s", run_id="r", client_id=client_id)


class TestAgentFromConfig:
    async def test_configured_provider_tools_and_prompt(self, tmp_path: Path) -> None:
        """The config tables become a provider, a tool registry and a rendered system prompt."""
        (tmp_path / "team").mkdir()
        (tmp_path / "team" / "support.md").write_text("{company} support for {client_id}, model {model}.")
        agent = agent_from(
            tmp_path,
            """
[provider]
name = "echo"
[providers.echo]
prefix = "> "
[providers.openai]
model = "unused"
[tools]
enabled = ["current_time", "send_notification"]
[prompts]
system = "support"
dir = "team"
values = { company = "Acme" }
""",
        )
        assert isinstance(agent.provider, EchoProvider) and agent.provider.prefix == "> "
        assert (agent.provider_name, agent.provider_reason) == ("echo", "configured")
        assert [d.name for d in agent.tools.definitions()] == ["current_time", "send_notification"]
        assert agent.tools["send_notification"].requires_approval
        assert await agent.render_system_prompt(context()) == "Acme support for ann, model ."

    def test_defaults_pick_a_provider_and_the_default_prompt(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """With nothing configured the automatic choice is used and explained."""
        monkeypatch.delenv("OPENAI_API_KEY")
        monkeypatch.delenv("ANTHROPIC_API_KEY")
        monkeypatch.chdir(REPO_PROMPTS.parent)
        agent = Agent.from_config()
        assert agent.provider_name in {"local", "echo"}
        assert agent.provider_reason != "configured"
        assert len(agent.tools) == 0
        assert isinstance(agent.system_prompt, PromptTemplate) and agent.system_prompt.name == "default"

    def test_model_shortcut_and_override(self, tmp_path: Path) -> None:
        """[provider] model fills the provider's model; a CLI override beats [provider] name."""
        text = '[provider]\nname = "openai"\nmodel = "gpt-x"\n[prompts]\nsystem = ""\n'
        agent = agent_from(tmp_path, text)
        assert getattr(agent.provider, "model", None) == "gpt-x"
        assert agent.system_prompt is None
        override = agent_from(
            tmp_path, '[provider]\nname = "openai"\n[prompts]\nsystem = ""\n', provider="echo"
        )
        assert override.provider_name == "echo"

    def test_errors_are_config_errors(self, tmp_path: Path) -> None:
        """Misspelt keys, unknown providers/tools and missing prompts fail at startup."""
        with pytest.raises(ConfigError, match=r"unknown key 'nmae' in \[provider\]"):
            agent_from(tmp_path, '[provider]\nnmae = "echo"\n')
        with pytest.raises(UnknownProviderError):
            agent_from(tmp_path, '[provider]\nname = "nope"\n')
        with pytest.raises(UnknownToolError):
            agent_from(tmp_path, '[provider]\nname = "echo"\n[tools]\nenabled = ["nope"]\n')
        with pytest.raises(ConfigError, match=r"\[tools\] enabled"):
            agent_from(tmp_path, '[provider]\nname = "echo"\n[tools]\nenabled = "current_time"\n')
        with pytest.raises(ConfigError, match="unknown prompt"):
            agent_from(tmp_path, '[provider]\nname = "echo"\n[prompts]\nsystem = "nope"\n')


class TestExampleConfig:
    def test_every_provider_section_of_the_example_builds(self) -> None:
        """config.example.toml stays valid: each [providers.*] table builds its provider."""
        raw = tomllib.loads((REPO_PROMPTS.parent / "config.example.toml").read_text())
        sections = raw["providers"]
        expected = {"echo", "openai", "openai-responses", "anthropic", "openai-compatible", "local"}
        assert expected <= set(sections)
        for name, options in sections.items():
            if name == "local" and not local_model_available():
                continue
            assert build_provider(name, options).name == name
        agent = Agent.from_config(REPO_PROMPTS.parent / "config.example.toml")
        assert agent.provider_name == "echo"
        assert [t.name for t in agent.tools] == ["current_time", "calculate"]
        assert isinstance(agent.system_prompt, PromptTemplate) and agent.system_prompt.name == "default"

    def test_retry_table_is_validated(self) -> None:
        """A misspelt or mistyped retry option is a ConfigError."""
        with pytest.raises(ConfigError, match="retry"):
            build_provider("openai", {"retry": {"attempt": 3}})
        with pytest.raises(ConfigError, match="integer"):
            build_provider("openai", {"retry": {"attempts": 2.5}})
