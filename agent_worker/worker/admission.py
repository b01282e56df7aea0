"""Admission: which invocations become runs — validation, dedup by event-id, and capacity.

Bookkeeping: :class:`Admission` answers "refuse (why)", "duplicate of run X" or "go"; the worker
starts the run. Errors carry their HTTP status for the invocation endpoint. Finished invocations
are remembered by :class:`~agent_worker.worker.dedup.InvocationLog` (in SQLite with a
``state_dir``, so a retried POST after a restart finds its run); failed ones are forgotten, so a
retry starts over. Capacity counts runs whose input was found (they hold a slot) and, separately,
invocations still looking for theirs: a bogus inputEventId must not lock real users out. Those are
also bounded per verified caller (``max_pending_per_caller``), so one caller's made-up ids cannot
fill the worker's whole pending cap either.
"""

from __future__ import annotations

import asyncio
import fnmatch
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agent_worker.errors import AgentWorkerError
from agent_worker.logs import get_logger
from agent_worker.worker.dedup import InvocationLog

__all__ = ["Admission", "CallerBusy", "Invocation", "InvocationRefused", "WorkerBusy", "caller_share"]

log = get_logger("agent_worker.worker")

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


class CallerBusy(WorkerBusy):
    """This caller already holds its share of the pending invocations (HTTP 429, 42910)."""


def caller_share(max_pending: int, configured: int | None = None) -> int:
    """Pending invocations one verified caller may hold: ``configured``, else a quarter of the
    worker's cap (at least 4, so a cap of a few stays the only bound)."""
    return configured if configured is not None else max(4, max_pending // 4)


class InvocationRefused(AgentWorkerError):
    """The invocation is invalid (4xx with the reason)."""

    code = 40000
    status_code = 400


Seen = Invocation | asyncio.Future[Invocation]

#: C0 controls and DEL: line breaks forge log lines, escapes drive the terminal of whoever reads
#: the console log; no channel name or event id needs them.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _has_control(text: str) -> bool:
    return _CONTROL.search(text) is not None


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
        max_pending_per_caller: int | None = None,
        state_dir: str | Path | None = None,
    ) -> None:
        self.sessions = tuple(sessions)
        self.max_runs = max_runs
        self.max_pending = max_pending
        self.max_pending_per_caller = caller_share(max_pending, max_pending_per_caller)
        self.retry_after_s = retry_after_s
        self.dedup_limit = dedup_limit
        self._pending: dict[tuple[str, str], asyncio.Future[Invocation]] = {}
        # Verified callers' invocations not located yet (in flight or looking), and the callers
        # refused since their share was last below the bound (a refusal burst is logged once).
        self._held: Counter[str] = Counter()
        self._over_share: set[str] = set()
        self._log = InvocationLog(state_dir, limit=dedup_limit)

    def session_name(self, name: object) -> str:
        """A valid channel name this worker serves, else :class:`InvocationRefused` (400/404)."""
        if not isinstance(name, str) or not name.strip():
            msg = "sessionName must be a non-empty string"
            raise InvocationRefused(msg)
        if name.startswith("[") or len(name) > 512 or _has_control(name):
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
        # Bounded like sessionName: a remembered invocation keeps it (10 000 of them, 24 h), and
        # logs print it; the ChatTransport's are UUIDs.
        if len(value) > 512 or _has_control(value):
            msg = "inputEventId is not a valid event id (at most 512 characters, no control characters)"
            raise InvocationRefused(msg)
        return value

    def seen(self, session: str, event_id: str) -> Seen | None:
        key = (session, event_id)
        pending = self._pending.get(key)
        if pending is not None:
            return pending
        done = self._log.get(key)
        return Invocation(done[0], done[1], session) if done is not None else None

    def check_capacity(self, running: int, unlocated: int = 0, *, caller: str | None = None) -> None:
        """``running``: runs holding a slot; ``unlocated``: invocations still looking for input;
        ``caller``: the verified clientId (None: no identity — auth off, a static bearer token, an
        in-process call — so every caller is the same one and only the worker's cap applies)."""
        if running >= self.max_runs:
            msg = f"the worker is at its limit of {self.max_runs} concurrent runs"
            raise WorkerBusy(msg, retry_after=self.retry_after_s)
        self.check_share(caller)
        if unlocated >= self.max_pending:
            msg = f"the worker is looking for {unlocated} inputs already; retry shortly"
            raise WorkerBusy(msg, retry_after=self.retry_after_s)

    def check_share(self, caller: str | None) -> None:
        """:class:`CallerBusy` when ``caller`` holds its share of the pending invocations already."""
        if caller is None:
            return
        held = self._held[caller]
        if held >= self.max_pending_per_caller:
            if caller not in self._over_share:
                self._over_share.add(caller)
                log.warning("invocation_caller_over_share", caller=caller, pending=held)
            msg = (
                f"the caller {caller!r} already has {held} invocations whose input is not found yet "
                f"(at most {self.max_pending_per_caller} per caller); retry once they are found or end"
            )
            raise CallerBusy(msg, retry_after=self.retry_after_s)

    def take(self, caller: str | None) -> None:
        """An admitted invocation (then its run, until located or ended) counts towards ``caller``'s
        share; every :meth:`take` is matched by one :meth:`give_back`."""
        if caller is not None:
            self._held[caller] += 1

    def give_back(self, caller: str | None) -> None:
        if caller is None:
            return
        held = self._held[caller] - 1
        if held > 0:
            self._held[caller] = held
        else:
            del self._held[caller]
        if held < self.max_pending_per_caller:
            self._over_share.discard(caller)  # its next refusal starts a new burst

    def held_by(self, caller: str) -> int:
        """``caller``'s invocations not located yet (admitted or looking for their input)."""
        return self._held[caller]

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
