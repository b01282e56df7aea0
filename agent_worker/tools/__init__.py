"""Tools the model can call: plain Python functions with type hints and docstrings."""

from agent_worker.tools.base import RunContext, Tool, ToolResult
from agent_worker.tools.registry import ToolRegistry

__all__ = ["RunContext", "Tool", "ToolRegistry", "ToolResult"]
