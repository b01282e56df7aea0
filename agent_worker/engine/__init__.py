"""Execution engines: where an admitted run executes (docs/durability.md).

``local`` is the worker's own :class:`~agent_worker.runtime.supervisor.RunSupervisor` (in process,
crash journal). ``temporal`` (:mod:`agent_worker.engine.temporal`, needs the ``temporal`` extra and
is imported only when configured) runs each invocation as a Temporal workflow. Both sit behind the
same admission (validation, dedup, invocation auth, channel watch), cancel policy and framing; the
worker (:mod:`agent_worker.worker`) is the :class:`EngineHost` they execute in.
"""

from __future__ import annotations

from agent_worker.engine.host import EngineHost

__all__ = ["EngineHost"]
