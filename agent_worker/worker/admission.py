"""Admission: which invocations become runs — validation, dedup by event-id, and capacity.

Pure bookkeeping, no I/O: :class:`Admission` answers "refuse (why)", "duplicate of run X" or "go";
the worker starts the run. Errors carry their HTTP status for the invocation endpoint.
"""

from __future__ import annotations

import asyncio
import fnmatch
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from agent_worker.errors import AgentWorkerError

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
        self, sessions: Sequence[str], max_runs: int, retry_after_s: int, dedup_limit: int = _DEDUP_LIMIT
    ) -> None:
        self.sessions = tuple(sessions)
        self.max_runs = max_runs
        self.retry_after_s = retry_after_s
        self.dedup_limit = dedup_limit
        self._seen: OrderedDict[tuple[str, str], Seen] = OrderedDict()

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
        return self._seen.get((session, event_id))

    def check_capacity(self, active: int) -> None:
        if active >= self.max_runs:
            msg = f"the worker is at its limit of {self.max_runs} concurrent runs"
            raise WorkerBusy(msg, retry_after=self.retry_after_s)

    def has_capacity(self, active: int) -> bool:
        return active < self.max_runs

    def reserve(self, session: str, event_id: str) -> asyncio.Future[Invocation]:
        """Claim an event-id before any await, so a concurrent duplicate waits for this run."""
        pending: asyncio.Future[Invocation] = asyncio.get_running_loop().create_future()
        self._seen[(session, event_id)] = pending
        return pending

    def release(self, session: str, event_id: str) -> None:
        self._seen.pop((session, event_id), None)

    def remember(self, invocation: Invocation, event_id: str) -> None:
        key = (invocation.session_name, event_id)
        self._seen[key] = invocation
        self._seen.move_to_end(key)
        while len(self._seen) > self.dedup_limit:
            self._seen.popitem(last=False)
