"""pluggy hook specifications: how a package adds providers and tools.

A plugin is any module or object with ``@hookimpl`` functions, found through the ``agent_worker``
entry-point group (see :mod:`agent_worker.plugins`). The built-ins use the same hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    from agent_worker.providers.base import ModelProvider
    from agent_worker.tools.base import Tool

__all__ = ["ProviderFactory", "RegisterProvider", "RegisterTool", "hookimpl", "hookspec"]

hookspec = pluggy.HookspecMarker("agent_worker")
hookimpl = pluggy.HookimplMarker("agent_worker")

ProviderFactory = Callable[[Mapping[str, Any]], "ModelProvider"]
"""Builds a provider from its config options (a TOML table); raises ConfigError on bad options."""


class RegisterProvider(Protocol):
    def __call__(self, name: str, factory: ProviderFactory, *, description: str = "") -> None: ...


class RegisterTool(Protocol):
    def __call__(
        self,
        tool: Tool | Callable[..., Any],
        *,
        name: str | None = None,
        client_side: bool = False,
        requires_approval: bool = False,
    ) -> None: ...


@hookspec
def register_providers(register: RegisterProvider) -> None:
    """Register model providers: ``register("name", factory, description=...)``."""


@hookspec
def register_tools(register: RegisterTool) -> None:
    """Register tools: ``register(function_or_tool, name=..., client_side=..., requires_approval=...)``."""
