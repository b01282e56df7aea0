"""Agent sessions and runs over the transport: fold, locate, stream, cancel, the agent loop."""

from __future__ import annotations

from agent_worker.runtime.loop import AgentSpec, LoopOutcome, LoopStats, run_agent
from agent_worker.runtime.run import CancelHook, CancelRequest, OutputMessage, Run, RunPhase
from agent_worker.runtime.session import AgentSession, CancelPolicy, RunAlreadyActive
from agent_worker.runtime.streaming import StreamWriter, publish_reliably
from agent_worker.runtime.trigger import Trigger

__all__ = [
    "AgentSession",
    "AgentSpec",
    "CancelHook",
    "CancelPolicy",
    "CancelRequest",
    "LoopOutcome",
    "LoopStats",
    "OutputMessage",
    "Run",
    "RunAlreadyActive",
    "RunPhase",
    "StreamWriter",
    "Trigger",
    "publish_reliably",
    "run_agent",
]
