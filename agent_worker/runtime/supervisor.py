"""Run supervision: every run ends in a terminal state, whatever its handler does.

One run is one task (:meth:`RunSupervisor.execute`): locate the trigger → ``ai-run-start``/``-resume``
→ the handler, once per pass (the trigger, then each batch of steering) → ``ai-run-end`` or
``ai-run-suspend``. Its outer edge turns every way a run can stop into a terminal publish: an
honoured cancel (``task.cancel()`` recorded by the run) ends ``cancelled``; a refused input or a
missing trigger ends ``error`` with the protocol's code; anything unexpected ends ``error`` (50000)
and is logged once. The cleanup runs under :func:`asyncio.shield`. Admission (which runs start) and
the session pool live in :mod:`agent_worker.worker`; this module knows neither.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import structlog

from agent_worker.errors import AgentWorkerError, AuthError, InputEventNotFound, ProtocolError, TransportError
from agent_worker.gcpause import GcHold
from agent_worker.logs import get_logger
from agent_worker.retry import retry
from agent_worker.runtime.handler import AgentRun, RunHandler, RunStats
from agent_worker.runtime.run import Run, RunPhase
from agent_worker.runtime.session import AgentSession, RunAlreadyActive
from agent_worker.runtime.trigger import Trigger

__all__ = ["Hook", "LocateLimits", "RunObserver", "RunSupervisor", "call_hook", "run_failure", "terminate"]

log = get_logger("agent_worker.runtime.supervisor")

Hook = Callable[..., "Awaitable[None] | None"]


async def call_hook(hook: Hook | None, *args: Any) -> None:
    """Call a user hook (sync or async); its failure is logged, never propagated."""
    if hook is None:
        return
    try:
        result = hook(*args)
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.exception("worker_hook_failed", hook=getattr(hook, "__name__", repr(hook)))


class RunObserver(Protocol):
    """What the host (the worker) learns about a supervised run: presence, metrics, counters."""

    def run_status(self, run: Run, status: str) -> None: ...

    def run_tokens(self, input_tokens: int, output_tokens: int) -> None: ...

    def trigger_waited(self, seconds: float) -> None: ...

    async def run_located(self, run: Run, trigger: Trigger) -> None:
        """The trigger is found: may refuse the run (``AuthError``: nothing is published) or wait
        for capacity."""

    def first_output(self, seconds: float) -> None: ...

    def run_finished(self, run: Run, error: AgentWorkerError | None, accepted_at: float) -> None: ...


@dataclass(frozen=True, slots=True)
class LocateLimits:
    """How hard to look for a run's trigger (see :class:`agent_worker.config.WorkerConfig`)."""

    max_pages: int = 20
    max_branch_pages: int = 10_000
    wait_s: float = 5.0
    max_input_bytes: int = 64 * 1024


class RunSupervisor:
    def __init__(
        self,
        handler: RunHandler,
        observer: RunObserver,
        limits: LocateLimits,
        *,
        on_run_start: Hook | None = None,
        on_run_end: Hook | None = None,
    ) -> None:
        self.handler = handler
        self.observer = observer
        self.limits = limits
        self.on_run_start = on_run_start
        self.on_run_end = on_run_end

    async def passes_to_terminal(
        self, run: Run, stats: RunStats, accepted_at: float
    ) -> Literal["complete", "suspended"]:
        """:meth:`passes`, then the run's suspend or complete end (both engines end a run so)."""
        outcome = await self.passes(run, stats)
        if run.first_output_at is not None:
            self.observer.first_output(run.first_output_at - accepted_at)
        if outcome == "suspended":
            await run.suspend()
        else:
            await run.end("complete")
        return outcome

    async def passes(self, run: Run, stats: RunStats) -> Literal["complete", "suspended"]:
        """Call the handler while the run has input: the trigger, then steering that arrived (the
        body of a run in every engine: here, or in a Temporal activity)."""
        while run.has_input():
            stats.passes += 1
            view = AgentRun(run, stats)
            await self.handler(view)
            if view.suspended:
                return "suspended"
            if not run.produced_output:
                break  # a handler that says nothing must not be called forever
            await asyncio.sleep(0)  # let steering that arrived during the pass fold in
        return "complete"

    async def execute(
        self, run: Run, session: AgentSession, accepted_at: float, *, gc_hold: GcHold | None = None
    ) -> None:
        """The run task's body. Never raises except an external cancellation (after the terminal
        publish). ``gc_hold``: released once the run start is sent and the branch read (or the run
        ends before)."""
        observer = self.observer
        stats = RunStats(
            on_usage=observer.run_tokens, on_status=lambda status: observer.run_status(run, status)
        )
        error: AgentWorkerError | None = None
        limits = self.limits
        with structlog.contextvars.bound_contextvars(
            run_id=run.run_id, session=session.name, invocation_id=run.invocation_id
        ):
            try:
                try:
                    trigger = await session.locate(
                        run,
                        max_pages=limits.max_pages,
                        max_branch_pages=limits.max_branch_pages,
                        wait_s=limits.wait_s,
                        max_input_bytes=limits.max_input_bytes,
                        branch=False,  # read below, after the run-start (a continuation's: now)
                    )
                finally:
                    observer.trigger_waited(time.monotonic() - accepted_at)
                await observer.run_located(run, trigger)
                structlog.contextvars.bind_contextvars(run_id=run.run_id)
                observer.run_status(run, "thinking")
                # Pipelined: the handler starts once the run-start is sent, not acknowledged (its
                # output follows it on the wire; Run.confirm_started settles the ACK). Nothing is on
                # the wire before it, so retrying a send that failed outright is safe.
                await retry(
                    functools.partial(run.start, pipelined=True),
                    attempts=3,
                    retry_if=lambda exc: isinstance(exc, TransportError),
                )
                # The rest of a long conversation (its older history pages) is read while every
                # device already shows the run started: the prompt needs it, the run-start does not
                # (see AgentSession.locate). The run-start's frame is written first (one loop turn),
                # not queued at the server behind a 1,000-message history GET.
                if session.missing_ancestor(trigger.leaf_anchor) is not None:
                    await asyncio.sleep(0)
                    await session.load_branch(trigger.leaf_anchor, max_pages=limits.max_branch_pages)
                if gc_hold is not None:
                    # The collections that were due (the branch's read among them) run once the
                    # run-start is out (its ACK: the publish task may yield before writing its
                    # frame), while the model is asked.
                    sending = run.start_sending
                    if sending is None or sending.done():
                        gc_hold.release_soon()
                    else:
                        sending.add_done_callback(lambda _: gc_hold.release())
                await call_hook(self.on_run_start, run)
                await self.passes_to_terminal(run, stats, accepted_at)
            except asyncio.CancelledError:
                if not run.cancel_requested:
                    await asyncio.shield(terminate(run, "cancelled", None))
                    raise
                current = asyncio.current_task()
                if current is not None:
                    current.uncancel()
                log.info("run_cancelled", source=run.cancel_source, by=run.cancelled_by)
                await asyncio.shield(terminate(run, "cancelled", None))
            except (RunAlreadyActive, InputEventNotFound, AuthError) as exc:
                error = exc
                if run.started:  # refused reading the branch after the run-start: the run ends there
                    await asyncio.shield(terminate(run, "error", exc))
                else:
                    # Nothing of this run is on the channel, and nothing is published: a stranger's
                    # POST naming someone else's session (or no input at all) leaves no trace there.
                    log.warning("run_refused", code=exc.code, reason=exc.message)
                    run.phase = RunPhase.ENDED
                    run.outcome = "error"
                    session.deregister(run)
            except ProtocolError as exc:
                error = exc
                log.warning("run_refused", code=exc.code, reason=exc.message)
                await asyncio.shield(terminate(run, "error", exc))
            except Exception as exc:
                error = run_failure(exc)
                await asyncio.shield(terminate(run, "error", error))
            finally:
                if gc_hold is not None:
                    gc_hold.release()
                observer.run_status(run, "idle")
                observer.run_finished(run, error, accepted_at)
                await call_hook(self.on_run_end, run)


def run_failure(exc: Exception) -> AgentWorkerError:
    """The error a failed handler's run ends with, logged once (call it in the ``except``). As the JS
    agent wraps a failed pipe: "unable to complete run; <cause>"."""
    if isinstance(exc, AgentWorkerError):
        log.error("run_failed", code=exc.code, error=exc.message)
        return AgentWorkerError(f"unable to complete run; {exc.message}", code=exc.code)
    log.exception("run_crashed")
    return AgentWorkerError(f"unable to complete run; {type(exc).__name__}: {exc}", code=50000)


async def terminate(run: Run, reason: Literal["cancelled", "error"], error: AgentWorkerError | None) -> None:
    """Publish whatever is missing for a terminal state: run-start (when the run exists on the
    channel or its failure must be visible there), then run-end. Never raises."""
    try:
        if run.phase is RunPhase.ENDED:
            return
        if not run.started:
            if reason == "cancelled" and run.trigger is None:
                # Never located: nothing of this run is on the channel; publish nothing.
                run.phase = RunPhase.ENDED
                run.outcome = "cancelled"
                run.session.deregister(run)
                return
            await run.start()
        await run.end(reason, error)
    except AgentWorkerError as exc:
        log.error("run_terminal_publish_failed", error=exc.message, reason=reason)
        run.phase = RunPhase.ENDED
        run.outcome = run.outcome or reason
        run.session.deregister(run)
