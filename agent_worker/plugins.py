"""Plugins and the one resolver: provider and tool *names* (or import paths) → objects.

This layer sits above :mod:`agent_worker.providers` and :mod:`agent_worker.tools` (which never
import it). Built-ins and third-party packages register providers and tools the same way.

Third-party packages declare an entry point in the ``agent_worker`` group::

    [project.entry-points.agent_worker]
    my_plugin = "my_package.agent_worker_plugin"

and implement the hooks of :mod:`agent_worker.hookspecs` with ``@hookimpl``. The environment
variable ``AGENT_WORKER_PLUGINS`` restricts which entry points load (comma-separated names; empty
means none but the built-ins). Config files can also name a provider factory or a tool function by
import path (``"package.module:attribute"``) without any plugin.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import pluggy

from agent_worker import hookspecs
from agent_worker.errors import ConfigError, UnknownProviderError, UnknownToolError
from agent_worker.hookspecs import ProviderFactory
from agent_worker.providers.base import ModelProvider
from agent_worker.tools.base import Tool
from agent_worker.tools.registry import ToolRegistry

__all__ = [
    "ENTRY_POINT_GROUP",
    "PLUGINS_ENV",
    "ProviderSpec",
    "available_providers",
    "available_tools",
    "build_provider",
    "build_tools",
    "get_plugin_manager",
    "import_path",
    "load_plugins",
    "provider_specs",
    "register_plugin",
    "reset_plugins",
    "tool_specs",
    "unregister_plugin",
]

ENTRY_POINT_GROUP = "agent_worker"
PLUGINS_ENV = "AGENT_WORKER_PLUGINS"
_BUILTINS = "builtins"

_pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
_pm.add_hookspecs(hookspecs)
_lock = threading.Lock()
_loaded = False


def get_plugin_manager() -> pluggy.PluginManager:
    load_plugins()
    return _pm


def load_plugins() -> None:
    """Register the built-ins and every allowed entry point, once (idempotent, thread-safe)."""
    global _loaded  # noqa: PLW0603 - the process-wide plugin set is loaded once
    with _lock:
        if _loaded:
            return
        from agent_worker import plugins_builtin  # noqa: PLC0415 - it imports this module's hookspecs

        if not _pm.is_registered(plugins_builtin):
            _pm.register(plugins_builtin, name=_BUILTINS)
        allowed = _allowed_names()
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name == _BUILTINS or (allowed is not None and ep.name not in allowed):
                continue
            if _pm.get_plugin(ep.name) is not None:
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                msg = f"agent_worker plugin {ep.name!r} ({ep.value}) failed to import: {exc}"
                raise ConfigError(msg) from exc
            _pm.register(plugin, name=ep.name)
        _loaded = True


def reset_plugins() -> None:
    """Forget entry-point plugins so the next lookup rescans (for tests that install a package)."""
    global _loaded  # noqa: PLW0603
    with _lock:
        for name, plugin in list(_pm.list_name_plugin()):
            if name != _BUILTINS and plugin is not None:
                _pm.unregister(plugin)
        _loaded = False


def register_plugin(plugin: object, name: str | None = None) -> str:
    """Register a plugin object directly (tests; embedding applications). Returns its name."""
    load_plugins()
    registered = _pm.register(plugin, name=name)
    if registered is None:
        msg = f"plugin {name or plugin!r} is already registered or blocked"
        raise ConfigError(msg)
    return registered


def unregister_plugin(plugin: object) -> None:
    _pm.unregister(plugin)


def _allowed_names() -> set[str] | None:
    raw = os.environ.get(PLUGINS_ENV)
    if raw is None:
        return None
    return {n.strip() for n in raw.split(",") if n.strip()}


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    name: str
    factory: ProviderFactory
    description: str
    plugin: str


def provider_specs() -> dict[str, ProviderSpec]:
    """Every registered provider by name; two plugins registering one name is a ConfigError."""
    load_plugins()
    specs: dict[str, ProviderSpec] = {}
    for impl in _pm.hook.register_providers.get_hookimpls():

        def register(
            name: str, factory: ProviderFactory, *, description: str = "", _plugin: str = impl.plugin_name
        ) -> None:
            if name in specs:
                msg = f"provider {name!r} is registered by both {specs[name].plugin!r} and {_plugin!r}"
                raise ConfigError(msg)
            specs[name] = ProviderSpec(name, factory, description, _plugin)

        impl.function(register=register)
    return specs


def tool_specs() -> dict[str, Tool]:
    """Every registered tool by name; duplicates across plugins are a ConfigError."""
    load_plugins()
    tools: dict[str, Tool] = {}
    owners: dict[str, str] = {}
    for impl in _pm.hook.register_tools.get_hookimpls():

        def register(
            tool: Tool | Callable[..., Any],
            *,
            name: str | None = None,
            client_side: bool = False,
            requires_approval: bool = False,
            _plugin: str = impl.plugin_name,
        ) -> None:
            if not isinstance(tool, Tool):
                tool = Tool.from_function(
                    tool, name=name, client_side=client_side, requires_approval=requires_approval
                )
            if tool.name in tools:
                msg = f"tool {tool.name!r} is registered by both {owners[tool.name]!r} and {_plugin!r}"
                raise ConfigError(msg)
            tools[tool.name] = tool
            owners[tool.name] = _plugin

        impl.function(register=register)
    return tools


def import_path(path: str) -> Any:
    """Resolve ``"package.module:attribute"`` (the config's way to name code without a plugin)."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        msg = f"{path!r} is not an import path; write it as 'package.module:attribute'"
        raise ConfigError(msg)
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        msg = f"cannot import {module_name!r} (from {path!r}): {exc}"
        raise ConfigError(msg) from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            msg = f"{module_name!r} has no attribute {attr!r} (from {path!r})"
            raise ConfigError(msg) from exc
    return obj


# --- the resolver ----------------------------------------------------------------------------------


def available_providers() -> dict[str, str]:
    """Registered provider names with a one-line description."""
    return {name: spec.description for name, spec in sorted(provider_specs().items())}


def available_tools() -> dict[str, Tool]:
    """Every tool registered by a plugin (built-ins included)."""
    return tool_specs()


def build_provider(name: str, options: Mapping[str, Any] | None = None) -> ModelProvider:
    """Build the provider registered as ``name`` (or ``"package.module:factory"``) with ``options``.

    An import path may name a class with ``from_options(options)`` or any callable taking the
    options mapping. Unknown names and bad options raise :class:`ConfigError` subclasses.
    """
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


def build_tools(names: Sequence[str]) -> ToolRegistry:
    """Tools by registered name, or by import path ``"package.module:function"``.

    An import path may end in ``?client`` or ``?approval`` (or both, ``?client&approval``) to declare
    a client-side or approval-required tool without writing a plugin.
    """
    known: dict[str, Tool] | None = None
    registry = ToolRegistry()
    for name in names:
        if ":" in name:
            path, _, flags_text = name.partition("?")
            flags = {f.strip() for f in flags_text.split("&") if f.strip()}
            bad = flags - {"client", "approval"}
            if bad:
                msg = f"tool {name!r}: unknown flag(s) {', '.join(sorted(bad))}; use ?client and/or ?approval"
                raise ConfigError(msg)
            obj = import_path(path)
            if isinstance(obj, Tool):
                registry.add(obj)
            else:
                registry.add(obj, client_side="client" in flags, requires_approval="approval" in flags)
            continue
        if known is None:
            known = tool_specs()
        tool = known.get(name)
        if tool is None:
            msg = (
                f"unknown tool {name!r}; registered tools: {', '.join(sorted(known)) or '(none)'} "
                "(or name a function by import path, 'package.module:function')"
            )
            raise UnknownToolError(msg)
        registry.add(tool)
    return registry
