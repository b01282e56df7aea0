"""The local engine's crash safety: the worker's side of :mod:`agent_worker.runtime.journal`.

At start (before any session is served) the runs a previous process left open are ended; while
running, a sweep ends the runs of this process whose terminal publish failed (the connection to
Ably was down when they finished), once the connection is back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from agent_worker.logs import get_logger
from agent_worker.runtime.journal import RunJournal, RunRecorder, close_orphans
from agent_worker.runtime.run import Run
from agent_worker.transport.ably import AblyTransport

__all__ = ["LOST_MESSAGE", "RESTART_MESSAGE", "JournalKeeper"]

log = get_logger("agent_worker.worker.durability")

RESTART_MESSAGE = "unable to complete run; the agent worker restarted while this run was in progress"
LOST_MESSAGE = "unable to complete run; the agent worker lost its connection while ending this run"
SWEEP_INTERVAL_S = 2.0
RECOVERY_TIMEOUT_S = 10.0


class JournalKeeper:
    def __init__(self, state_dir: str) -> None:
        self.journal = RunJournal(state_dir)  # raises ConfigError if another process holds it
        self._sweeper: asyncio.Task[None] | None = None

    def attach(self, run: Run) -> None:
        run.journal = RunRecorder(self.journal, run.invocation_id)

    async def recover(self, transport: AblyTransport) -> None:
        """End what a previous process left open (bounded by :data:`RECOVERY_TIMEOUT_S`)."""
        sessions = {r.session for r in self.journal.open_runs()}
        closed, failed = await close_orphans(
            self.journal, transport, RESTART_MESSAGE, timeout_s=RECOVERY_TIMEOUT_S
        )
        if closed or failed:
            log.warning(
                "journal_recovered", closed=closed, failed=failed, state_dir=str(self.journal.state_dir)
            )
        for name in sessions:  # attached only to close them; the pool attaches again on demand
            with contextlib.suppress(Exception):
                await transport.release(name)

    def start_sweep(self, transport: AblyTransport, active: Callable[[], frozenset[str]]) -> None:
        async def sweep() -> None:
            while True:
                await asyncio.sleep(SWEEP_INTERVAL_S)
                skip = active()
                if not transport.connected or all(r.invocation_id in skip for r in self.journal.open_runs()):
                    continue
                await close_orphans(
                    self.journal, transport, LOST_MESSAGE, skip=skip, timeout_s=RECOVERY_TIMEOUT_S
                )

        self._sweeper = asyncio.create_task(sweep(), name="journal-sweep")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._sweeper
            self._sweeper = None
        self.journal.close()
