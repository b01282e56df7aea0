"""Agent sessions and runs over the transport: fold, locate, stream, cancel, supervise.

The low-level "bring your own loop" API is :class:`AgentRun` / :class:`MessageStream` (see
:mod:`agent_worker.runtime.handler`).
"""

from __future__ import annotations

from agent_worker.runtime.handler import (
    AgentRun,
    HandlerOutcome,
    MessageStream,
    RunHandler,
    RunStats,
    ToolResultEvent,
)
from agent_worker.runtime.run import CancelHook, CancelRequest, OutputMessage, Run, RunHost, RunPhase
from agent_worker.runtime.session import AgentSession, CancelPolicy, RunAlreadyActive
from agent_worker.runtime.streaming import StreamWriter, publish_reliably
from agent_worker.runtime.supervisor import LocateLimits, RunObserver, RunSupervisor
from agent_worker.runtime.trigger import Trigger

__all__ = [
    "AgentRun",
    "AgentSession",
    "CancelHook",
    "CancelPolicy",
    "CancelRequest",
    "HandlerOutcome",
    "LocateLimits",
    "MessageStream",
    "OutputMessage",
    "Run",
    "RunAlreadyActive",
    "RunHandler",
    "RunHost",
    "RunObserver",
    "RunPhase",
    "RunStats",
    "RunSupervisor",
    "StreamWriter",
    "ToolResultEvent",
    "Trigger",
    "publish_reliably",
]
