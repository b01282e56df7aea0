"""The start gate: at most ``K`` invocations between their POST and their run's handler.

A burst of simultaneous starts on one event loop is served by processor sharing: each start's
steps (its channel's attach, the history page holding its trigger, its ``ai-run-start``) queue
behind every other start's, so the median start reaches its model call near the end of the whole
burst's work. The gate serves starts in arrival order instead, ``K`` at a time (``[worker]
start_concurrency``; 0, the default, is no gate): the rest wait in line, and the earlier starts
reach their model call, whose wait then overlaps the later starts' work.

A start holds its place (its :class:`Lease`) only while it works towards its handler. It gives it
back — to the oldest start in line — when

* its handler is called (so the place is never held across the model call: on real Ably that is a
  network round trip, as are the first history page and the attach, which is why ``K`` should
  cover a start's round trips as well as its CPU);
* it has to wait for something that is not the loop's CPU: a run slot (``max_concurrent_runs``),
  or a realtime connection to open (the connection pool's placement wait) — :func:`yield_place`;
* it ends in any way (refused, cancelled, failed, its run over);
* :data:`LAPSE_S` after it was granted at the latest (a start that waits for a trigger published
  late, say, goes on ungated rather than holding a place for seconds).

The place travels with the invocation's context (:mod:`contextvars`): the run task created for
it inherits it, so whichever step of the start is waiting can give it back without being told.
While queued an invocation counts as pending (admission's capacity), a duplicate waits for it as
for any invocation in flight, a cancelled one leaves the line, and at shutdown the line is refused
(:meth:`StartGate.close`).

Off by default: measured on an idle machine (docs/benchmarks.md, eleventh round) no K made the
median first token of a 100-start burst faster in most pairs (K = 32: 9 of 19). A start's steps
are round trips with ~1.4 ms of the worker's CPU before its model call; ungated, the loop runs
other starts' steps while one waits, and a gate that holds places across those round trips
throttles exactly that overlap.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections import deque
from collections.abc import Callable

__all__ = ["LAPSE_S", "UNGATED", "Lease", "StartGate", "current_lease", "unbind", "yield_place"]

#: The longest a start holds its place (seconds) before it goes on ungated.
LAPSE_S = 1.0

_lease: contextvars.ContextVar[Lease | None] = contextvars.ContextVar("agent_worker_start", default=None)


class Lease:
    """One start's place in the gate; :meth:`release` (idempotent) hands it to the next in line."""

    __slots__ = ("_gate", "_timer", "released")

    def __init__(self, gate: StartGate | None) -> None:
        self._gate = gate
        self._timer: asyncio.TimerHandle | None = None
        self.released = gate is None

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        gate = self._gate
        if gate is not None:
            gate._give_back()

    def bind(self) -> contextvars.Token[Lease | None]:
        """Make this the current context's lease (tasks created from here on inherit it); undo with
        :func:`unbind`."""
        return _lease.set(self)


#: A lease for an ungated start (nothing to give back).
UNGATED = Lease(None)


def unbind(token: contextvars.Token[Lease | None]) -> None:
    _lease.reset(token)


def current_lease() -> Lease | None:
    return _lease.get()


def yield_place() -> None:
    """The current start is about to wait for something other than the loop (a run slot, a
    connection to open): give its place in the gate back. A no-op outside a gated start."""
    lease = _lease.get()
    if lease is not None:
        lease.release()


class StartGate:
    """Admits at most ``limit`` holders at once, the others first come, first served."""

    def __init__(self, limit: int, *, lapse_s: float = LAPSE_S) -> None:
        if limit < 1:
            msg = "a start gate admits at least one start (0 means no gate: do not build one)"
            raise ValueError(msg)
        self.limit = limit
        self.lapse_s = lapse_s
        self.held = 0
        """Places taken (granted leases not yet released)."""
        self._line: deque[asyncio.Future[Lease]] = deque()
        self._closed: Callable[[], BaseException] | None = None
        self.granted = 0
        self.queued_total = 0
        """Starts that had to wait in line (since the gate was built)."""

    @property
    def waiting(self) -> int:
        return sum(1 for f in self._line if not f.done())

    def _grant(self) -> Lease:
        self.held += 1
        self.granted += 1
        lease = Lease(self)
        lease._timer = asyncio.get_running_loop().call_later(self.lapse_s, lease.release)
        return lease

    async def acquire(self) -> Lease:
        """A place: at once while fewer than ``limit`` are held and nobody is in line, else once the
        starts ahead have given theirs back. Raises what :meth:`close` was given once closed."""
        if self._closed is not None:
            raise self._closed()
        if self.held < self.limit and not self._line:
            return self._grant()
        waiter: asyncio.Future[Lease] = asyncio.get_running_loop().create_future()
        self._line.append(waiter)
        self.queued_total += 1
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                waiter.result().release()  # granted as it was cancelled: pass the place on
            else:
                with contextlib.suppress(ValueError):
                    self._line.remove(waiter)
            raise

    def _give_back(self) -> None:
        self.held -= 1
        line = self._line
        while line and self.held < self.limit:
            waiter = line.popleft()
            if not waiter.done():
                waiter.set_result(self._grant())

    def close(self, error: Callable[[], BaseException]) -> None:
        """Refuse the starts in line (and any later :meth:`acquire`) with ``error()``; places held
        stay held until their starts give them back."""
        self._closed = error
        line, self._line = self._line, deque()
        for waiter in line:
            if not waiter.done():
                waiter.set_exception(error())
