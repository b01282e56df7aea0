"""The long-lived worker: admission, the session pool and run supervision, plus serving it.

Shape borrowed from arq's ``Worker``: lifecycle hooks (``on_startup``, ``on_shutdown``,
``on_run_start``, ``on_run_end``), a concurrency limit, a graceful drain on SIGTERM (stop accepting,
wait up to ``drain_timeout_s``, then cancel what is left — every started run still publishes its
``ai-run-end``), and :meth:`Worker.run_until_idle` plus counters for deterministic tests.

The parts: :mod:`.admission` decides which invocations become runs (validation, dedup, capacity),
:mod:`.pool` keeps one attached session per channel, and
:class:`agent_worker.runtime.supervisor.RunSupervisor` drives each run to a terminal state. The
worker owns their lifecycle and the counters. :meth:`Worker.serve` adds the HTTP face and, with no
Ably configured, the embedded server; :meth:`Worker.run` is ``asyncio.run(worker.serve())``
(on uvloop when installed).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from agent_worker import eventloop, gcpause
from agent_worker.config import Config, WorkerConfig
from agent_worker.errors import AgentWorkerError, AuthError, ConfigError, InputEventNotFound
from agent_worker.gcpause import GC_THRESHOLDS, GcHold, tune_gc
from agent_worker.logs import configure_logging, get_logger
from agent_worker.protocol.wire import InboundMessage
from agent_worker.runtime.handler import RunHandler
from agent_worker.runtime.run import CancelHook, Run
from agent_worker.runtime.session import AgentSession, CancelDecision, CancelPolicy
from agent_worker.runtime.supervisor import Hook, LocateLimits, RunSupervisor, call_hook
from agent_worker.runtime.trigger import Trigger
from agent_worker.telemetry import configure_from_env, trace_run
from agent_worker.transport.ably import AblySettings, AblyTransport
from agent_worker.web import web_defaults
from agent_worker.worker.admission import Admission, Invocation, InvocationRefused, WorkerBusy
from agent_worker.worker.connect import Connection, connect
from agent_worker.worker.durability import JournalKeeper
from agent_worker.worker.http import serve as serve_http
from agent_worker.worker.metrics import WorkerMetrics
from agent_worker.worker.notify import Notifier, NotifyHook
from agent_worker.worker.pool import SessionPool
from agent_worker.worker.startgate import UNGATED, Lease, StartGate, unbind, yield_place

if TYPE_CHECKING:
    from agent_worker.engine.temporal import TemporalEngine

__all__ = ["GC_THRESHOLDS", "Invocation", "InvocationRefused", "Worker", "WorkerBusy", "tune_gc"]

log = get_logger("agent_worker.worker")


def _shutting_down() -> InvocationRefused:
    msg = "the worker is shutting down; retry on another worker"
    return InvocationRefused(msg, code=50300, status_code=503)


class Worker:
    """Serves one agent (or any run handler) on AI Transport sessions.

    ``Worker(agent).run()`` blocks until SIGINT/SIGTERM; ``await worker.serve()`` does the same
    inside your loop; ``async with Worker(agent, transport=...)`` (or :meth:`start`/:meth:`close`)
    runs it without the HTTP face, for tests and embedding. ``config`` is the whole
    :class:`~agent_worker.config.Config` (or just its ``[worker]`` section); with no ``transport``
    the worker connects as ``[ably]`` says, starting the embedded server when nothing is configured.
    """

    def __init__(
        self,
        agent: RunHandler,
        *,
        config: Config | WorkerConfig | None = None,
        transport: AblyTransport | AblySettings | None = None,
        history_page_size: int | None = None,
        on_startup: Hook | None = None,
        on_shutdown: Hook | None = None,
        on_run_created: Callable[[Run], None] | None = None,
        on_run_start: Hook | None = None,
        on_run_end: Hook | None = None,
        on_cancel: CancelHook | None = None,
        on_notify: NotifyHook | None = None,
        handle_signals: bool = False,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.agent = agent
        self.transport: AblyTransport | None = (
            None
            if transport is None
            else transport
            if isinstance(transport, AblyTransport)
            else AblyTransport(transport)
        )
        self.connection: Connection | None = None
        """How ``[ably]`` was reached when no transport was given (``.embedded``: the server started)."""
        self._history_page_size = history_page_size
        self.on_startup = on_startup
        self.on_shutdown = on_shutdown
        self.on_run_created = on_run_created
        """Called synchronously as each run is created, before it can receive a cancel: set per-run
        hooks here (``run.on_cancel``, ``run.on_steer``)."""
        self.on_run_start = on_run_start
        self.on_run_end = on_run_end
        self.on_cancel = on_cancel if on_cancel is not None else getattr(agent, "on_cancel", None)
        self.on_notify = on_notify
        """Shape (return the :class:`Notice`) or veto (return ``None``) each push notification."""
        self.handle_signals = handle_signals
        self.metrics = metrics or WorkerMetrics()
        self._state: Literal["new", "running", "draining", "closed"] = "new"
        self.configure(config if isinstance(config, Config) else Config(worker=config or WorkerConfig()))
        self.pool: SessionPool | None = None
        self.http_url: str | None = None
        self.web_url: str | None = None
        """Where the browser client is served (``[http] web``), once :meth:`serve` listens."""
        """``http://host:port/api/chat`` once :meth:`serve` has started the HTTP face."""
        self._active: dict[asyncio.Task[None], Run] = {}
        # Runs whose input is not located yet hold no slot (see Admission); those located do.
        # Unlocated runs map to the caller whose share they hold (given back exactly once).
        self._unlocated: dict[Run, str | None] = {}
        self._slotted: set[Run] = set()
        self.journal: JournalKeeper | None = None
        """The crash journal (``[worker] state_dir``), open while the worker runs."""
        self.engine: TemporalEngine | None = None
        """``[engine] kind = "temporal"``: where admitted runs execute (None: here, the local engine)."""
        self._idle = asyncio.Event()
        self._idle.set()
        # Watched inputs waiting for their stale session's rebuild (_on_fresh_input): not idle.
        self._rebuilds: set[asyncio.Task[None]] = set()
        self._finished = asyncio.Condition()
        self._closing: asyncio.Task[None] | None = None
        self.runs_completed = 0
        self.runs_failed = 0
        self.runs_cancelled = 0
        self.runs_suspended = 0
        self.finished_runs: list[Run] = []

    def configure(self, settings: Config) -> None:
        """Adopt ``settings`` (before :meth:`start`): ``agent-worker run app:worker`` applies the
        config file and the flags to a worker built in code this way."""
        if self._state != "new":
            msg = "configure the worker before starting it"
            raise RuntimeError(msg)
        self.settings = settings
        self.config = settings.worker
        self.history_page_size = self._history_page_size or settings.ably.history_page_size
        self.policy = CancelPolicy(self.config.cancel_policy, self.config.admin_client_ids)
        self.admission = Admission(
            self.config.sessions,
            self.config.max_concurrent_runs,
            self.config.retry_after_s,
            max_pending=self.config.max_pending_invocations,
            max_pending_per_caller=self.config.max_pending_per_caller,
            state_dir=self.config.state_dir or None,
        )
        self._slots = asyncio.Semaphore(self.config.max_concurrent_runs)
        self.supervisor = RunSupervisor(
            self.agent,
            self,
            LocateLimits(
                max_pages=self.config.history_max_pages,
                max_branch_pages=self.config.history_max_branch_pages,
                wait_s=self.config.trigger_wait_s,
                max_input_bytes=self.config.max_input_bytes,
            ),
            on_run_start=self._handler_starting,
            on_run_end=self.on_run_end,
        )
        k = self.config.start_concurrency
        self._gate: StartGate | None = StartGate(k) if k > 0 else None
        self.notifier = Notifier(
            lambda: self.transport,
            self.config.notify,
            self.config.notify_min_run_s,
            self.on_notify,
            lambda result: self.metrics.notifications.labels(result).inc(),
            self_client_id=settings.ably.client_id,
        )

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

    @property
    def sessions(self) -> dict[str, AgentSession]:
        return self.pool.sessions if self.pool is not None else {}

    async def start(self) -> None:
        if self._state != "new":
            msg = f"worker cannot start from state {self._state}"
            raise RuntimeError(msg)
        if self.config.state_dir and self.settings.engine.kind == "local":
            # First: a second local worker on this state dir must fail before touching anything.
            self.journal = JournalKeeper(self.config.state_dir)
        try:
            if self.transport is None:
                self.connection = await connect(self.settings)
                self.transport = AblyTransport(self.connection.settings)
            await self.transport.connect()
            if self.journal is not None:
                # Before any session is served: its open runs would block new ones and mislead clients.
                await self.journal.recover(self.transport)
        except BaseException:
            if self.connection is not None:
                await self.connection.close()
            if self.journal is not None:
                await self.journal.close()
                self.journal = None
            raise
        if self._gate is not None:
            # A start whose session waits for a realtime connection to open gives its place back.
            self.transport.pool.on_wait = yield_place
        self.pool = SessionPool(
            self.transport,
            self._new_session,
            presence=self.config.presence,
            idle_s=self.config.session_idle_s,
        )
        if self.settings.engine.kind == "temporal":
            await self._start_engine()
        self._state = "running"
        if self.handle_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, self._on_signal, sig)
        for name in self.config.watch_channels:
            session = await self.session(name)
            session.watch = True
        self.pool.start_reaper()
        if self.journal is not None:
            transport = self.transport
            self.journal.start_sweep(
                transport, lambda: frozenset(r.invocation_id for r in self._active.values())
            )
        await call_hook(self.on_startup, self)
        log.info("worker_started", watch=list(self.config.watch_channels))

    async def _start_engine(self) -> None:
        # Imported here: the base install has no temporalio (the `temporal` extra brings it).
        try:
            from agent_worker.engine.temporal import TemporalEngine  # noqa: PLC0415
        except ImportError as exc:
            msg = (
                "[engine] kind = 'temporal' needs the temporal extra "
                f"(pip install 'agent-worker[temporal]'): {exc}"
            )
            raise ConfigError(msg) from None
        engine = TemporalEngine(self, self.settings.engine)
        try:
            await engine.start()
        except BaseException:
            if self.pool is not None:
                await self.pool.close()
            if self.transport is not None:
                await self.transport.close()
            if self.connection is not None:
                await self.connection.close()
            raise
        self.engine = engine

    async def _handler_starting(self, run: Run) -> None:
        """The run's handler is about to be called: its start is over (its place in the start gate
        goes to the next in line, so the gate never holds a place across the model call)."""
        yield_place()
        await call_hook(self.on_run_start, run)

    def track_run(self, run: Run, task: asyncio.Task[Any]) -> None:
        """A run executing in an engine's step: active, drained and (then) cancelled like a local one."""
        self._active[task] = run
        self._idle.clear()
        self.metrics.active_runs.set(len(self._active))
        task.add_done_callback(self._run_done)

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
        if self._state == "new":
            self._state = "closed"
            return
        self._state = "draining"
        if self._gate is not None:  # invocations in line for the start gate: not started, 503
            self._gate.close(_shutting_down)
        timeout = self.config.drain_timeout_s if drain_timeout_s is None else drain_timeout_s
        # The engine stops taking steps first; those it runs here are in _active and drain below.
        engine_closed = asyncio.create_task(self.engine.close(timeout)) if self.engine is not None else None
        for rebuild in list(self._rebuilds):  # a watched input not started yet: not accepted
            rebuild.cancel()
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
        if engine_closed is not None:
            await engine_closed
        await self.notifier.drain()
        if self.journal is not None:
            await self.journal.close()
        if self.pool is not None:
            await self.pool.close()
        self.admission.close()
        if self.transport is not None:
            await self.transport.close()
        if self.connection is not None:
            await self.connection.close()
        self._state = "closed"
        await call_hook(self.on_shutdown, self)
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

    # --- serving -----------------------------------------------------------------------------------

    async def serve(
        self, *, on_ready: Callable[[Worker], None] | None = None, handle_signals: bool = True
    ) -> None:
        """Start, serve HTTP as ``[http]`` says, and run until SIGINT/SIGTERM (``handle_signals``) or
        :meth:`close`; then drain. ``on_ready`` is called once everything listens."""
        self.handle_signals = handle_signals
        configure_logging(self.config.log_format, self.config.log_level)
        otel = configure_from_env()  # OTEL_TRACES_EXPORTER=console|otlp, OTEL_METRICS_EXPORTER, ...
        runner = None
        try:
            await self.start()
            http = self.settings.http
            if http.enabled:
                token_key = self.connection.token_key if self.connection is not None else None
                if (
                    token_key is None
                    and self.transport is not None
                    and self.transport.settings.key is not None
                ):
                    token_key = self.transport.settings.key.get()
                embedded = self.connection.embedded if self.connection is not None else None
                http, web_client = web_defaults(self.settings, embedded and embedded.endpoint)
                runner = await serve_http(self, http, token_key=token_key, web_client=web_client)
                host, port = runner.addresses[0][:2]
                self.http_url = f"http://{host}:{port}{http.path}"
                self.web_url = f"http://{host}:{port}/" if web_client is not None else None
            # Start-up is over: keep its objects out of every later full GC (see tune_gc for why).
            if self.config.gc_tuning:
                tune_gc()
            if on_ready is not None:
                on_ready(self)
            await self.wait_closed()
        finally:
            if runner is not None:
                await runner.cleanup()
            await self.close()
            aclose = getattr(self.agent, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
            if otel is not None:
                otel.shutdown()  # flush the last spans and metrics

    def run(self) -> None:
        """Serve until SIGINT/SIGTERM (blocking): ``asyncio.run(self.serve())``, on uvloop when
        installed (see agent_worker/eventloop.py)."""
        eventloop.run(self.serve())

    # --- sessions ----------------------------------------------------------------------------------

    def _new_session(self, channel: Any) -> AgentSession:
        return AgentSession(
            channel,
            history_page_size=self.history_page_size,
            policy=self.policy,
            worker_on_cancel=self.on_cancel,
            on_fresh_input=self._on_fresh_input,
            on_cancel_decision=self._count_cancel,
            codec=self.config.codec,
            # Lifecycle messages are the agent's: others' (forged) ones are not folded.
            agent_client_id=self.transport.settings.client_id if self.transport is not None else None,
        )

    async def session(self, name: str, *, starting: bool = False) -> AgentSession:
        """The (attached) session for a channel, created on first use (``starting``: for a run)."""
        if self.pool is None:
            msg = "start the worker before using its sessions"
            raise RuntimeError(msg)
        return await self.pool.get(name, starting=starting)

    def _count_cancel(self, decision: CancelDecision) -> None:
        self.metrics.cancels.labels(decision).inc()

    # --- invocations -------------------------------------------------------------------------------

    def check_session_name(self, name: object) -> str:
        return self.admission.session_name(name)

    async def invoke(
        self, session_name: object, input_event_id: object, *, caller_client_id: str | None = None
    ) -> Invocation:
        """Accept an invocation: validate, deduplicate by event-id, check capacity, start the run.

        Returns once the run task exists — before its work — like the JS handler's ``after()``.
        ``caller_client_id`` (an authenticated caller): the input must have been published by that
        clientId (``*``: any), else the run publishes nothing."""
        name = self.admission.session_name(session_name)
        event_id = self.admission.event_id(input_event_id)
        if not self.accepting:
            msg = "the worker is shutting down; retry on another worker"
            raise InvocationRefused(msg, code=50300, status_code=503)
        seen = self.admission.seen(name, event_id)
        if seen is not None:
            self.metrics.invocations.labels("duplicate").inc()
            if isinstance(seen, asyncio.Future):
                seen = await asyncio.shield(seen)
            log.info("invocation_duplicate", session=name, event_id=event_id, run_id=seen.run_id)
            return Invocation(seen.run_id, seen.invocation_id, name, duplicate=True)
        try:
            # In flight too: a burst of simultaneous invocations all pass this check before any of
            # them has opened its session and created its run.
            unlocated = len(self._unlocated) + self.admission.in_flight
            if self.engine is not None:
                unlocated += self.engine.pending.locating  # waiting in a workflow's openRun
            self.admission.check_capacity(len(self._slotted), unlocated, caller=caller_client_id)
        except WorkerBusy:
            self.metrics.invocations.labels("busy").inc()
            raise
        pending = self.admission.reserve(name, event_id)
        self.admission.take(caller_client_id)  # given back below; the run takes its own (_start_run)
        hold: GcHold | None = None
        try:
            if self.engine is not None:
                invocation = await self._start_durable(name, event_id, caller_client_id)
            else:
                # In line (a pending invocation) until the start gate has room: see startgate.py.
                lease = await self._gate.acquire() if self._gate is not None else UNGATED
                bound = lease.bind()  # the run task inherits it (given back at its handler, or end)
                try:
                    if not self.accepting:  # the drain began as its place came: not started
                        raise _shutting_down()
                    # Collections wait (bounded) until the run start is sent: see gcpause.GcDeferral.
                    hold = gcpause.starts.hold()
                    session = await self.session(name, starting=True)
                    invocation = self._start_run(session, event_id, caller_client_id, hold, lease)
                except BaseException:
                    lease.release()
                    raise
                finally:
                    unbind(bound)
        except BaseException as exc:
            if hold is not None:
                hold.release()
            pending.set_exception(exc)
            pending.exception()  # retrieved: waiting duplicates re-raise it
            raise
        finally:
            self.admission.release(name, event_id)
            self.admission.give_back(caller_client_id)
        pending.set_result(invocation)
        return invocation

    def _start_run(
        self,
        session: AgentSession,
        event_id: str,
        caller_client_id: str | None = None,
        gc_hold: GcHold | None = None,
        lease: Lease = UNGATED,
    ) -> Invocation:
        run = session.create_run(event_id, coalesce_window_s=self.config.coalesce_window_ms / 1000.0)
        run.caller_client_id = caller_client_id
        if self.journal is not None:
            self.journal.attach(run)
        if self.on_run_created is not None:
            try:
                self.on_run_created(run)
            except Exception:
                log.exception("worker_hook_failed", hook="on_run_created")
        invocation = Invocation(run.run_id, run.invocation_id, session.name)
        self.admission.remember(invocation, event_id)
        hold = gc_hold if gc_hold is not None else gcpause.starts.hold()
        started = time.monotonic()
        body = trace_run(run, self.supervisor.execute(run, session, started, gc_hold=hold), self.agent)
        task = asyncio.create_task(body, name=f"run:{run.run_id}")  # body: the invoke_agent span
        task.add_done_callback(lambda _: hold.release())  # every path, a task cancelled unstarted too
        if not lease.released:  # its handler normally gives the gate's place back before the end
            task.add_done_callback(lambda _: lease.release())
        run.task = task
        self._active[task] = run
        self._unlocated[run] = caller_client_id
        self.admission.take(caller_client_id)  # the caller's share, until _located(run)
        self._idle.clear()
        self.metrics.active_runs.set(len(self._active))
        self.metrics.invocations.labels("accepted").inc()
        task.add_done_callback(self._run_done)
        log.info("invocation_accepted", session=session.name, event_id=event_id, run_id=run.run_id)
        return invocation

    async def _start_durable(self, name: str, event_id: str, caller_client_id: str | None) -> Invocation:
        """The engine seam: a durable engine starts (or finds) the invocation's workflow; the run id
        is the invocation id (a continuation's run keeps its own id on the wire, as in local mode
        the answer names the provisional one)."""
        assert self.engine is not None
        invocation_id, duplicate = await self.engine.start_turn(name, event_id, caller_client_id)
        # Not remembered here: Temporal is the fleet's dedup, and a refused (failed) workflow may be
        # started again by a retry, as local admission forgets a refused invocation.
        invocation = Invocation(invocation_id, invocation_id, name, duplicate=duplicate)
        self.metrics.invocations.labels("duplicate" if duplicate else "accepted").inc()
        log.info(
            "invocation_duplicate" if duplicate else "invocation_accepted",
            session=name,
            event_id=event_id,
            run_id=invocation_id,
            engine="temporal",
        )
        return invocation

    def _on_fresh_input(self, session: AgentSession, msg: InboundMessage) -> None:
        """Channel-watch mode: a live run-less ``ai-input`` starts a run (once per event-id)."""
        event_id = msg.transport_headers.get("event-id")
        if not event_id or self.admission.seen(session.name, event_id) is not None:
            return
        if not self.accepting:
            return
        if self.engine is not None:
            self.engine.start_watched(session.name, event_id)
            return
        if session.stale and not session.runs and self.pool is not None:
            # Its channel lost continuity (or, echo off, a message of its own could not be folded
            # exactly) and its runs are over: rebuilt from history first, as the pool rebuilds a
            # session for an invocation, so this run's prompt is the history fold.
            task = asyncio.ensure_future(self._start_watched_rebuilt(session, event_id))
            self._rebuilds.add(task)
            self._idle.clear()
            task.add_done_callback(self._rebuild_done)
            return
        self._start_watched(session, event_id)

    def _start_watched(self, session: AgentSession, event_id: str) -> None:
        if not self.admission.has_capacity(len(self._slotted)):
            self.metrics.invocations.labels("busy").inc()
            log.warning("watch_input_dropped", session=session.name, event_id=event_id, reason="busy")
            return
        self._start_run(session, event_id)

    async def _start_watched_rebuilt(self, stale: AgentSession, event_id: str) -> None:
        name = stale.name
        try:
            await stale.gaps_read()  # a gap read after the loss may still run: idle after it
            session = await self.session(name)  # the pool's rebuild (one for inputs arriving together)
        except AgentWorkerError as exc:
            log.warning("watch_input_dropped", session=name, event_id=event_id, reason=str(exc))
            return
        if self.accepting and self.admission.seen(name, event_id) is None:
            self._start_watched(session, event_id)

    def _rebuild_done(self, task: asyncio.Task[None]) -> None:
        self._rebuilds.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("watch_input_dropped", reason=repr(exc))
        if not self._active and not self._rebuilds:
            self._idle.set()

    def _run_done(self, task: asyncio.Task[None]) -> None:
        run = self._active.pop(task, None)
        if run is not None:
            self._located(run)
        self.metrics.active_runs.set(len(self._active))
        if not self._active and not self._rebuilds:
            self._idle.set()

    # --- what the supervisor reports (RunObserver) -------------------------------------------------

    def run_status(self, run: Run, status: str) -> None:
        if self.pool is not None:
            self.pool.set_status(run.session.name, run.run_id, status)  # type: ignore[arg-type]

    def run_tokens(self, input_tokens: int, output_tokens: int) -> None:
        if input_tokens:
            self.metrics.tokens.labels("input").inc(input_tokens)
        if output_tokens:
            self.metrics.tokens.labels("output").inc(output_tokens)

    def trigger_waited(self, seconds: float) -> None:
        self.metrics.trigger_wait.observe(seconds)

    async def run_located(self, run: Run, trigger: Trigger) -> None:
        """The run's input exists: check it is the authenticated caller's, then take a run slot
        (several accepted at once queue here)."""
        self._located(run)
        caller = run.caller_client_id
        if caller is not None and caller not in ("*", trigger.client_id):
            msg = f"the input was published by {trigger.client_id!r}, not by the caller {caller!r}"
            raise AuthError(msg, code=40160, status_code=401)
        if self._slots.locked():
            yield_place()  # waiting for a run to end is no work of this start's: the next may go
        await self._slots.acquire()
        self._slotted.add(run)

    def first_output(self, seconds: float) -> None:
        self.metrics.time_to_first_token.observe(seconds)

    def _located(self, run: Run) -> None:
        """``run`` no longer looks for its input (found, or the run ended): the worker's pending
        count and its caller's share drop, once whichever path gets here first."""
        if run in self._unlocated:
            self.admission.give_back(self._unlocated.pop(run))

    def run_finished(self, run: Run, error: AgentWorkerError | None, accepted_at: float) -> None:
        self._located(run)
        if run in self._slotted:
            self._slotted.discard(run)
            self._slots.release()
        if isinstance(error, InputEventNotFound | AuthError):
            self.admission.forget(run.session.name, run.event_id)
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
        self.notifier.run_ended(run, time.monotonic() - accepted_at)
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
                if not self._active and not self._rebuilds:
                    return
