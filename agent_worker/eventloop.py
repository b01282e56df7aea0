"""Which asyncio event loop the long-running commands use: uvloop when installed (the default
dependency on Linux/macOS), else the standard one.

uvloop's scheduler, timers and sockets are libuv in C; a worker spends much of its time in exactly
those (a task and a future per append, a timer per ACK inside ably-python), so it cuts the worker's
CPU per token (measured in docs/benchmarks.md). ``AGENT_WORKER_EVENT_LOOP=asyncio`` forces the
standard loop (e.g. to compare, or to debug with asyncio's debug mode).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["loop_name", "run"]

T = TypeVar("T")


def _uvloop() -> Any:
    if os.environ.get("AGENT_WORKER_EVENT_LOOP", "").strip().lower() == "asyncio":
        return None
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:  # pragma: no cover - a platform without uvloop wheels
        return None
    return uvloop


def loop_name() -> str:
    return "uvloop" if _uvloop() is not None else "asyncio"


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on uvloop when available."""
    uv = _uvloop()
    if uv is None:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uv.new_event_loop) as runner:
        return runner.run(main)
