"""The workflow's and activities' inputs and outputs: plain data (they cross Temporal's payload
converter, and the workflow half runs in its sandbox), as the official ``activity-types.ts``."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CLEANUP_RUN",
    "END_RUN",
    "OPEN_RUN",
    "REAP_RUN",
    "REFUSED",
    "RUN_TURN",
    "SUSPEND_RUN",
    "TURN_FAILED",
    "CleanupRunInput",
    "EndRunInput",
    "OpenRunInput",
    "RunIds",
    "SuspendRunInput",
    "TurnInput",
    "TurnStepInput",
]

# Activity names: the official framing activities' names, plus this worker's turn.
OPEN_RUN = "openRun"
END_RUN = "endRun"
SUSPEND_RUN = "suspendRun"
CLEANUP_RUN = "cleanupRun"
RUN_TURN = "runTurn"
REAP_RUN = "reapRun"

# ApplicationError types that must not be retried.
REFUSED = "RunRefused"
"""The invocation is refused (input not found, not the caller's, a concurrent continuation)."""
TURN_FAILED = "TurnFailed"
"""The handler (provider, tool, codec) failed: as in local mode, the run ends with the error."""


@dataclass(frozen=True)
class TurnInput:
    """One invocation (the workflow's input): what a POST or a watched ``ai-input`` carried."""

    session: str
    event_id: str
    invocation_id: str
    caller_client_id: str | None = None
    heartbeat_timeout_s: float = 10.0
    turn_timeout_s: float = 3600.0
    turn_attempts: int = 5


@dataclass(frozen=True)
class RunIds:
    run_id: str
    invocation_id: str


@dataclass(frozen=True)
class OpenRunInput:
    invocation: TurnInput
    invocation_id: str
    """Also the run id of a fresh run: a retry re-enters the same run (a continuation keeps its own)."""


@dataclass(frozen=True)
class TurnStepInput:
    invocation: TurnInput
    ids: RunIds


@dataclass(frozen=True)
class EndRunInput:
    ids: RunIds
    invocation: TurnInput
    reason: str
    error_message: str | None = None
    error_code: int | None = None


@dataclass(frozen=True)
class SuspendRunInput:
    ids: RunIds
    invocation: TurnInput


@dataclass(frozen=True)
class CleanupRunInput:
    ids: RunIds
    invocation: TurnInput
    error_message: str | None = None
    error_code: int | None = None
