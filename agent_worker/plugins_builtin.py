"""The built-in providers and tools, registered through the same hooks as third-party plugins.

Adapter modules are imported only when a provider is built, so a missing optional dependency
(``llama-cpp-python`` for ``local``) matters only to whoever selects that provider.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from agent_worker.hookspecs import RegisterProvider, RegisterTool, hookimpl

if TYPE_CHECKING:
    from agent_worker.hookspecs import ProviderFactory
    from agent_worker.providers.base import ModelProvider

# name -> (module, class, description)
_PROVIDERS = {
    "echo": ("agent_worker.providers.echo", "EchoProvider", "streams the user's text back; no network"),
    "openai": ("agent_worker.providers.openai_chat", "OpenAIChatProvider", "OpenAI Chat Completions"),
    "openai-responses": (
        "agent_worker.providers.openai_responses",
        "OpenAIResponsesProvider",
        "OpenAI Responses API (reasoning summaries)",
    ),
    "openai-compatible": (
        "agent_worker.providers.openai_chat",
        "OpenAICompatibleProvider",
        "any OpenAI-compatible server by base_url (llama.cpp server, vLLM, Ollama)",
    ),
    "anthropic": ("agent_worker.providers.anthropic", "AnthropicProvider", "Anthropic Messages"),
    "local": (
        "agent_worker.providers.local",
        "LocalLlamaProvider",
        "in-process SmolLM2-135M via llama-cpp-python (extra: local)",
    ),
}


def _lazy(module: str, cls: str) -> ProviderFactory:
    def factory(options: Mapping[str, Any]) -> ModelProvider:
        provider_cls = getattr(importlib.import_module(module), cls)
        provider: ModelProvider = provider_cls.from_options(options)
        return provider

    return factory


@hookimpl
def register_providers(register: RegisterProvider) -> None:
    for name, (module, cls, description) in _PROVIDERS.items():
        register(name, _lazy(module, cls), description=description)


@hookimpl
def register_tools(register: RegisterTool) -> None:
    from agent_worker.tools import builtin  # noqa: PLC0415 - loaded only when tools are listed

    register(builtin.current_time)
    register(builtin.calculate)
    register(builtin.random_number)
    register(builtin.get_client_location, client_side=True)
    register(builtin.send_notification, requires_approval=True)
