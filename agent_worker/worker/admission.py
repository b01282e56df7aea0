"""Admission: which invocations become runs — validation, dedup by event-id, and capacity.

Bookkeeping: :class:`Admission` answers "refuse (why)", "duplicate of run X" or "go"; the worker
starts the run. Errors carry their HTTP status for the invocation endpoint. Finished invocations
are remembered by :class:`~agent_worker.worker.dedup.InvocationLog` (in SQLite with a
``state_dir``, so a retried POST after a restart finds its run); failed ones are forgotten, so a
retry starts over. Capacity counts runs whose input was found (they hold a slot) and, separately,
invocations still looking for theirs: a bogus inputEventId must not lock real users out.
"""

from __future__ import annotations

import asyncio
import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agent_worker.errors import AgentWorkerError
from agent_worker.worker.dedup import InvocationLog

__all__ = ["Admission", "Invocation", "InvocationRefused", "WorkerBusy"]

_DEDUP_LIMIT = 10_000


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


Seen = Invocation | asyncio.Future[Invocation]


class Admission:
    """Validation, the event-id dedup memory (bounded, oldest forgotten first) and the run limit."""

    def __init__(
        self,
        sessions: Sequence[str],
        max_runs: int,
        retry_after_s: int,
        dedup_limit: int = _DEDUP_LIMIT,
        *,
        max_pending: int = 256,
        state_dir: str | Path | None = None,
    ) -> None:
        self.sessions = tuple(sessions)
        self.max_runs = max_runs
        self.max_pending = max_pending
        self.retry_after_s = retry_after_s
        self.dedup_limit = dedup_limit
        self._pending: dict[tuple[str, str], asyncio.Future[Invocation]] = {}
        self._log = InvocationLog(state_dir, limit=dedup_limit)

    def session_name(self, name: object) -> str:
        """A valid channel name this worker serves, else :class:`InvocationRefused` (400/404)."""
        if not isinstance(name, str) or not name.strip():
            msg = "sessionName must be a non-empty string"
            raise InvocationRefused(msg)
        if name.startswith("[") or len(name) > 512 or any(c in name for c in "\n\r\x00"):
            msg = "sessionName is not a valid channel name"
            raise InvocationRefused(msg)
        if not any(fnmatch.fnmatchcase(name, pattern) for pattern in self.sessions):
            msg = f"unknown session {name!r}: this worker serves {', '.join(self.sessions)}"
            raise InvocationRefused(msg, code=40400, status_code=404)
        return name

    @staticmethod
    def event_id(value: object) -> str:
        if not isinstance(value, str) or not value.strip():
            msg = "inputEventId must be a non-empty string"
            raise InvocationRefused(msg)
        return value

    def seen(self, session: str, event_id: str) -> Seen | None:
        key = (session, event_id)
        pending = self._pending.get(key)
        if pending is not None:
            return pending
        done = self._log.get(key)
        return Invocation(done[0], done[1], session) if done is not None else None

    def check_capacity(self, running: int, unlocated: int = 0) -> None:
        """``running``: runs holding a slot; ``unlocated``: invocations still looking for input."""
        if running >= self.max_runs:
            msg = f"the worker is at its limit of {self.max_runs} concurrent runs"
            raise WorkerBusy(msg, retry_after=self.retry_after_s)
        if unlocated >= self.max_pending:
            msg = f"the worker is looking for {unlocated} inputs already; retry shortly"
            raise WorkerBusy(msg, retry_after=self.retry_after_s)

    def has_capacity(self, running: int) -> bool:
        return running < self.max_runs

    @property
    def in_flight(self) -> int:
        """Invocations admitted and still opening their session (their run does not exist yet)."""
        return len(self._pending)

    def reserve(self, session: str, event_id: str) -> asyncio.Future[Invocation]:
        """Claim an event-id before any await, so a concurrent duplicate waits for this run."""
        pending: asyncio.Future[Invocation] = asyncio.get_running_loop().create_future()
        self._pending[(session, event_id)] = pending
        return pending

    def release(self, session: str, event_id: str) -> None:
        self._pending.pop((session, event_id), None)

    def remember(self, invocation: Invocation, event_id: str) -> None:
        self._log.put((invocation.session_name, event_id), invocation.run_id, invocation.invocation_id)

    def forget(self, session: str, event_id: str) -> None:
        """A failed invocation (input never found, caller refused): a retry starts a new run."""
        self._log.forget((session, event_id))

    def close(self) -> None:
        self._log.close()
