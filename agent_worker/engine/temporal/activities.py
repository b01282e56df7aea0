"""The activities: the official framing four (``openRun``, ``endRun``, ``suspendRun``,
``cleanupRun``) and this worker's turn (``runTurn``: the handler's passes, streaming).

They run on the worker's event loop against its pooled, attached sessions and its transport (one
Ably connection set per worker process), not a client per activity as the official SDK does. The
SDK needs its client per activity because a session takes its channel from the client's per-name
cache and detaching a session detaches that channel under any other session sharing it. Here the
pool owns one :class:`AgentSession` per channel for the whole process, activities never detach it,
and runs are routed by run id within it (as concurrent local runs are), so sharing is safe — and
it saves a connection, an attach and a history read per activity, and keeps the session's fold (so
a cancel or a steer reaches the run in the activity, and the owner-or-admin policy applies as in
local mode).

An activity adopts its run: it locates the trigger again (already folded when this worker opened
the run; from history otherwise) and continues with the run id that ``openRun`` pinned. A retried
``runTurn`` derives the same step ids (``${invocationId}-${activityId}``), so its output supersedes
the lost attempt's on every client. ``runTurn`` heartbeats while the handler runs; Temporal's
cancellation reaches it on a heartbeat and is turned into the run's own cancel path (partial text
kept, streams closed ``cancelled``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from agent_worker.engine.host import EngineHost
from agent_worker.engine.pending import PendingInputs, WaitRefused
from agent_worker.engine.temporal.types import (
    CLEANUP_RUN,
    END_RUN,
    OPEN_RUN,
    REAP_RUN,
    REFUSED,
    RUN_TURN,
    SUSPEND_RUN,
    TURN_FAILED,
    CleanupRunInput,
    EndRunInput,
    OpenRunInput,
    RunIds,
    SuspendRunInput,
    TurnInput,
    TurnStepInput,
)
from agent_worker.errors import AgentWorkerError, AuthError, InputEventNotFound, ProtocolError
from agent_worker.logs import get_logger
from agent_worker.protocol.wire import OutboundMessage
from agent_worker.runtime.handler import RunStats
from agent_worker.runtime.journal import closing_append
from agent_worker.runtime.run import CancelSource, Run
from agent_worker.runtime.session import AgentSession, RunAlreadyActive
from agent_worker.runtime.supervisor import call_hook, run_failure, terminate

__all__ = ["TERMINATED_MESSAGE", "TurnActivities"]

log = get_logger("agent_worker.engine.temporal")

TERMINATED_MESSAGE = "unable to complete run; its workflow was terminated"
_ENDED_MEMORY = 4096


def _refused(exc: AgentWorkerError) -> ApplicationError:
    return ApplicationError(exc.message, exc.code, type=REFUSED, non_retryable=True)


def _source(details: activity.ActivityCancellationDetails | None) -> CancelSource:
    """Why Temporal cancelled the activity → how the run stops: a cancel request ends it
    ``cancelled`` (``client``), a worker shutdown ``cancelled`` (``shutdown``, as local drain), a
    vanished workflow (terminated) ``error`` (``session``); anything else (a heartbeat timeout: the
    step was given to another worker) stops quietly (``timeout``), the retry owns the run."""
    if details is None or details.cancel_requested:
        return "client"
    if details.worker_shutdown:
        return "shutdown"
    if details.not_found:
        return "session"
    return "timeout"


class TurnActivities:
    """The activities bound to one worker (register ``all()`` on a Temporal worker)."""

    def __init__(
        self,
        host: EngineHost,
        on_cancel_honoured: Callable[[Run], Awaitable[None]],
        workflow_running: Callable[[str], Awaitable[bool]],
        pending: PendingInputs,
    ) -> None:
        self.host = host
        self.pending = pending
        self.on_cancel_honoured = on_cancel_honoured
        self.workflow_running = workflow_running
        self._ended: OrderedDict[str, None] = OrderedDict()
        """Runs whose terminal this process published (their echo may not have folded yet)."""

    def all(self) -> list[Callable[..., Any]]:
        return [self.open_run, self.run_turn, self.end_run, self.suspend_run, self.cleanup_run, self.reap_run]

    # --- helpers -----------------------------------------------------------------------------------

    def _new_run(self, session: AgentSession, invocation: TurnInput, invocation_id: str) -> Run:
        return session.create_run(
            invocation.event_id,
            invocation_id=invocation_id,
            run_id=invocation_id,  # pinned: a retry re-enters the same run (a continuation adopts its own)
            coalesce_window_s=self.host.config.coalesce_window_ms / 1000.0,
        )

    async def _locate(self, session: AgentSession, run: Run, *, branch: bool = True) -> None:
        limits = self.host.supervisor.limits
        async with _heartbeating():
            await session.locate(
                run,
                max_pages=limits.max_pages,
                max_branch_pages=limits.max_branch_pages,
                wait_s=limits.wait_s,
                max_input_bytes=limits.max_input_bytes,
                branch=branch,
            )

    def _settled(self, session: AgentSession, ids: RunIds) -> bool:
        """Status gate: the run already ended (or is parked suspended): nothing to publish."""
        if ids.invocation_id in self._ended:
            return True
        node = session.tree.run(ids.run_id)
        return node is not None and node.status != "active"

    def _mark_ended(self, run: Run) -> None:
        self._ended[run.invocation_id] = None
        while len(self._ended) > _ENDED_MEMORY:
            self._ended.popitem(last=False)

    @staticmethod
    async def _close_streams(session: AgentSession, run: Run) -> None:
        """Close (``cancelled``) the run's streams a dead attempt left ``streaming``, as the local
        crash journal does, before the run's terminal."""
        for opening in session.open_streams.of_run(run.run_id):
            assert opening.serial is not None
            extras = dict(opening.extras or {})
            await session.channel.append(opening.serial, closing_append(OutboundMessage(None, "", extras)))

    async def _adopt(self, invocation: TurnInput, ids: RunIds) -> tuple[AgentSession, Run | None]:
        """The open run, re-created in this process; ``None`` when it is settled already."""
        session = await self.host.session(invocation.session)
        stale = session.runs.get(ids.run_id)
        if stale is not None:
            # An earlier attempt of this run still executing here: what the workflow does now wins.
            stale.cancel("timeout")
            session.deregister(stale)
        run = self._new_run(session, invocation, ids.invocation_id)
        try:
            await self._locate(session, run)
        except (InputEventNotFound, RunAlreadyActive) as exc:
            session.deregister(run)
            raise _refused(exc) from None
        if self._settled(session, ids):
            session.deregister(run)
            return session, None
        run.adopt_started()
        return session, run

    # --- framing -----------------------------------------------------------------------------------

    @activity.defn(name=OPEN_RUN)
    async def open_run(self, arg: OpenRunInput) -> RunIds:
        """Locate the trigger, check the caller, publish ``ai-run-start`` (or ``-resume``)."""
        invocation = arg.invocation
        session = await self.host.session(invocation.session)
        run = self._new_run(session, invocation, arg.invocation_id)
        with structlog.contextvars.bound_contextvars(
            session=session.name, invocation_id=run.invocation_id, engine="temporal"
        ):
            try:
                caller = invocation.caller_client_id
                # The wait for the input holds the caller's share, as a local run's does.
                with self.pending.locating_input(run.invocation_id, caller):
                    # A fresh run's older history is read by the turn's adoption (``_adopt``), after
                    # this run-start, as the local supervisor does (AgentSession.locate).
                    await self._locate(session, run, branch=False)
                trigger_client = run.owner_client_id
                if caller is not None and caller not in ("*", trigger_client):
                    msg = f"the input was published by {trigger_client!r}, not by the caller {caller!r}"
                    raise AuthError(msg, code=40160, status_code=401)
                await run.start()
                if run.cancel_requested:
                    # A cancel that arrived before the run was known (buffered by its input): it is
                    # honoured now, as a local run ends cancelled at once after its run-start.
                    await asyncio.shield(self.on_cancel_honoured(run))
                    await asyncio.shield(terminate(run, "cancelled", None))
                    self._mark_ended(run)
                return RunIds(run.run_id, run.invocation_id)
            except (RunAlreadyActive, InputEventNotFound, AuthError, WaitRefused) as exc:
                log.warning("run_refused", code=exc.code, reason=exc.message)
                raise _refused(exc) from None
            except ProtocolError as exc:
                # A refused input (too large, another codec): the run opens and ends with the error,
                # as locally; the workflow completes, so a retried POST answers with this run.
                log.warning("run_refused", code=exc.code, reason=exc.message)
                await asyncio.shield(terminate(run, "error", exc))
                self._mark_ended(run)
                raise ApplicationError(exc.message, exc.code, type=TURN_FAILED, non_retryable=True) from None
            finally:
                session.deregister(run)

    @activity.defn(name=END_RUN)
    async def end_run(self, arg: EndRunInput) -> None:
        """Publish the run's terminal (status-gated: nothing when it already ended or suspended)."""
        _, run = await self._adopt(arg.invocation, arg.ids)
        if run is None:
            return
        error = None
        if arg.reason == "error":
            error = AgentWorkerError(arg.error_message or "run failed", code=arg.error_code or 50000)
        reason: Literal["complete", "cancelled", "error"] = (
            "cancelled" if arg.reason == "cancelled" else "error" if arg.reason == "error" else "complete"
        )
        await run.end(reason, error)
        self._mark_ended(run)

    @activity.defn(name=SUSPEND_RUN)
    async def suspend_run(self, arg: SuspendRunInput) -> None:
        """Publish ``ai-run-suspend`` (status-gated)."""
        _, run = await self._adopt(arg.invocation, arg.ids)
        if run is None:
            return
        await run.suspend()
        self._mark_ended(run)

    @activity.defn(name=CLEANUP_RUN)
    async def cleanup_run(self, arg: CleanupRunInput) -> None:
        """Best-effort failure cleanup: end a still-active run ``error`` so waiting clients unstick."""
        session, run = await self._adopt(arg.invocation, arg.ids)
        if run is None:
            return
        message = arg.error_message or "unable to complete run; the workflow failed"
        await self._close_streams(session, run)
        await run.end("error", AgentWorkerError(message, code=arg.error_code or 50000))
        self._mark_ended(run)
        log.info("run_cleaned_up", run_id=run.run_id, error=message)

    @activity.defn(name=REAP_RUN)
    async def reap_run(self, invocation: TurnInput) -> None:
        """End the run a terminated workflow left open: only when its node is still active and
        belongs to that invocation (a later continuation may have resumed the run since)."""
        if invocation.invocation_id in self._ended:
            return  # its turn here saw the termination and ended the run itself
        session = await self.host.session(invocation.session)
        run = self._new_run(session, invocation, invocation.invocation_id)
        try:
            try:
                await self._locate(session, run)
            except (InputEventNotFound, ProtocolError):
                return  # the run never opened
            node = session.tree.run(run.run_id)
            owner = (node.last_resume_invocation_id or node.invocation_id) if node is not None else None
            if node is None or node.status != "active" or owner != invocation.invocation_id:
                return
            run.adopt_started()
            await self._close_streams(session, run)
            await run.end("error", AgentWorkerError(TERMINATED_MESSAGE, code=50000))
            self._mark_ended(run)
            log.warning("run_reaped", run_id=run.run_id, invocation_id=invocation.invocation_id)
        finally:
            session.deregister(run)

    # --- the turn ----------------------------------------------------------------------------------

    @activity.defn(name=RUN_TURN)
    async def run_turn(self, arg: TurnStepInput) -> str:
        """The handler's passes on the open run; publishes ``ai-run-end`` / ``ai-run-suspend``.

        Returns the outcome (``complete``, ``suspended``, ``cancelled``, ``error`` for a terminated
        workflow, or the status found when a retry finds the run already settled). A handler failure
        closes what is open and raises ``TurnFailed``; the workflow's ``cleanupRun`` ends the run."""
        accepted_at = time.monotonic()
        session, run = await self._adopt(arg.invocation, arg.ids)
        if run is None:
            node = session.tree.run(arg.ids.run_id)
            return node.status if node is not None else "complete"
        run.step_id_base = f"{arg.ids.invocation_id}-{activity.info().activity_id}"
        if self.host.on_run_created is not None:
            try:
                self.host.on_run_created(run)
            except Exception:
                log.exception("worker_hook_failed", hook="on_run_created")
        with structlog.contextvars.bound_contextvars(
            run_id=run.run_id, session=session.name, invocation_id=run.invocation_id, engine="temporal"
        ):
            body = asyncio.create_task(self._body(session, run, accepted_at), name=f"run:{run.run_id}")
            run.task = body
            self.host.track_run(run, body)
            try:
                async with _heartbeating():
                    return await asyncio.shield(body)
            except asyncio.CancelledError:
                if not body.done():
                    source = _source(activity.cancellation_details())
                    if source == "session" and await self.workflow_running(run.invocation_id):
                        source = "timeout"  # this attempt timed out; a retry owns the run
                    log.info("run_turn_cancelled_by_temporal", source=source)
                    run.cancel(source)
                    with contextlib.suppress(BaseException):
                        await body
                raise

    async def _body(self, session: AgentSession, run: Run, accepted_at: float) -> str:
        supervisor = self.host.supervisor
        observer = supervisor.observer
        stats = RunStats(
            on_usage=observer.run_tokens, on_status=lambda status: observer.run_status(run, status)
        )
        error: AgentWorkerError | None = None
        quiet = False
        observer.run_status(run, "thinking")
        await call_hook(supervisor.on_run_start, run)
        try:
            outcome = await supervisor.passes_to_terminal(run, stats, accepted_at)
            self._mark_ended(run)
            return outcome
        except asyncio.CancelledError:
            source = run.cancel_source
            if source is None or source == "timeout":
                # Temporal gave this step to another worker: its attempt owns the run now.
                quiet = True
                await asyncio.shield(run.abandon(publish=False))
                raise
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            if source == "client":
                # Before the terminal: the workflow must hold the cancel request when this step ends.
                await asyncio.shield(self.on_cancel_honoured(run))
            log.info("run_cancelled", source=source, by=run.cancelled_by)
            if source == "session":
                error = AgentWorkerError(TERMINATED_MESSAGE, code=50000)
                await asyncio.shield(terminate(run, "error", error))
            else:
                await asyncio.shield(terminate(run, "cancelled", None))
            self._mark_ended(run)
            return "error" if source == "session" else "cancelled"
        except ProtocolError as exc:
            error = exc
            log.warning("run_failed", code=exc.code, error=exc.message)
            await asyncio.shield(run.abandon())
            raise ApplicationError(exc.message, exc.code, type=TURN_FAILED, non_retryable=True) from None
        except Exception as exc:
            error = run_failure(exc)
            await asyncio.shield(run.abandon())
            raise ApplicationError(error.message, error.code, type=TURN_FAILED, non_retryable=True) from None
        finally:
            session.deregister(run)
            observer.run_status(run, "idle")
            if not quiet:
                observer.run_finished(run, error, accepted_at)
                await call_hook(supervisor.on_run_end, run)


@contextlib.asynccontextmanager
async def _heartbeating() -> AsyncIterator[None]:
    """Heartbeat while the body runs (the official ``withHeartbeat``, always on here: a streaming
    turn is exactly what must not look hung). Temporal delivers a cancellation on a heartbeat."""
    info = activity.info()
    if info.is_local:  # openRun: the workflow task's own heartbeat covers a local activity
        yield
        return
    timeout = info.heartbeat_timeout
    interval = min(2.0, timeout.total_seconds() / 4) if timeout else 2.0

    async def beat() -> None:
        while True:
            activity.heartbeat()
            await asyncio.sleep(interval)

    task = asyncio.create_task(beat(), name="temporal-heartbeat")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
