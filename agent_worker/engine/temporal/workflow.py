"""The workflow: one per invocation (the official ``withRun``, with this worker's turn as its body).

``openRun`` (outside the try: if opening fails there is no run to clean up) → ``runTurn`` (the
handler's passes, streaming, heartbeating; it publishes the run's own terminal, the cheap style the
official README recommends) → done. A failed turn, or a cancelled or timed-out workflow, closes the
run in a shielded (non-cancellable) scope: ``cleanupRun`` (``ai-run-end`` error) or, for a cancel,
``endRun`` (cancelled) — one attempt, a short timeout, status-gated so it does nothing when the turn
already ended or suspended the run, and its own failure swallowed so the turn's error reaches
Temporal unmasked. A handler failure completes the workflow (the run has ended with the error, and a
retried POST of the same input answers with this run, as in local mode); a refusal fails it, so a
retry of that input may start over.

Deterministic: nothing here does I/O; imports pass through the sandbox.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from agent_worker.engine.temporal.types import (
        CLEANUP_RUN,
        END_RUN,
        OPEN_RUN,
        REAP_RUN,
        REFUSED,
        RUN_TURN,
        TURN_FAILED,
        CleanupRunInput,
        EndRunInput,
        OpenRunInput,
        RunIds,
        TurnInput,
        TurnStepInput,
    )

__all__ = ["REAP_WORKFLOW_NAME", "WORKFLOW_NAME", "ReapWorkflow", "TurnWorkflow"]

WORKFLOW_NAME = "agentWorkerTurn"
REAP_WORKFLOW_NAME = "agentWorkerReap"

_FRAMING_TIMEOUT = timedelta(minutes=2)
_FRAMING_RETRY = RetryPolicy(maximum_attempts=3, non_retryable_error_types=[REFUSED, TURN_FAILED])
# Cleanup is best-effort and must not hold up a terminate: one attempt, tight timeout.
_CLEANUP_TIMEOUT = timedelta(seconds=30)
_CLEANUP_RETRY = RetryPolicy(maximum_attempts=1)


def _failure(exc: BaseException) -> tuple[str, int | None, bool]:
    """The turn's error message and code, and whether it is the handler's (a TurnFailed)."""
    cause = exc.cause if isinstance(exc, ActivityError) else exc
    if isinstance(cause, ApplicationError):
        details = cause.details
        code = details[0] if details and isinstance(details[0], int) else None
        return cause.message, code, cause.type == TURN_FAILED
    return f"unable to complete run; the workflow failed: {exc}", 50000, False


@workflow.defn(name=WORKFLOW_NAME)
class TurnWorkflow:
    @workflow.run
    async def run(self, invocation: TurnInput) -> str:
        # openRun as a local activity: run by this worker inside the workflow task, so the turn is
        # scheduled without a server round trip in between (POST → first token); the wire is the
        # same, and a worker lost meanwhile fails the workflow task, which re-runs it elsewhere.
        try:
            ids = await workflow.execute_local_activity(
                OPEN_RUN,
                OpenRunInput(invocation, invocation.invocation_id),
                result_type=RunIds,
                start_to_close_timeout=_FRAMING_TIMEOUT,
                retry_policy=_FRAMING_RETRY,
            )
        except (ActivityError, ApplicationError) as exc:  # a local activity's error arrives unwrapped
            if _failure(exc)[2]:
                return "error"  # the input was refused and the run ended with the error already
            raise
        try:
            outcome: str = await workflow.execute_activity(
                RUN_TURN,
                TurnStepInput(invocation, ids),
                result_type=str,
                start_to_close_timeout=timedelta(seconds=invocation.turn_timeout_s),
                heartbeat_timeout=timedelta(seconds=invocation.heartbeat_timeout_s),
                retry_policy=RetryPolicy(
                    maximum_attempts=invocation.turn_attempts,
                    non_retryable_error_types=[TURN_FAILED, REFUSED],
                ),
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            )
        except BaseException as exc:
            if is_cancelled_exception(exc):
                await self._close(END_RUN, EndRunInput(ids, invocation, "cancelled"))
                raise
            message, code, handler_failed = _failure(exc)
            await self._close(CLEANUP_RUN, CleanupRunInput(ids, invocation, message, code))
            if handler_failed:
                return "error"
            raise
        if outcome == "cancelled" and workflow.cancellation_reason() is not None:
            raise asyncio.CancelledError  # the turn honoured the cancel: the workflow ends Cancelled
        return outcome

    @staticmethod
    async def _close(name: str, arg: EndRunInput | CleanupRunInput) -> None:
        # start_activity (a handle, not a coroutine): nothing is left un-awaited if the workflow is
        # evicted from this worker's cache before the shielded step ran.
        handle = workflow.start_activity(
            name, arg, start_to_close_timeout=_CLEANUP_TIMEOUT, retry_policy=_CLEANUP_RETRY
        )
        try:
            await asyncio.shield(handle)
        except Exception:
            workflow.logger.warning("run cleanup failed (best-effort)", exc_info=True)


@workflow.defn(name=REAP_WORKFLOW_NAME)
class ReapWorkflow:
    """Ends the run of a terminated turn workflow (terminate runs no workflow code, so its own
    cleanup never fires). One per terminated workflow: its id is derived, so the workers' sweeps,
    which all find the termination, start it once."""

    @workflow.run
    async def run(self, invocation: TurnInput) -> None:
        await workflow.execute_activity(
            REAP_RUN, invocation, start_to_close_timeout=_FRAMING_TIMEOUT, retry_policy=_FRAMING_RETRY
        )
