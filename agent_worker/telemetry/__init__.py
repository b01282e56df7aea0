"""OpenTelemetry traces and metrics for runs, model calls and tools (the ``otel`` extra).

The runtime and the worker call the thin functions below; they do nothing — and cost one cheap check —
unless ``opentelemetry-api`` is installed *and* a tracer or meter provider is configured: globally
(``trace.set_tracer_provider``, ``opentelemetry-instrument``, or :func:`configure_from_env`, which
``agent-worker run`` calls to honour the standard ``OTEL_*`` variables), or handed to
:func:`instrument` by an application that embeds the worker. Names follow the GenAI semantic
conventions (:mod:`agent_worker.telemetry.attrs`); message content is recorded only when
``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true`` or ``instrument(capture_content=True)``.
See docs/observability.md.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Coroutine, Mapping
from typing import Any, TypeVar

from agent_worker.telemetry.attrs import CAPTURE_CONTENT_ENV
from agent_worker.telemetry.setup import Configured, configure_from_env

# Stand-ins: telemetry sits below the runtime, providers and tools it observes.
Run = Any
ModelProvider = Any
ModelRequest = Any
Tool = Any

__all__ = [
    "Configured",
    "available",
    "cancel_decision",
    "chat_stream",
    "configure_from_env",
    "continue_trace",
    "enabled",
    "instrument",
    "set_capture_content",
    "tool_span",
    "tool_suspended",
    "trace_run",
]

T = TypeVar("T")

try:
    from agent_worker.telemetry import _genai
except ImportError:  # the otel extra is not installed: every hook below is a pass-through
    _genai = None  # type: ignore[assignment]
else:
    _genai.set_capture_content(os.environ.get(CAPTURE_CONTENT_ENV, "").strip().lower() == "true")


class _NoopTool:
    __slots__ = ()

    def __enter__(self) -> _NoopTool:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def result(self, output: Any, is_error: bool) -> None:
        return None


_NOOP_TOOL = _NoopTool()


def available() -> bool:
    """Whether ``opentelemetry-api`` is installed."""
    return _genai is not None


def enabled() -> bool:
    """Whether spans or metrics are being recorded now (a provider is configured)."""
    return _genai is not None and _genai.enabled()


def instrument(
    *,
    tracer_provider: Any = None,
    meter_provider: Any = None,
    capture_content: bool | None = None,
    agent_name: str | None = None,
) -> None:
    """Record with these providers instead of the global ones (``None``: the global one) — for an
    application embedding the worker with its own SDK set-up, and for tests. ``capture_content``
    adds prompts, completions and tool arguments/results to the spans; ``agent_name`` is
    ``gen_ai.agent.name`` (default ``agent-worker``)."""
    if _genai is None:
        msg = "OpenTelemetry is not installed: pip install 'agent-worker[otel]'"
        raise RuntimeError(msg)
    _genai.instrument(
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        capture_content=capture_content,
        agent_name=agent_name,
    )


def set_capture_content(enabled: bool) -> None:
    """Record message content (prompts, completions, tool arguments/results) on spans, or stop."""
    if _genai is not None:
        _genai.set_capture_content(enabled)


def trace_run(run: Run, coro: Coroutine[Any, Any, None], agent: object) -> Coroutine[Any, Any, None]:
    """Wrap a run's task body in its ``invoke_agent`` span (returns ``coro`` itself when off).
    ``agent``: anything with ``provider``/``model`` attributes labels the span (optional)."""
    if _genai is None:
        return coro
    return _genai.trace_run(run, coro, agent)


def chat_stream(provider: ModelProvider, request: ModelRequest) -> Any:
    """``provider.stream(request)``, in a ``chat`` span when the current run is traced."""
    if _genai is None:
        return provider.stream(request)
    return _genai.chat_stream(provider, request)


def tool_span(call_id: str, name: str, tool: Tool | None, arguments: Any, *, approved: bool = False) -> Any:
    """``with tool_span(...) as span: ...; span.result(output, is_error)`` around a tool execution."""
    if _genai is None:
        return _NOOP_TOOL
    traced = _genai.tool_span(call_id, name, tool, arguments, approved=approved)
    return _NOOP_TOOL if traced is None else traced


def tool_suspended(call_id: str, name: str, tool: Tool | None, arguments: Any, *, reason: str) -> None:
    """The run suspends on this tool call (``reason``: ``client`` or ``approval``)."""
    if _genai is not None:
        _genai.tool_suspended(call_id, name, tool, arguments, reason=reason)


def cancel_decision(run: Run, by: str | None, *, allowed: bool) -> None:
    """Record an ``ai-cancel`` decision (who asked, whether it was honoured) on the run's span."""
    if _genai is not None:
        _genai.cancel_decision(run, by, allowed=allowed)


async def continue_trace(carrier: Mapping[str, str], awaitable: Awaitable[T]) -> T:
    """Await with the W3C trace context of ``carrier`` (request headers) as the current context."""
    if _genai is None:
        return await awaitable
    return await _genai.continue_trace(carrier, awaitable)
