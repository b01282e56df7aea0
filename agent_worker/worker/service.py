"""The long-lived worker: sessions, invocations, the run task, drain and shutdown.

Shape borrowed from arq's ``Worker``: lifecycle hooks (``on_startup``, ``on_shutdown``,
``on_run_start``, ``on_run_end``), a concurrency limit, a graceful drain on SIGTERM (stop accepting,
wait up to ``drain_timeout_s``, then cancel what is left — every started run still publishes its
``ai-run-end``), and :meth:`Worker.run_until_idle` plus counters for deterministic tests.

A run is one task (:meth:`Worker._execute`): locate the trigger → ``ai-run-start``/``-resume`` →
agent loop → ``ai-run-end``/``ai-run-suspend``. Its outer edge turns every way a run can stop into a
terminal publish: an honoured cancel (``task.cancel()`` recorded by the run) ends ``cancelled``; a
refused input or a missing trigger ends ``error`` with the protocol's code; anything unexpected ends
``error`` (50000) and is logged once. The cleanup runs under :func:`asyncio.shield`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import gc
import inspect
import signal
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from agent_worker.config import WorkerConfig
from agent_worker.errors import (
    AgentWorkerError,
    InputEventNotFound,
    ProtocolError,
    TransportError,
)
from agent_worker.logs import get_logger
from agent_worker.protocol.wire import InboundMessage
from agent_worker.runtime.loop import AgentSpec, LoopStats, run_agent
from agent_worker.runtime.run import CancelHook, Run, RunPhase
from agent_worker.runtime.session import AgentSession, CancelDecision, CancelPolicy, RunAlreadyActive
from agent_worker.runtime.streaming import retry_with_backoff
from agent_worker.transport.ably import AblySettings, AblyTransport
from agent_worker.worker.metrics import WorkerMetrics
from agent_worker.worker.presence import SessionPresence

__all__ = ["GC_THRESHOLDS", "Invocation", "InvocationRefused", "Worker", "WorkerBusy", "tune_gc"]

log = get_logger("agent_worker.worker")

Hook = Callable[..., "Awaitable[None] | None"]
_DEDUP_LIMIT = 10_000


GC_THRESHOLDS = (700, 10, 10)


def tune_gc(thresholds: tuple[int, int, int] | None = GC_THRESHOLDS) -> None:
    """Make CPython's cyclic GC cheap for a long-lived worker process; call once, after start-up.

    Why: streaming makes cyclic garbage at a high rate — ably-python arms a timeout ``Timer`` per
    published message and cancels it on the ACK, leaving a task/``CancelledError``/traceback/frame
    cycle behind each time — so full (gen-2) collections run every few seconds, and each one walks
    every tracked object in the process, the ~75k that importing aiohttp, ably-python and the
    providers left behind included. At 100 concurrent streams that is a 50-180 ms stop of the event
    loop, every stream's next token delayed at once (the p99 tail). ``gc.freeze()`` moves everything
    alive after start-up into the permanent generation, which collections never walk. It is a
    process-wide setting, so it belongs to whoever owns the process (``agent-worker run`` calls it;
    an application embedding :class:`Worker` may too), not to :meth:`Worker.start`.
    ``thresholds``: passed to ``gc.set_threshold`` (``None`` keeps the current ones).
    """
    gc.collect()
    if thresholds is not None:
        gc.set_threshold(*thresholds)
    gc.freeze()


@dataclass(frozen=True, slots=True)
class Invocation:
    """The answer to an invocation: ids of the run it started (or had already started)."""

    run_id: str
    invocation_id: str
    session_name: str
    duplicate: bool = False

    def to_json(self) -> dict[str, str]:
        return {"runId": self.run_id, "invocationId": self.invocation_id}


class WorkerBusy(AgentWorkerError):
    """The concurrency limit is reached; retry after ``retry_after`` seconds (HTTP 429)."""

    code = 42910
    status_code = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InvocationRefused(AgentWorkerError):
    """The invocation is invalid (4xx with the reason)."""

    code = 40000
    status_code = 400


async def _call_hook(hook: Hook | None, *args: Any) -> None:
    if hook is None:
        return
    try:
        result = hook(*args)
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.exception("worker_hook_failed", hook=getattr(hook, "__name__", repr(hook)))


class Worker:
    def __init__(
        self,
        *,
        transport: AblyTransport | AblySettings,
        agent: AgentSpec,
        config: WorkerConfig | None = None,
        history_page_size: int = 100,
        on_startup: Hook | None = None,
        on_shutdown: Hook | None = None,
        on_run_created: Callable[[Run], None] | None = None,
        on_run_start: Hook | None = None,
        on_run_end: Hook | None = None,
        on_cancel: CancelHook | None = None,
        handle_signals: bool = False,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.transport = transport if isinstance(transport, AblyTransport) else AblyTransport(transport)
        self.agent = agent
        self.config = config or WorkerConfig()
        self.history_page_size = history_page_size
        self.on_startup = on_startup
        self.on_shutdown = on_shutdown
        self.on_run_created = on_run_created
        """Called synchronously as each run is created, before it can receive a cancel: set per-run
        hooks here (``run.on_cancel``, ``run.on_steer``)."""
        self.on_run_start = on_run_start
        self.on_run_end = on_run_end
        self.on_cancel = on_cancel
        self.handle_signals = handle_signals
        self.metrics = metrics or WorkerMetrics()
        self.policy = CancelPolicy(self.config.cancel_policy, self.config.admin_client_ids)
        self.sessions: dict[str, AgentSession] = {}
        self._presence: dict[str, SessionPresence] = {}
        self._session_locks: dict[str, asyncio.Lock] = {}
        self._active: dict[asyncio.Task[None], Run] = {}
        self._seen: OrderedDict[tuple[str, str], Invocation | asyncio.Future[Invocation]] = OrderedDict()
        self._state: Literal["new", "running", "draining", "closed"] = "new"
        self._reaper: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._finished = asyncio.Condition()
        self._closing: asyncio.Task[None] | None = None
        self.runs_completed = 0
        self.runs_failed = 0
        self.runs_cancelled = 0
        self.runs_suspended = 0
        self.finished_runs: list[Run] = []

    def __repr__(self) -> str:
        return f"Worker(state={self._state}, active_runs={len(self._active)}, sessions={len(self.sessions)})"

    # --- lifecycle ---------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        return self._state

    @property
    def accepting(self) -> bool:
        return self._state == "running"

    @property
    def active_runs(self) -> list[Run]:
        return list(self._active.values())

    async def start(self) -> None:
        if self._state != "new":
            msg = f"worker cannot start from state {self._state}"
            raise RuntimeError(msg)
        await self.transport.connect()
        self._state = "running"
        if self.handle_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, self._on_signal, sig)
        for name in self.config.watch_channels:
            session = await self.session(name)
            session.watch = True
        self._reaper = asyncio.create_task(self._reap_idle_sessions())
        await _call_hook(self.on_startup, self)
        log.info("worker_started", watch=list(self.config.watch_channels))

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("worker_signal", signal=sig.name, active_runs=len(self._active))
        if self._closing is None:
            self._closing = asyncio.create_task(self.close())

    async def wait_closed(self) -> None:
        """Block until :meth:`close` has finished (e.g. after a signal)."""
        while self._state != "closed":
            if self._closing is not None:
                await asyncio.shield(self._closing)
            else:
                await asyncio.sleep(0.1)

    async def close(self, drain_timeout_s: float | None = None) -> None:
        """Stop accepting, drain in-flight runs, cancel the rest, leave presence, disconnect.

        Idempotent; every started run publishes its terminal message before the connection closes."""
        if self._state in ("closed", "draining"):
            if self._closing is not None and asyncio.current_task() is not self._closing:
                await asyncio.shield(self._closing)
            return
        self._state = "draining"
        timeout = self.config.drain_timeout_s if drain_timeout_s is None else drain_timeout_s
        pending = list(self._active)
        if pending:
            log.info("worker_draining", runs=len(pending), timeout_s=timeout)
            _, still = await asyncio.wait(pending, timeout=timeout)
            for task in still:
                run = self._active.get(task)
                if run is not None:
                    run.cancel("shutdown")
            if still:
                await asyncio.wait(still, timeout=30)
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for presence in list(self._presence.values()):
            await presence.close()
        for session in list(self.sessions.values()):
            with contextlib.suppress(AgentWorkerError):
                await session.close()
        self.sessions.clear()
        self._presence.clear()
        await self.transport.close()
        self._state = "closed"
        await _call_hook(self.on_shutdown, self)
        log.info(
            "worker_closed",
            completed=self.runs_completed,
            failed=self.runs_failed,
            cancelled=self.runs_cancelled,
            suspended=self.runs_suspended,
        )

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- sessions ----------------------------------------------------------------------------------

    async def session(self, name: str) -> AgentSession:
        """The (attached) session for a channel, created on first use."""
        existing = self.sessions.get(name)
        if existing is not None:
            return existing
        lock = self._session_locks.setdefault(name, asyncio.Lock())
        async with lock:
            existing = self.sessions.get(name)
            if existing is not None:
                return existing
            session = AgentSession(
                self.transport.channel(name),
                history_page_size=self.history_page_size,
                policy=self.policy,
                worker_on_cancel=self.on_cancel,
                on_fresh_input=self._on_fresh_input,
                on_cancel_decision=self._count_cancel,
            )
            await session.connect()
            self.sessions[name] = session
            if self.config.presence:
                presence = SessionPresence(session.channel)
                self._presence[name] = presence
                presence.start()
            return session

    def _count_cancel(self, decision: CancelDecision) -> None:
        self.metrics.cancels.labels(decision).inc()

    async def _reap_idle_sessions(self) -> None:
        interval = max(1.0, min(30.0, self.config.session_idle_s / 4))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for name, session in list(self.sessions.items()):
                if session.watch or not session.idle:
                    continue
                if now - session.last_active < self.config.session_idle_s:
                    continue
                log.info("session_released", session=name)
                self.sessions.pop(name, None)
                presence = self._presence.pop(name, None)
                if presence is not None:
                    await presence.close()
                with contextlib.suppress(AgentWorkerError):
                    await session.close()
                await self.transport.release(name)

    # --- invocations -------------------------------------------------------------------------------

    def check_session_name(self, name: object) -> str:
        if not isinstance(name, str) or not name.strip():
            msg = "sessionName must be a non-empty string"
            raise InvocationRefused(msg)
        if name.startswith("[") or len(name) > 512 or any(c in name for c in "\n\r\x00"):
            msg = "sessionName is not a valid channel name"
            raise InvocationRefused(msg)
        if not any(fnmatch.fnmatchcase(name, pattern) for pattern in self.config.sessions):
            msg = f"unknown session {name!r}: this worker serves {', '.join(self.config.sessions)}"
            raise InvocationRefused(msg, code=40400, status_code=404)
        return name

    async def invoke(self, session_name: object, input_event_id: object) -> Invocation:
        """Accept an invocation: validate, deduplicate by event-id, check capacity, start the run.

        Returns once the run task exists — before its work — like the JS handler's ``after()``."""
        name = self.check_session_name(session_name)
        if not isinstance(input_event_id, str) or not input_event_id.strip():
            msg = "inputEventId must be a non-empty string"
            raise InvocationRefused(msg)
        if not self.accepting:
            msg = "the worker is shutting down; retry on another worker"
            raise InvocationRefused(msg, code=50300, status_code=503)
        key = (name, input_event_id)
        seen = self._seen.get(key)
        if seen is not None:
            self.metrics.invocations.labels("duplicate").inc()
            if isinstance(seen, asyncio.Future):
                seen = await asyncio.shield(seen)
            log.info("invocation_duplicate", session=name, event_id=input_event_id, run_id=seen.run_id)
            return Invocation(seen.run_id, seen.invocation_id, name, duplicate=True)
        if len(self._active) >= self.config.max_concurrent_runs:
            self.metrics.invocations.labels("busy").inc()
            msg = f"the worker is at its limit of {self.config.max_concurrent_runs} concurrent runs"
            raise WorkerBusy(msg, retry_after=self.config.retry_after_s)
        # Reserve the event-id before any await so a concurrent duplicate waits for this run.
        pending: asyncio.Future[Invocation] = asyncio.get_running_loop().create_future()
        self._seen[key] = pending
        try:
            session = await self.session(name)
            invocation = self._start_run(session, input_event_id)
        except BaseException as exc:
            self._seen.pop(key, None)
            pending.set_exception(exc)
            pending.exception()  # retrieved: waiting duplicates re-raise it
            raise
        pending.set_result(invocation)
        return invocation

    def _remember(self, key: tuple[str, str], invocation: Invocation) -> None:
        self._seen[key] = invocation
        self._seen.move_to_end(key)
        while len(self._seen) > _DEDUP_LIMIT:
            self._seen.popitem(last=False)

    def _start_run(self, session: AgentSession, event_id: str) -> Invocation:
        run = session.create_run(event_id, coalesce_window_s=self.config.coalesce_window_ms / 1000.0)
        if self.on_run_created is not None:
            try:
                self.on_run_created(run)
            except Exception:
                log.exception("worker_hook_failed", hook="on_run_created")
        invocation = Invocation(run.run_id, run.invocation_id, session.name)
        self._remember((session.name, event_id), invocation)
        task = asyncio.create_task(self._execute(run, time.monotonic()), name=f"run:{run.run_id}")
        run.task = task
        self._active[task] = run
        self._idle.clear()
        self.metrics.active_runs.set(len(self._active))
        self.metrics.invocations.labels("accepted").inc()
        task.add_done_callback(self._run_done)
        log.info("invocation_accepted", session=session.name, event_id=event_id, run_id=run.run_id)
        return invocation

    def _on_fresh_input(self, session: AgentSession, msg: InboundMessage) -> None:
        """Channel-watch mode: a live run-less ``ai-input`` starts a run (once per event-id)."""
        event_id = msg.transport_headers.get("event-id")
        if not event_id or (session.name, event_id) in self._seen:
            return
        if not self.accepting:
            return
        if len(self._active) >= self.config.max_concurrent_runs:
            self.metrics.invocations.labels("busy").inc()
            log.warning("watch_input_dropped", session=session.name, event_id=event_id, reason="busy")
            return
        self._start_run(session, event_id)

    def _run_done(self, task: asyncio.Task[None]) -> None:
        self._active.pop(task, None)
        self.metrics.active_runs.set(len(self._active))
        if not self._active:
            self._idle.set()

    # --- the run -----------------------------------------------------------------------------------

    def _set_presence(self, run: Run, status: str) -> None:
        presence = self._presence.get(run.session.name)
        if presence is not None:
            presence.set(run.run_id, status)  # type: ignore[arg-type]

    async def _execute(self, run: Run, accepted_at: float) -> None:
        session = run.session
        stats = LoopStats(
            on_usage=self._count_tokens,
            on_status=lambda status: self._set_presence(run, status),
        )
        error: AgentWorkerError | None = None
        with structlog.contextvars.bound_contextvars(
            run_id=run.run_id, session=session.name, invocation_id=run.invocation_id
        ):
            try:
                try:
                    await session.locate(
                        run,
                        max_pages=self.config.history_max_pages,
                        max_branch_pages=self.config.history_max_branch_pages,
                        wait_s=self.config.trigger_wait_s,
                        max_input_bytes=self.config.max_input_bytes,
                    )
                finally:
                    self.metrics.trigger_wait.observe(time.monotonic() - accepted_at)
                structlog.contextvars.bind_contextvars(run_id=run.run_id)
                self._set_presence(run, "thinking")
                await self._start_with_retry(run)
                await _call_hook(self.on_run_start, run)
                outcome = await run_agent(run, self.agent, stats)
                if run.first_output_at is not None:
                    self.metrics.time_to_first_token.observe(run.first_output_at - accepted_at)
                if outcome == "suspended":
                    await run.suspend()
                else:
                    await run.end("complete")
            except asyncio.CancelledError:
                if not run.cancel_requested:
                    await asyncio.shield(self._terminate(run, "cancelled", None))
                    raise
                current = asyncio.current_task()
                if current is not None:
                    current.uncancel()
                log.info("run_cancelled", source=run.cancel_source, by=run.cancelled_by)
                await asyncio.shield(self._terminate(run, "cancelled", None))
            except RunAlreadyActive as exc:
                log.warning("run_refused", code=exc.code, reason=exc.message)
                run.phase = RunPhase.ENDED
                run.outcome = "error"
            except (InputEventNotFound, ProtocolError) as exc:
                error = exc
                log.warning("run_refused", code=exc.code, reason=exc.message)
                await asyncio.shield(self._terminate(run, "error", exc))
            except AgentWorkerError as exc:
                # As the JS agent wraps a failed pipe: "unable to complete run; <cause>".
                error = AgentWorkerError(f"unable to complete run; {exc.message}", code=exc.code)
                log.error("run_failed", code=exc.code, error=exc.message)
                await asyncio.shield(self._terminate(run, "error", error))
            except Exception as exc:
                error = AgentWorkerError(f"unable to complete run; {type(exc).__name__}: {exc}", code=50000)
                log.exception("run_crashed")
                await asyncio.shield(self._terminate(run, "error", error))
            finally:
                self._set_presence(run, "idle")
                self._record(run, error, accepted_at)
                await _call_hook(self.on_run_end, run)

    async def _start_with_retry(self, run: Run) -> None:
        # Nothing is on the wire before the run-start, so retrying its publish is always safe.
        await retry_with_backoff(run.start, attempts=3, retry=lambda exc: isinstance(exc, TransportError))

    async def _terminate(
        self, run: Run, reason: Literal["cancelled", "error"], error: AgentWorkerError | None
    ) -> None:
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

    def _count_tokens(self, inp: int, out: int) -> None:
        if inp:
            self.metrics.tokens.labels("input").inc(inp)
        if out:
            self.metrics.tokens.labels("output").inc(out)

    def _record(self, run: Run, error: AgentWorkerError | None, accepted_at: float) -> None:
        outcome = run.outcome or ("error" if error is not None else "cancelled")
        if outcome == "complete":
            self.runs_completed += 1
        elif outcome == "suspended":
            self.runs_suspended += 1
        elif outcome == "cancelled":
            self.runs_cancelled += 1
        else:
            self.runs_failed += 1
        self.metrics.runs.labels(outcome).inc()
        self.metrics.run_duration.observe(time.monotonic() - accepted_at)
        self.finished_runs.append(run)
        if len(self.finished_runs) > 1000:
            del self.finished_runs[:100]
        self._notify_finished()

    def _notify_finished(self) -> None:
        async def notify() -> None:
            async with self._finished:
                self._finished.notify_all()

        asyncio.get_running_loop().create_task(notify())

    # --- test helpers ------------------------------------------------------------------------------

    @property
    def runs_finished(self) -> int:
        return self.runs_completed + self.runs_failed + self.runs_cancelled + self.runs_suspended

    async def wait_for_runs(self, count: int, limit_s: float = 30.0) -> None:
        """Wait until at least ``count`` runs have finished (any outcome) since the worker started."""
        async with asyncio.timeout(limit_s), self._finished:
            await self._finished.wait_for(lambda: self.runs_finished >= count)

    async def run_until_idle(self, settle_s: float = 0.05, limit_s: float = 60.0) -> None:
        """Return once no run is active (checked twice, ``settle_s`` apart, so inputs already on the
        wire get a chance to start their runs)."""
        async with asyncio.timeout(limit_s):
            while True:
                await self._idle.wait()
                await asyncio.sleep(settle_s)
                if not self._active:
                    return
