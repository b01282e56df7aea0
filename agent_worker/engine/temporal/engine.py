"""The Temporal engine's lifecycle: the client, the Temporal worker on the event loop, and starting
(or finding) an invocation's workflow.

The workflow id is derived from the task queue, the session and the input's event id, and is the
invocation id (and a fresh run's run id, as the official ``openRun`` pins it): a duplicate start
anywhere in the fleet is refused by Temporal (``WorkflowAlreadyStartedError``) and answers with the
same ``runId``/``invocationId`` without asking anyone. A workflow that failed (its invocation was
refused, e.g. the input was not found yet) may be started again by a retry, as local admission
forgets a refused invocation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import OrderedDict
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, TLSConfig
from temporalio.worker import Worker as TemporalWorker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from agent_worker.config import EngineConfig
from agent_worker.engine.host import EngineHost
from agent_worker.engine.pending import PendingInputs
from agent_worker.engine.temporal.activities import TurnActivities
from agent_worker.engine.temporal.types import TurnInput
from agent_worker.engine.temporal.workflow import WORKFLOW_NAME, ReapWorkflow, TurnWorkflow
from agent_worker.errors import AgentWorkerError, ConfigError
from agent_worker.logs import get_logger
from agent_worker.runtime.run import Run

__all__ = ["TemporalEngine", "invocation_id_for"]

log = get_logger("agent_worker.engine.temporal")

_IDS = uuid.UUID("6c1d6f0e-8f3b-4b8e-9d55-3a0e4f1c7a21")
# Room beyond the turns for the framing activities, so opening and closing runs never wait on turns.
_FRAMING_SLOTS = 16
SWEEP_INTERVAL_S = 5.0
"""How often a worker looks for turn workflows terminated with their run still open."""
_SWEEP_WINDOW = timedelta(hours=1)
_VISIBILITY_LAG = timedelta(seconds=30)
_REAPED_MEMORY = 4096
_RESERVATION_SLACK_S = 150.0


def invocation_id_for(task_queue: str, session: str, event_id: str) -> str:
    """The workflow id = invocation id of ``(session, event_id)`` in one fleet (task queue)."""
    return str(uuid.uuid5(_IDS, json.dumps([task_queue, session, event_id])))


def _security(s: EngineConfig) -> dict[str, Any]:
    """``api_key``/``tls`` for :meth:`Client.connect` from ``[engine]`` (PEM files read here)."""

    def read(path: str | None) -> bytes | None:
        if path is None:
            return None
        try:
            return Path(path).expanduser().read_bytes()
        except OSError as exc:
            msg = f"[engine] cannot read {path}: {exc.strerror}"
            raise ConfigError(msg) from None

    key = s.api_key()
    cert, private, ca = read(s.tls_cert), read(s.tls_key), read(s.tls_ca)
    if (cert is None) != (private is None):
        msg = "[engine] tls_cert and tls_key go together (mTLS)"
        raise ConfigError(msg)
    out: dict[str, Any] = {}
    if key is not None:
        out["api_key"] = key.get()
    if cert is not None or ca is not None:
        out["tls"] = TLSConfig(server_root_ca_cert=ca, client_cert=cert, client_private_key=private)
    elif s.tls or key is not None:
        out["tls"] = True
    return out


def _log_stopped(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("temporal_worker_failed", error=repr(task.exception()))


class TemporalEngine:
    def __init__(self, host: EngineHost, settings: EngineConfig) -> None:
        self.host = host
        self.settings = settings
        self.client: Client | None = None
        # The caller's share covers openRun's wait for the input, as a local run's (engine/pending.py).
        # A reservation its openRun does not claim here (it ran on another worker) lapses after
        # longer than an openRun waits for its input (trigger_wait_s, + 120 s while the channel is down).
        expire_s = host.config.trigger_wait_s + _RESERVATION_SLACK_S
        self.pending = PendingInputs(host.admission, expire_s=expire_s)
        self.activities = TurnActivities(host, self._cancel_workflow, self._workflow_running, self.pending)
        self._worker: TemporalWorker | None = None
        self._running: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._reaped: OrderedDict[str, None] = OrderedDict()

    async def start(self) -> None:
        s = self.settings
        try:
            self.client = await Client.connect(s.address, namespace=s.namespace, **_security(s))
        except RuntimeError as exc:
            msg = f"cannot reach Temporal at {s.address} (namespace {s.namespace!r}): {exc}"
            raise ConfigError(msg) from None
        drain = self.host.config.drain_timeout_s
        self._worker = TemporalWorker(
            self.client,
            task_queue=s.task_queue,
            workflows=[TurnWorkflow, ReapWorkflow],
            activities=self.activities.all(),
            # The workflow module imports only plain dataclasses from this package; passing the
            # package through keeps the sandbox from re-importing the worker's whole import graph.
            workflow_runner=SandboxedWorkflowRunner(
                restrictions=SandboxRestrictions.default.with_passthrough_modules("agent_worker")
            ),
            max_concurrent_activities=self.host.config.max_concurrent_runs + _FRAMING_SLOTS,
            # The worker's own drain cancels what is left ("shutdown") first; this is the backstop.
            graceful_shutdown_timeout=timedelta(seconds=drain + 30),
            # Heartbeats (and so cancellations) reach the server at least this often.
            max_heartbeat_throttle_interval=timedelta(seconds=2),
            default_heartbeat_throttle_interval=timedelta(seconds=2),
        )
        self._running = asyncio.create_task(self._worker.run(), name="temporal-worker")
        self._running.add_done_callback(_log_stopped)
        self._sweeper = asyncio.create_task(self._sweep(), name="temporal-sweep")
        log.info("temporal_engine_started", address=s.address, namespace=s.namespace, task_queue=s.task_queue)

    def workflow_handle(self, invocation_id: str) -> WorkflowHandle[object, object]:
        if self.client is None:
            msg = "the Temporal engine is not started"
            raise RuntimeError(msg)
        return self.client.get_workflow_handle(invocation_id)

    async def start_turn(
        self, session: str, event_id: str, caller_client_id: str | None = None
    ) -> tuple[str, bool]:
        """Start the invocation's workflow; ``(invocation_id, duplicate)``."""
        if self.client is None:
            msg = "the Temporal engine is not started"
            raise RuntimeError(msg)
        s = self.settings
        invocation_id = invocation_id_for(s.task_queue, session, event_id)
        arg = TurnInput(
            session=session,
            event_id=event_id,
            invocation_id=invocation_id,
            caller_client_id=caller_client_id,
            heartbeat_timeout_s=s.heartbeat_timeout_s,
            turn_timeout_s=s.turn_timeout_s,
        )
        reserved = self.pending.reserve(invocation_id, caller_client_id)  # for its openRun
        try:
            await self.client.start_workflow(
                TurnWorkflow.run,
                arg,
                id=invocation_id,
                task_queue=s.task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
                memo={"session": session, "event_id": event_id},  # for the terminate sweep
                # This process polls the task queue: the server hands it the first workflow task
                # in the start's answer (no poll round trip before openRun is scheduled).
                request_eager_start=True,
            )
        except WorkflowAlreadyStartedError:
            if reserved:
                self.pending.cancel(invocation_id)
            return invocation_id, True
        except (RPCError, RuntimeError) as exc:  # Temporal unreachable or refusing: retry elsewhere
            if reserved:
                self.pending.cancel(invocation_id)
            log.error("workflow_start_failed", session=session, event_id=event_id, error=str(exc))
            msg = f"unable to start the run's workflow; Temporal did not accept it: {exc}"
            raise AgentWorkerError(msg, code=50300, status_code=503) from None
        except BaseException:
            if reserved:
                self.pending.cancel(invocation_id)
            raise
        if reserved:
            self.pending.started(invocation_id)
        return invocation_id, False

    def start_watched(self, session: str, event_id: str) -> None:
        """Channel-watch mode: start the workflow in the background (every watcher may; one wins)."""

        async def start() -> None:
            try:
                await self.start_turn(session, event_id)
            except Exception as exc:
                log.error("watch_input_dropped", session=session, event_id=event_id, reason=str(exc))

        self._spawn(start())

    async def _cancel_workflow(self, run: Run) -> None:
        """A cancel honoured here (an owner's or admin's ``ai-cancel``, or Temporal's own): record it
        on the workflow too, so it ends ``Cancelled`` and a step elsewhere stops. Bounded: the run's
        terminal must not wait on Temporal for long."""
        with contextlib.suppress(Exception):  # already finished or unreachable: the run ends anyway
            await asyncio.wait_for(self.workflow_handle(run.invocation_id).cancel(), 5)

    async def _workflow_running(self, invocation_id: str) -> bool:
        """Whether the invocation's workflow is still open (an activity Temporal no longer knows
        of: its attempt timed out, or its workflow was terminated — only the latter ends the run)."""
        try:
            described = await asyncio.wait_for(self.workflow_handle(invocation_id).describe(), 10)
        except Exception:
            return False
        return described.status == WorkflowExecutionStatus.RUNNING

    async def _sweep(self) -> None:
        """Terminate runs no workflow code, so a turn terminated while none of its steps ran (its
        worker died, the retry not started yet) would leave its run open: every worker looks for
        such workflows on its task queue and starts one reaper per termination (a derived id, so
        the fleet's sweeps start it once), which ends the run ``error`` if it is still open."""
        since = datetime.now(UTC) - _SWEEP_WINDOW
        failing = False
        while True:
            began = datetime.now(UTC)
            try:
                await self._reap_terminated(since)
                since = began - _VISIBILITY_LAG
                failing = False
            except Exception as exc:
                if not failing:  # once per outage, not every sweep
                    log.warning("temporal_sweep_failed", error=str(exc))
                failing = True
            await asyncio.sleep(SWEEP_INTERVAL_S)

    async def _reap_terminated(self, since: datetime) -> None:
        assert self.client is not None
        s = self.settings
        query = (
            f"TaskQueue = '{s.task_queue}' AND WorkflowType = '{WORKFLOW_NAME}' AND "
            f"ExecutionStatus = 'Terminated' AND CloseTime > '{since.strftime('%Y-%m-%dT%H:%M:%SZ')}'"
        )
        async for execution in self.client.list_workflows(query):
            if execution.id in self._reaped:
                continue
            memo = await execution.memo()
            session, event_id = memo.get("session"), memo.get("event_id")
            if isinstance(session, str) and isinstance(event_id, str):
                with contextlib.suppress(WorkflowAlreadyStartedError):
                    await self.client.start_workflow(
                        ReapWorkflow.run,
                        TurnInput(session=session, event_id=event_id, invocation_id=execution.id),
                        id=f"{execution.id}-reap",
                        task_queue=s.task_queue,
                        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                    )
            self._reaped[execution.id] = None
            while len(self._reaped) > _REAPED_MEMORY:
                self._reaped.popitem(last=False)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _cancel_input_waits(self) -> None:
        cancelled = self.pending.cancel_waits()
        if cancelled:
            log.warning("input_waits_cancelled", count=cancelled, reason="shutdown")

    async def close(self, drain_timeout_s: float | None = None) -> None:
        """Stop polling; steps in flight finish (the worker's drain bounds them), openRun's waits for
        an input within ``drain_timeout_s`` (default: ``[worker] drain_timeout_s``)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(BaseException):
                await self._sweeper
        # The Temporal worker's shutdown waits for an openRun (a local activity) for as long as it
        # waits for its input (trigger_wait_s, + 120 s while the channel is down), past any
        # graceful timeout: past the worker's drain bound those waits are cancelled, as a local run
        # still looking for its input is (nothing was published; the workflow fails, so a retried
        # POST starts over).
        loop = asyncio.get_running_loop()
        drain_s = self.host.config.drain_timeout_s if drain_timeout_s is None else drain_timeout_s
        bound = loop.call_later(drain_s, self._cancel_input_waits)
        if self._worker is not None:
            with contextlib.suppress(Exception):
                await self._worker.shutdown()
        bound.cancel()
        if self._running is not None:
            with contextlib.suppress(BaseException):
                await self._running
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, 5)
