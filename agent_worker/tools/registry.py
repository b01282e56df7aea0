"""The set of tools one agent may call, and building it from config names."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from agent_worker.errors import ConfigError, UnknownToolError
from agent_worker.providers.base import ToolDefinition
from agent_worker.tools.base import Tool

__all__ = ["ToolRegistry", "available_tools", "build_tools"]


class ToolRegistry:
    """Tools by name; a name can be added only once."""

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for tool in tools:
            self.add(tool)

    def add(self, tool: Tool | Callable[..., Any], **options: Any) -> Tool:
        if not isinstance(tool, Tool):
            tool = Tool.from_function(tool, **options)
        if tool.name in self._tools:
            msg = f"tool {tool.name!r} is declared twice; give one of them another name"
            raise ConfigError(msg)
        self._tools[tool.name] = tool
        return tool

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def __getitem__(self, name: str) -> Tool:
        try:
            return self._tools[name]
        except KeyError:
            msg = f"unknown tool {name!r}"
            raise UnknownToolError(msg) from None

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    def __repr__(self) -> str:
        return f"ToolRegistry({list(self._tools)!r})"

    def definitions(self) -> list[ToolDefinition]:
        """What the model is told, in registration order."""
        return [t.definition for t in self._tools.values()]


def available_tools() -> dict[str, Tool]:
    """Every tool registered by a plugin (built-ins included)."""
    from agent_worker.plugins import tool_specs  # noqa: PLC0415 - plugins imports tools.base (cycle)

    return tool_specs()


def build_tools(names: Sequence[str]) -> ToolRegistry:
    """Tools by registered name, or by import path ``"package.module:function"``.

    An import path may end in ``?client`` or ``?approval`` (or both, ``?client&approval``) to declare
    a client-side or approval-required tool without writing a plugin.
    """
    from agent_worker.plugins import import_path, tool_specs  # noqa: PLC0415 - as above

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
