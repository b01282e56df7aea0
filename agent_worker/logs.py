"""structlog, configured once for the whole process.

``configure_logging("console")`` is for a developer terminal, ``configure_logging("json")`` for
production (one JSON object per line). Context such as ``run_id``/``session`` is bound with
:func:`structlog.contextvars.bound_contextvars` around each run, so every line a run's task logs —
including the provider's and the transport's — carries it without passing a logger around.

Event names are short ``snake_case`` verbs (``run_started``, ``cancel_refused``); values are fields.
Tests assert on :func:`structlog.testing.capture_logs`, which works whether or not this was called.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Literal, TextIO

import structlog

try:  # the `otel` extra: lines logged inside a span carry its ids (docs/observability.md)
    from opentelemetry import trace as _otel_trace
except ImportError:
    _otel_trace = None  # type: ignore[assignment]

__all__ = ["LogFormat", "add_trace_ids", "configure_logging", "get_logger"]

LogFormat = Literal["console", "json"]

_state: dict[str, tuple[LogFormat, str]] = {}


def configure_logging(
    fmt: LogFormat = "console", level: str = "info", *, stream: TextIO | None = None
) -> None:
    """Configure structlog (and route stdlib logging through the same level). Idempotent: a second
    call with the same arguments does nothing; different arguments reconfigure."""
    if _state.get("configured") == (fmt, level) and stream is None:
        return
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        msg = f"unknown log level {level!r}; use debug, info, warning or error"
        raise ValueError(msg)
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    if _otel_trace is not None:
        processors.insert(1, add_trace_ids)
    renderer: structlog.typing.Processor
    if fmt == "json":
        processors.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer()
    else:
        # Plain tracebacks: structlog's default (rich, when installed) prints every frame's locals,
        # which for a deep recursion holding client data took minutes and hundreds of MB.
        renderer = structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
    # ably-python and aiohttp log through the stdlib; keep them quiet unless debugging.
    if stream is None:
        logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr)
        _state["configured"] = (fmt, level)
    logging.getLogger("ably").setLevel(max(numeric, logging.WARNING))


def add_trace_ids(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: ``trace_id``/``span_id`` of the current OpenTelemetry span, if any."""
    assert _otel_trace is not None
    ctx = _otel_trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event_dict["trace_id"] = _otel_trace.format_trace_id(ctx.trace_id)
        event_dict["span_id"] = _otel_trace.format_span_id(ctx.span_id)
    return event_dict


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger
