"""Invocations a durable engine is still locating the input of, held against the worker's admission
as a local run is until its input is found: the caller's share (``max_pending_per_caller``) and the
worker's pending cap (``max_pending_invocations``).

Why: the POST of a durable invocation returns once its workflow has started; the wait for the
input happens afterwards, in the workflow's ``openRun`` step (up to ``trigger_wait_s``, + 120 s while
the channel is down). Before, the caller's share was given back as the POST returned, so one caller's
made-up event ids held any number of ``openRun`` steps (and their activity slots) waiting for
inputs that never come: the share bounded only the POSTs in flight.

Now a POST reserves its hold before it starts the workflow; the ``openRun`` that runs here (the
usual case: the workflow's first task comes back with the start, eager start) claims it and gives
it back once the input is found or refused. An ``openRun`` with nothing to claim (a workflow started
by another worker of the fleet, or a retry) takes a hold of its own, refused with 42910 when its
caller is over its share here. A reservation no ``openRun`` here claims (it ran on another worker)
lapses after ``expire_s``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from agent_worker.errors import AgentWorkerError

__all__ = ["CallerShares", "OverShare", "PendingInputs", "WaitRefused"]


class CallerShares(Protocol):
    """The worker's admission, as far as the share goes (``worker.admission.Admission``)."""

    def check_share(self, caller: str | None) -> None:
        """Raise (42910) when ``caller`` holds its share already."""

    def take(self, caller: str | None) -> None: ...

    def give_back(self, caller: str | None) -> None: ...


class WaitRefused(AgentWorkerError):
    """An ``openRun``'s wait for its input refused: the invocation is refused (nothing published)."""


class OverShare(WaitRefused):
    """An ``openRun`` whose caller holds its share here already (42910)."""

    code = 42910
    status_code = 429


def _shutting_down() -> WaitRefused:
    msg = "the worker shut down while the invocation waited for its input; retry on another worker"
    return WaitRefused(msg, code=50300, status_code=503)


class PendingInputs:
    def __init__(self, admission: CallerShares, expire_s: float) -> None:
        self._admission = admission
        self._expire_s = expire_s
        self._reserved: dict[str, tuple[str | None, asyncio.TimerHandle | None]] = {}
        self.locating = 0
        """Holds in place (reserved or in an ``openRun``): counted towards the worker's pending cap."""
        self._waiting: set[asyncio.Task[object]] = set()
        self._closed = False

    def reserve(self, invocation_id: str, caller: str | None) -> bool:
        """Before starting ``invocation_id``'s workflow: hold ``caller``'s share for its ``openRun``.
        False when a reservation for it exists already (a concurrent duplicate start)."""
        if invocation_id in self._reserved:
            return False
        self._take(caller)
        self._reserved[invocation_id] = (caller, None)
        return True

    def started(self, invocation_id: str) -> None:
        """The workflow started: an unclaimed reservation lapses after ``expire_s``."""
        entry = self._reserved.get(invocation_id)
        if entry is not None and entry[1] is None:
            timer = asyncio.get_running_loop().call_later(self._expire_s, self.cancel, invocation_id)
            self._reserved[invocation_id] = (entry[0], timer)

    def cancel(self, invocation_id: str) -> None:
        """Give back an unclaimed reservation (the start failed or was a duplicate, or it lapsed)."""
        entry = self._reserved.pop(invocation_id, None)
        if entry is not None:
            self._cancel_entry(entry)

    def _cancel_entry(self, entry: tuple[str | None, asyncio.TimerHandle | None]) -> None:
        if entry[1] is not None:
            entry[1].cancel()
        self._give_back(entry[0])

    @contextmanager
    def locating_input(self, invocation_id: str, caller: str | None) -> Iterator[None]:
        """Around an ``openRun``'s wait for its input: the reservation made here is claimed, else
        ``caller``'s share is checked (:class:`OverShare`) and taken."""
        entry = self._reserved.pop(invocation_id, None)
        if self._closed:
            if entry is not None:
                self._cancel_entry(entry)
            raise _shutting_down()
        if entry is not None:
            if entry[1] is not None:
                entry[1].cancel()
            caller = entry[0]
        else:
            try:
                self._admission.check_share(caller)
            except AgentWorkerError as exc:
                raise OverShare(exc.message, code=exc.code) from None
            self._take(caller)
        task = asyncio.current_task()
        if task is not None:
            self._waiting.add(task)
        try:
            yield
        except asyncio.CancelledError:
            if not (self._closed and task is not None and task.uncancel() == 0):
                raise
            # Our own cancel (cancel_waits): a refusal, so Temporal does not retry the step.
            raise _shutting_down() from None
        finally:
            if task is not None:
                self._waiting.discard(task)
            self._give_back(caller)

    @property
    def waiting(self) -> int:
        """``openRun`` steps here waiting for their input."""
        return len(self._waiting)

    def cancel_waits(self) -> int:
        """Refuse the ``openRun`` steps still waiting for their input, and any later one (the worker
        is past its drain bound, as a local run still looking for its input is cancelled then); how
        many were waiting."""
        self._closed = True
        waiting = list(self._waiting)
        for task in waiting:
            task.cancel()
        return len(waiting)

    def _take(self, caller: str | None) -> None:
        self._admission.take(caller)
        self.locating += 1

    def _give_back(self, caller: str | None) -> None:
        self._admission.give_back(caller)
        self.locating -= 1
