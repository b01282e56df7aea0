"""The worker service: invocations (HTTP and channel-watch), drain, presence, metrics, the CLI.

Exports load lazily so that ``agent-worker --help`` (which imports ``agent_worker.worker.cli``) does
not import aiohttp, ably-python or the runtime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent_worker.worker.admission import Invocation, InvocationRefused, WorkerBusy
    from agent_worker.worker.http import build_app, serve
    from agent_worker.worker.metrics import WorkerMetrics
    from agent_worker.worker.service import Worker

__all__ = ["Invocation", "InvocationRefused", "Worker", "WorkerBusy", "WorkerMetrics", "build_app", "serve"]

_WHERE = {
    "Invocation": "admission",
    "InvocationRefused": "admission",
    "Worker": "service",
    "WorkerBusy": "admission",
    "WorkerMetrics": "metrics",
    "build_app": "http",
    "serve": "http",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        msg = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(msg)
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
