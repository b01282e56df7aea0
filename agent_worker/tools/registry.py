"""The set of tools one agent may call (names are resolved by :mod:`agent_worker.plugins`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from agent_worker.errors import ConfigError, UnknownToolError
from agent_worker.providers.base import ToolDefinition
from agent_worker.tools.base import Tool

__all__ = ["ToolRegistry"]


class ToolRegistry:
    """Tools by name; a name can be added only once."""

    def __init__(self, tools: Iterable[Tool | Callable[..., Any]] = ()) -> None:
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
