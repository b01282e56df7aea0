"""System prompts as Markdown files, and building provider + tools + prompt from config tables."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent_worker.errors import ConfigError, UnknownProviderError, UnknownToolError
from agent_worker.prompts import PromptTemplate, default_prompt_dirs, list_prompts, load_prompt
from agent_worker.providers import EchoProvider, build_provider
from agent_worker.providers.registry import local_model_available
from agent_worker.providers.setup import build_agent_setup

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


class TestAgentSetup:
    def test_configured_provider_tools_and_prompt(self, tmp_path: Path) -> None:
        """The four config tables become a provider, a tool registry and a rendered system prompt."""
        (tmp_path / "team").mkdir()
        (tmp_path / "team" / "support.md").write_text("{company} support for {client_id}, model {model}.")
        setup = build_agent_setup(
            provider={"name": "echo"},
            providers={"echo": {"prefix": "> "}, "openai": {"model": "unused"}},
            tools={"enabled": ["current_time", "send_notification"]},
            prompts={"system": "support", "dir": "team", "values": {"company": "Acme"}},
            config_dir=tmp_path,
        )
        assert isinstance(setup.provider, EchoProvider) and setup.provider.prefix == "> "
        assert (setup.provider_name, setup.provider_reason) == ("echo", "configured")
        assert [d.name for d in setup.tools.definitions()] == ["current_time", "send_notification"]
        assert setup.tools["send_notification"].requires_approval
        rendered = setup.system_prompt(session_name="s", run_id="r", client_id="ann", now=NOW)
        assert rendered == "Acme support for ann, model ."

    def test_defaults_pick_a_provider_and_the_default_prompt(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """With nothing configured the automatic choice is used and explained."""
        monkeypatch.delenv("OPENAI_API_KEY")
        monkeypatch.delenv("ANTHROPIC_API_KEY")
        monkeypatch.chdir(REPO_PROMPTS.parent)
        setup = build_agent_setup()
        assert setup.provider_name in {"local", "echo"}
        assert setup.provider_reason != "configured"
        assert len(setup.tools) == 0
        assert setup.prompt is not None and setup.prompt.name == "default"

    def test_model_shortcut_and_override(self) -> None:
        """[provider] model fills the provider's model; a CLI override beats [provider] name."""
        setup = build_agent_setup(provider={"name": "openai", "model": "gpt-x"}, prompts={"system": ""})
        assert getattr(setup.provider, "model", None) == "gpt-x"
        assert setup.prompt is None
        override = build_agent_setup(
            provider={"name": "openai"}, provider_override="echo", prompts={"system": ""}
        )
        assert override.provider_name == "echo"

    def test_errors_are_config_errors(self) -> None:
        """Misspelt keys, unknown providers/tools and missing prompts fail at startup."""
        with pytest.raises(ConfigError, match="nmae"):
            build_agent_setup(provider={"nmae": "echo"})
        with pytest.raises(UnknownProviderError):
            build_agent_setup(provider={"name": "nope"})
        with pytest.raises(UnknownToolError):
            build_agent_setup(provider={"name": "echo"}, tools={"enabled": ["nope"]})
        with pytest.raises(ConfigError, match="list"):
            build_agent_setup(provider={"name": "echo"}, tools={"enabled": "current_time"})
        with pytest.raises(ConfigError, match="unknown prompt"):
            build_agent_setup(provider={"name": "echo"}, prompts={"system": "nope"})


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
        root = REPO_PROMPTS.parent
        setup = build_agent_setup(raw["provider"], sections, raw["tools"], raw["prompts"], config_dir=root)
        assert setup.provider_name == "echo"
        assert [t.name for t in setup.tools] == ["current_time", "calculate"]
        assert setup.prompt is not None and setup.prompt.name == "default"

    def test_retry_table_is_validated(self) -> None:
        """A misspelt or mistyped retry option is a ConfigError."""
        with pytest.raises(ConfigError, match="retry"):
            build_provider("openai", {"retry": {"attempt": 3}})
        with pytest.raises(ConfigError, match="integer"):
            build_provider("openai", {"retry": {"attempts": 2.5}})
