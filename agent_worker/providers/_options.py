"""Option checking and secrets shared by the provider factories (``from_options``)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Set
from typing import Any

from agent_worker.config import Secret
from agent_worker.errors import ConfigError
from agent_worker.providers.retries import retry_config

__all__ = ["CLIENT_OPTIONS", "Secret", "check_options", "client_options", "secret_from_env"]

# The options every SDK-backed adapter accepts (``model`` plus what :func:`client_options` reads).
CLIENT_OPTIONS = frozenset({"model", "api_key_env", "base_url", "timeout", "retry"})


def check_options(provider: str, options: Mapping[str, Any], allowed: Set[str]) -> None:
    """Fail loudly on a misspelt option instead of silently ignoring it."""
    unknown = sorted(set(options) - allowed)
    if unknown:
        msg = (
            f"unknown option(s) {', '.join(unknown)} for provider {provider!r}; "
            f"allowed: {', '.join(sorted(allowed)) or '(none)'}"
        )
        raise ConfigError(msg)


def secret_from_env(provider: str, env_var: str, *, required: bool = True) -> Secret | None:
    """Read an API key from the environment; config files name the variable, never the key."""
    value = os.environ.get(env_var)
    if value:
        return Secret(value)
    if required:
        msg = (
            f"provider {provider!r} needs an API key: set the {env_var} environment variable "
            f"(or point api_key_env at another variable in the provider's config section)"
        )
        raise ConfigError(msg)
    return None


def client_options(
    provider: str, options: Mapping[str, Any], key_env: str | None, *, key_required: bool = False
) -> dict[str, Any]:
    """The constructor arguments every SDK-backed adapter takes: ``api_key`` (read from the variable
    ``api_key_env`` names, default ``key_env``; none if that is empty unless ``key_required``),
    ``base_url``, ``timeout`` and ``retry``."""
    env = options.get("api_key_env", key_env)
    return {
        "api_key": secret_from_env(provider, str(env)) if env or key_required else None,
        "base_url": options.get("base_url"),
        "timeout": float(options.get("timeout", 120.0)),
        "retry": retry_config(provider, options.get("retry")),
    }
