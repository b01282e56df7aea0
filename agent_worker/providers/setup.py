"""Turn the provider layer's config sections into what a run needs: provider, tools, system prompt.

The sections (kept as plain tables by :mod:`agent_worker.config`)::

    [provider]
    name = "openai"            # omitted: choose_default_provider() picks one and says why
    model = "gpt-4.1-mini"     # optional shortcut for [providers.<name>].model

    [providers.openai]         # options for each provider (see config.example.toml)
    api_key_env = "OPENAI_API_KEY"

    [tools]
    enabled = ["current_time", "calculate"]

    [prompts]
    system = "default"         # prompts/default.md, or a path to a .md file
    dir = "prompts"            # optional extra directory, relative to the config file
    timezone = "UTC"
    values = { company = "Acme" }

Everything is validated here, at startup: unknown keys, providers, tools and placeholders raise
:class:`ConfigError` subclasses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from agent_worker.errors import ConfigError
from agent_worker.prompts import PromptTemplate, default_prompt_dirs, load_prompt
from agent_worker.providers.base import ModelProvider
from agent_worker.providers.registry import build_provider, choose_default_provider
from agent_worker.tools.registry import ToolRegistry, build_tools

__all__ = ["AgentSetup", "build_agent_setup"]


def _table(section: str, raw: Any, allowed: set[str]) -> Mapping[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        msg = f"config section [{section}] must be a table"
        raise ConfigError(msg)
    unknown = sorted(set(raw) - allowed)
    if unknown:
        msg = f"unknown key(s) {', '.join(unknown)} in [{section}]; allowed: {', '.join(sorted(allowed))}"
        raise ConfigError(msg)
    return raw


@dataclass(frozen=True, slots=True)
class AgentSetup:
    provider: ModelProvider
    provider_name: str
    provider_reason: str
    """Why this provider: "configured" or the automatic choice's reason (the quick start prints it)."""
    tools: ToolRegistry
    prompt: PromptTemplate | None
    agent_name: str = "agent"

    def system_prompt(
        self,
        *,
        session_name: str,
        run_id: str,
        client_id: str | None,
        now: datetime | None = None,
    ) -> str | None:
        """The rendered system prompt for one run (None when no prompt is configured)."""
        if self.prompt is None:
            return None
        return self.prompt.render(
            client_id=client_id,
            session_name=session_name,
            run_id=run_id,
            agent_name=self.agent_name,
            model=str(getattr(self.provider, "model", "") or ""),
            now=now,
        )


def build_agent_setup(
    provider: Mapping[str, Any] | None = None,
    providers: Mapping[str, Any] | None = None,
    tools: Mapping[str, Any] | None = None,
    prompts: Mapping[str, Any] | None = None,
    *,
    config_dir: Path | None = None,
    agent_name: str = "agent",
    provider_override: str | None = None,
) -> AgentSetup:
    """Build provider, tools and prompt from the four config sections (all optional).

    ``provider_override`` (a CLI flag such as ``--provider echo``) wins over ``[provider] name``.
    """
    p = _table("provider", provider, {"name", "model"})
    all_options = _table("providers", providers, set(providers or {}))
    t = _table("tools", tools, {"enabled"})
    pr = _table("prompts", prompts, {"system", "dir", "timezone", "values"})

    name = provider_override or p.get("name")
    if name:
        reason = "configured"
    else:
        name, reason = choose_default_provider()
    options = all_options.get(name, {})
    if not isinstance(options, Mapping):
        msg = f"config section [providers.{name}] must be a table"
        raise ConfigError(msg)
    options = dict(options)
    if p.get("model"):
        options["model"] = p["model"]
    built = build_provider(str(name), options)

    enabled = t.get("enabled", [])
    if not isinstance(enabled, list) or not all(isinstance(x, str) for x in enabled):
        msg = "[tools] enabled must be a list of tool names (or 'package.module:function' paths)"
        raise ConfigError(msg)
    registry = build_tools(enabled)

    prompt: PromptTemplate | None = None
    system = pr.get("system", "default")
    values = pr.get("values", {})
    if not isinstance(values, Mapping):
        msg = "[prompts] values must be a table of placeholder = text"
        raise ConfigError(msg)
    dirs = default_prompt_dirs(config_dir, pr.get("dir"))
    timezone = str(pr.get("timezone", "UTC"))
    if system and ("system" in pr or any((d / f"{system}.md").is_file() for d in dirs)):
        # An explicitly chosen prompt must exist; the implicit "default" is used only if present
        # (an installed wheel without a prompts/ directory runs without a system prompt).
        prompt = load_prompt(str(system), dirs=dirs, values=values, timezone=timezone)
    return AgentSetup(built, str(name), reason, registry, prompt, agent_name)
