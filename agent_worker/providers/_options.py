"""Option checking and secrets shared by the provider factories (``from_options``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from agent_worker.errors import ConfigError

__all__ = ["Secret", "check_options", "secret_from_env"]


def check_options(provider: str, options: Mapping[str, Any], allowed: set[str]) -> None:
    """Fail loudly on a misspelt option instead of silently ignoring it."""
    unknown = sorted(set(options) - allowed)
    if unknown:
        msg = (
            f"unknown option(s) {', '.join(unknown)} for provider {provider!r}; "
            f"allowed: {', '.join(sorted(allowed)) or '(none)'}"
        )
        raise ConfigError(msg)


class Secret:
    """A string that never shows itself in ``repr``/``str`` (so never in logs or tracebacks)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)


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
