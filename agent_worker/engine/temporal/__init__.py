"""The Temporal engine: one workflow per invocation, the run's framing and turn as activities.

Mirrors the official ``@ably/ai-transport/temporal`` integration (0.8.0, ``src/temporal``): framing
activities ``openRun`` / ``endRun`` / ``suspendRun`` / ``cleanupRun`` (status-gated), the run id
pinned to the invocation id, step ids ``${invocationId}-${activityId}``, cleanup in a
non-cancellable scope with one attempt. Importing this package needs ``temporalio`` (the
``temporal`` extra); the worker imports it only when ``[engine] kind = "temporal"``.
"""

from __future__ import annotations

from agent_worker.engine.temporal.engine import TemporalEngine, invocation_id_for
from agent_worker.engine.temporal.types import TurnInput
from agent_worker.engine.temporal.workflow import WORKFLOW_NAME, TurnWorkflow

__all__ = ["WORKFLOW_NAME", "TemporalEngine", "TurnInput", "TurnWorkflow", "invocation_id_for"]
