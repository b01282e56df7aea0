"""Provider options: each provider declares a strict pydantic model of its ``[providers.<name>]``
table, validated (unknown keys and wrong types named by path) by :func:`parse_options`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Any, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent_worker.config import Secret, config_error
from agent_worker.errors import ConfigError
from agent_worker.providers.retries import RetryConfig

__all__ = [
    "ClientOptions",
    "ProviderOptions",
    "RetryOptions",
    "Secret",
    "client_options",
    "parse_options",
    "secret_from_env",
]

OptionsT = TypeVar("OptionsT", bound="ProviderOptions")


class ProviderOptions(BaseModel):
    """Base of every provider's options model: frozen, strict, no unknown keys, finite numbers (a
    TOML ``inf`` / ``nan`` timeout or wait is refused by name rather than taken as no bound)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class RetryOptions(ProviderOptions):
    """``[providers.<name>.retry]`` (see :class:`agent_worker.providers.retries.RetryConfig`)."""

    attempts: Annotated[int, Field(ge=1)] | None = None
    initial_wait: Annotated[float, Field(ge=0)] | None = None
    max_wait: Annotated[float, Field(ge=0)] | None = None
    jitter: Annotated[float, Field(ge=0)] | None = None

    def config(self) -> RetryConfig:
        return cast(RetryConfig, self.model_dump(exclude_none=True))


class ClientOptions(ProviderOptions):
    """The options every SDK-backed adapter accepts."""

    model: str | None = None
    api_key_env: str | None = None
    """The *name* of the environment variable holding the key (never the key itself)."""
    base_url: str | None = None
    timeout: Annotated[float, Field(gt=0)] = 120.0
    retry: RetryOptions | None = None


def parse_options(provider: str, model: type[OptionsT], options: Mapping[str, Any]) -> OptionsT:
    """``options`` validated against ``model``; errors name ``[providers.<provider>] key``."""
    try:
        return model.model_validate(dict(options))
    except ValidationError as exc:
        raise config_error(exc, model, ("providers", provider)) from None


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
    provider: str, options: ClientOptions, key_env: str | None, *, key_required: bool = False
) -> dict[str, Any]:
    """The constructor arguments every SDK-backed adapter takes: ``api_key`` (read from the variable
    ``api_key_env`` names, default ``key_env``; none if that is empty unless ``key_required``),
    ``base_url``, ``timeout`` and ``retry``."""
    env = options.api_key_env if "api_key_env" in options.model_fields_set else key_env
    return {
        "api_key": secret_from_env(provider, str(env)) if env or key_required else None,
        "base_url": options.base_url,
        "timeout": options.timeout,
        "retry": options.retry.config() if options.retry is not None else None,
    }
