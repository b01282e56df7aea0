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

__all__ = ["CallerShares", "OverShare", "PendingInputs"]


class CallerShares(Protocol):
    """The worker's admission, as far as the share goes (``worker.admission.Admission``)."""

    def check_share(self, caller: str | None) -> None:
        """Raise (42910) when ``caller`` holds its share already."""

    def take(self, caller: str | None) -> None: ...

    def give_back(self, caller: str | None) -> None: ...


class OverShare(AgentWorkerError):
    """An ``openRun`` whose caller holds its share here already (42910): the invocation is refused."""

    code = 42910
    status_code = 429


class PendingInputs:
    def __init__(self, admission: CallerShares, expire_s: float) -> None:
        self._admission = admission
        self._expire_s = expire_s
        self._reserved: dict[str, tuple[str | None, asyncio.TimerHandle | None]] = {}
        self.locating = 0
        """Holds in place (reserved or in an ``openRun``): counted towards the worker's pending cap."""

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
            if entry[1] is not None:
                entry[1].cancel()
            self._give_back(entry[0])

    @contextmanager
    def locating_input(self, invocation_id: str, caller: str | None) -> Iterator[None]:
        """Around an ``openRun``'s wait for its input: the reservation made here is claimed, else
        ``caller``'s share is checked (:class:`OverShare`) and taken."""
        entry = self._reserved.pop(invocation_id, None)
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
        try:
            yield
        finally:
            self._give_back(caller)

    def _take(self, caller: str | None) -> None:
        self._admission.take(caller)
        self.locating += 1

    def _give_back(self, caller: str | None) -> None:
        self._admission.give_back(caller)
        self.locating -= 1
