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
from typing import Literal, TextIO

import structlog

__all__ = ["LogFormat", "configure_logging", "get_logger"]

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
    from agent_worker.telemetry import log_processor  # noqa: PLC0415 - telemetry logs through here

    trace_ids = log_processor()
    if trace_ids is not None:
        processors.insert(1, trace_ids)  # trace_id/span_id of the current span, when there is one
    renderer: structlog.typing.Processor
    if fmt == "json":
        processors.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
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


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger
