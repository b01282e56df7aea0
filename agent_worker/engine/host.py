"""What an engine needs from the worker that hosts it (the worker implements it)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from agent_worker.config import WorkerConfig
from agent_worker.engine.pending import CallerShares
from agent_worker.runtime.run import Run
from agent_worker.runtime.session import AgentSession
from agent_worker.runtime.supervisor import RunSupervisor

__all__ = ["EngineHost"]


class EngineHost(Protocol):
    config: WorkerConfig
    supervisor: RunSupervisor
    """Its handler (``passes``), locate limits, observer (metrics, presence, counters) and hooks."""
    on_run_created: Callable[[Run], None] | None
    """Called as each run is created here, before it can receive a cancel (per-run hooks)."""

    @property
    def admission(self) -> CallerShares:
        """Its capacity bookkeeping (the caller's share covers an engine's wait for the input)."""

    async def session(self, name: str) -> AgentSession:
        """The worker's pooled, attached session for a channel (its fold, cancel routing)."""

    def track_run(self, run: Run, task: asyncio.Task[Any]) -> None:
        """A run executing here: counted as active, drained (then cancelled ``shutdown``) on close."""
