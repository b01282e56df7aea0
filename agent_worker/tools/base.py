"""Tools: plain Python functions (sync or async) exposed to the model as JSON-schema tools.

A tool's first parameter may be a :class:`RunContext` (the session, run and client it runs for, and
a bound logger); the rest become the JSON schema, described by the docstring's ``Args:`` section.
Any exception a tool raises becomes an error result the model sees (``ToolResult(is_error=True)``);
only cancellation propagates. ``client_side`` tools are executed by the client, and
``requires_approval`` tools wait for the user's approval — the runtime suspends the run for both.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic

import structlog
from pydantic import BaseModel, ValidationError
from typing_extensions import TypeVar

from agent_worker.errors import ConfigError, ToolError
from agent_worker.providers.base import ToolDefinition
from agent_worker.tools._schema import FunctionSignature

__all__ = ["DepsT", "RunContext", "Tool", "ToolResult"]

DepsT = TypeVar("DepsT", default=None)
"""The type of an agent's dependencies (``None`` when it has none)."""

_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def _default_logger() -> Any:
    return structlog.get_logger("agent_worker.tools")


@dataclass(frozen=True, slots=True)
class RunContext(Generic[DepsT]):
    """What a tool (or a system-prompt function) knows about the run that called it."""

    session_name: str
    run_id: str
    client_id: str | None = None
    logger: Any = field(default_factory=_default_logger)
    """A structlog logger bound to the run (``logger.info("event", key=value)``)."""
    deps: DepsT = None  # type: ignore[assignment]  # None is the default DepsT
    """The agent's dependencies for this run (its ``deps`` factory's result: a DB pool, a client)."""


@dataclass(frozen=True, slots=True)
class ToolResult:
    """A tool's output for the model: any JSON-serialisable value, or an error message."""

    output: Any
    is_error: bool = False


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


class Tool:
    """One callable tool; build it with :meth:`from_function`."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str,
        description: str,
        signature: FunctionSignature,
        client_side: bool = False,
        requires_approval: bool = False,
    ) -> None:
        self.fn = fn
        self.name = name
        self.description = description
        self._signature = signature
        self.client_side = client_side
        self.requires_approval = requires_approval

    @classmethod
    def from_function(
        cls,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        client_side: bool = False,
        requires_approval: bool = False,
    ) -> Tool:
        tool_name = name or getattr(fn, "__name__", "")
        if not tool_name or tool_name == "<lambda>":
            msg = "a tool needs a name: pass name=... for lambdas and callables without __name__"
            raise ConfigError(msg)
        if not set(tool_name) <= _NAME_OK or len(tool_name) > 64:
            msg = f"tool name {tool_name!r} must be 1-64 characters of [a-zA-Z0-9_-] (vendor APIs require it)"
            raise ConfigError(msg)
        signature = FunctionSignature(fn, name=tool_name, context_type=RunContext)
        return cls(
            fn,
            name=tool_name,
            description=description if description is not None else signature.description,
            signature=signature,
            client_side=client_side,
            requires_approval=requires_approval,
        )

    def __repr__(self) -> str:
        flags = "".join(
            [
                ", client_side=True" if self.client_side else "",
                ", requires_approval=True" if self.requires_approval else "",
            ]
        )
        return f"Tool({self.name!r}{flags})"

    @property
    def definition(self) -> ToolDefinition:
        return ToolDefinition(self.name, self.description, self._signature.parameters)

    @property
    def takes_context(self) -> bool:
        """Whether the function's first parameter is a :class:`RunContext`."""
        return self._signature.takes_context

    @property
    def parameters(self) -> dict[str, Any]:
        return self._signature.parameters

    async def call(self, ctx: RunContext[Any], arguments: Mapping[str, Any] | str) -> ToolResult:
        """Run the tool; every failure except cancellation comes back as an error result."""
        log = ctx.logger.bind(tool=self.name) if hasattr(ctx.logger, "bind") else ctx.logger
        try:
            args = json.loads(arguments or "{}") if isinstance(arguments, str) else dict(arguments)
        except json.JSONDecodeError as exc:
            return ToolResult(f"Invalid arguments: not valid JSON ({exc.msg}). Send a JSON object.", True)
        try:
            kwargs = self._signature.validate(args)
        except ValidationError as exc:
            return ToolResult(f"Invalid arguments for {self.name}: {_short_errors(exc)}", True)
        call_args = (ctx,) if self._signature.takes_context else ()
        try:
            if inspect.iscoroutinefunction(self.fn):
                output = await self.fn(*call_args, **kwargs)
            else:
                # Sync tools may block (files, requests); keep the event loop free.
                output = await asyncio.to_thread(self.fn, *call_args, **kwargs)
                if inspect.isawaitable(output):
                    output = await output
        except ToolError as exc:
            log.info("tool_failed", error=exc.message)
            return ToolResult(exc.message, True)
        except Exception as exc:
            log.warning("tool_failed", error=repr(exc))
            return ToolResult(f"{type(exc).__name__}: {exc}", True)
        return ToolResult(_jsonable(output))


def _short_errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(x) for x in err["loc"]) or "(arguments)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)
