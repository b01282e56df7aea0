"""Keeps one Ably connection under its inbound message-rate limit: a token bucket with a deep burst,
capped by a count of messages in any sliding second.

Ably limits each connection to 50 inbound messages per second (NACK 42911) and counts it as a rate
per second (its FAQ: "the current rate of the operation per second", rejection "on a rolling
probabilistic basis" from "a moving average of the current attempted publish rate"; a breach blocks
"new published messages for that second"). A worker streaming several runs over one connection would
exceed it with one append per token. Every outbound operation of a connection (publish, append,
update, presence) takes a token first. Waiting here is what lets the stream writer's coalescing
buffer grow: while a stream waits for a token its deltas keep accumulating and go out as one larger
append, so text is never dropped or reordered, only batched.

The shape. Two rules, both must allow a send:

* *At most ``per_second`` messages in any sliding second* (default: ``rate``, 45): what any count
  "per second" sees — a clock second, a sliding one, or an average over a second or more — stays
  under Ably's 50. A plain bucket cannot say this: ``rate`` per second plus a burst of ``burst``
  lets ``burst + rate`` through in one second.
* *A token bucket*, ``rate`` tokens per second, at most ``burst`` saved up: a connection that was
  quiet can send ``burst`` messages at once (a burst of starts: each sends six before its first
  text), and one that stays busy is paced evenly at ``rate``. The bucket never holds more than the
  window has room for (at least one): while the window is full the bucket does not fill, so a
  saturated connection keeps its even pacing instead of sending a clump each time the burst of a
  second ago leaves the window.

Two classes of waiter, one rate. A *deferrable* token is one whose wait costs no message: the next
append of a stream that has already shown text (its deltas keep merging while it waits, so a later
grant sends the same text in the same number of messages or fewer). Every other operation — a run's
lifecycle, the opening chunks, a stream's create and its first append, closes, updates, presence —
is *urgent* and goes before deferrable waiters, so a start sharing a connection with running streams
reaches its first text sooner. Within each class waiters are served in arrival order, and a
deferrable waiter passed over for ``max_defer_s`` counts as urgent from then on (in its arrival
order), so no stream is starved. The rate, the burst and the window are the same for both classes.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

__all__ = ["RateLimiter"]

MAX_DEFER_S = 0.1
"""How long a deferrable waiter can be passed over by urgent ones (then it is served in arrival order)."""

WINDOW_S = 1.0
"""The sliding window ``per_second`` counts over."""


@dataclass(slots=True)
class _Waiter:
    since: float
    future: asyncio.Future[None] = field(repr=False)
    task: asyncio.Task[object] | None = field(default=None, repr=False)


class RateLimiter:
    """At most ``per_second`` messages in any sliding ``window_s`` (a second), paced by a token
    bucket of ``rate`` tokens per second with at most ``burst`` saved up; waiters in arrival order,
    urgent ones before deferrable ones (for at most ``max_defer_s``, see the module doc)."""

    def __init__(
        self,
        rate: float,
        burst: int = 10,
        *,
        per_second: int | None = None,
        max_defer_s: float = MAX_DEFER_S,
        window_s: float = WINDOW_S,
    ) -> None:
        if rate <= 0 or window_s <= 0 or burst < 1 or (per_second is not None and per_second < 1):
            msg = "rate and window_s must be positive, burst and per_second at least 1"
            raise ValueError(msg)
        if max_defer_s < 0:
            msg = "max_defer_s must not be negative"
            raise ValueError(msg)
        self.rate = rate
        self.burst = burst
        self.per_second = max(1, int(rate * window_s)) if per_second is None else per_second
        """At most this many sends in any ``window_s`` (Ably's window is a second)."""
        self.window_s = window_s
        self.max_defer_s = max_defer_s
        self._tokens = float(min(burst, self.per_second))
        self._updated = time.monotonic()
        self._urgent: deque[_Waiter] = deque()
        self._deferred: deque[_Waiter] = deque()
        self._wake: asyncio.TimerHandle | None = None
        self.waited = 0
        """How many acquisitions had to wait (observable in tests and metrics)."""
        self.sent = 0
        """Tokens taken so far (messages sent on the connection)."""
        self.overtaken = 0
        """Urgent grants made while a deferrable waiter was queued (observable in tests and traces)."""
        self._recent: deque[float] = deque()  # send times within the window, oldest first
        self._in_flight = 0  # granted, and their tasks not yet resumed to send (count in the window)

    def _cap(self, in_window: int) -> float:
        """The most the bucket may hold with ``in_window`` sends in the window: its depth, and no
        more than the window has room for — but at least one, so a full window does not also
        cost a refill once a send leaves it."""
        return min(float(self.burst), max(1.0, float(self.per_second - in_window)))

    def _refill(self) -> None:
        """Refill for the time since the last update, piece by piece between the moments sends left
        the window: while the window is full the bucket stays at (at most) one token."""
        now = time.monotonic()
        recent = self._recent
        tokens = self._tokens
        at = self._updated
        rate = self.rate
        horizon = now - self.window_s
        while recent and recent[0] < horizon:  # left the window at recent[0] + window_s
            left = recent[0] + self.window_s
            if left > at:
                tokens = min(self._cap(len(recent) + self._in_flight), tokens + (left - at) * rate)
                at = left
            recent.popleft()
        self._tokens = min(self._cap(len(recent) + self._in_flight), tokens + (now - at) * rate)
        self._updated = now

    def _in_window(self) -> int:
        return len(self._recent) + self._in_flight

    def _ready(self) -> bool:
        return self._tokens >= 1.0 and len(self._recent) + self._in_flight < self.per_second

    def _queued(self) -> bool:
        return bool(self._urgent or self._deferred)

    def available(self) -> float:
        """Tokens that could be taken now without waiting (0 while others are queued)."""
        self._refill()
        if self._queued():
            return 0.0
        return max(0.0, min(self._tokens, float(self.per_second - self._in_window())))

    def would_wait(self) -> bool:
        self._refill()
        return not self._ready() or self._queued()

    def _take(self) -> None:
        """Grant a token; the send counts in the window from now, and is stamped (``_stamp``) when
        its task resumes to send it."""
        self._tokens -= 1.0
        self.sent += 1
        self._in_flight += 1

    def _stamp(self, now: float) -> None:
        """The granted send goes out now: it leaves the window one ``window_s`` from now. A waiter
        granted while the loop is busy resumes later than its grant; stamping the grant time would
        let the sends that leave the worker in one second exceed ``per_second``."""
        self._in_flight -= 1
        self._recent.append(now)

    def _give_back(self) -> None:
        self._refill()
        self.sent -= 1
        self._in_flight -= 1
        self._tokens = min(self._cap(self._in_window()), self._tokens + 1.0)

    def try_acquire(self) -> bool:
        """Take a token only if one is free now and nobody is queued for one."""
        if self._queued():
            return False
        self._refill()
        if not self._ready():
            return False
        self._take()
        self._stamp(self._updated)
        return True

    async def acquire(self, *, defer: bool = False) -> None:
        """Take one token, waiting for it if none is free or others are queued. ``defer``: this
        token's wait costs no message (a running stream's next append), so urgent waiters that
        come later may go first, for at most ``max_defer_s``."""
        if not self._queued():
            self._refill()
            if self._ready():
                self._take()
                self._stamp(self._updated)
                return
        self.waited += 1
        waiter = _Waiter(time.monotonic(), asyncio.get_running_loop().create_future(), asyncio.current_task())
        (self._deferred if defer else self._urgent).append(waiter)
        if self._wake is None:  # else the pending wake-up serves it, in its turn
            self._schedule()
        try:
            await waiter.future
        except asyncio.CancelledError:
            if waiter.future.cancelled() or not waiter.future.done():
                self._remove(waiter)  # a pending wake-up finds the queue shorter, or empty
            else:  # granted, then cancelled before it could use the token: give it back
                self._give_back()
                self._schedule()
            raise
        self._stamp(time.monotonic())

    def promote(self, task: asyncio.Task[object]) -> None:
        """``task``'s deferrable waiters are urgent from now on (in their arrival order): what they
        send has become what an urgent operation waits for (a stream's create behind its opening
        batch)."""
        moving = [w for w in self._deferred if w.task is task]
        if not moving:
            return
        for waiter in moving:
            self._deferred.remove(waiter)
        self._urgent = deque(sorted([*self._urgent, *moving], key=lambda w: w.since))

    def _remove(self, waiter: _Waiter) -> None:
        for queue in (self._urgent, self._deferred):
            try:
                queue.remove(waiter)
            except ValueError:
                continue
            return

    def _next(self, now: float) -> _Waiter:
        """The waiter served next: the oldest urgent one, unless the oldest deferrable one has been
        passed over for ``max_defer_s`` and came first (then it is served as the urgent would be)."""
        urgent, deferred = self._urgent, self._deferred
        if not deferred:
            return urgent.popleft()
        if not urgent:
            return deferred.popleft()
        head = deferred[0]
        if now - head.since >= self.max_defer_s and head.since <= urgent[0].since:
            return deferred.popleft()
        self.overtaken += 1
        return urgent.popleft()

    def _schedule(self) -> None:
        """Serve queued waiters while tokens are free; then wake when the next token is."""
        if self._wake is not None:
            self._wake.cancel()
            self._wake = None
        self._refill()
        while self._queued() and self._ready():
            waiter = self._next(self._updated)
            if waiter.future.done():  # cancelled: its task removes nothing more
                continue
            self._take()
            waiter.future.set_result(None)
        if self._queued():
            delay = max(0.0, (1.0 - self._tokens) / self.rate)
            over = self._in_window() - self.per_second
            if over >= 0:  # the window is full until its (over + 1)-th oldest send leaves it
                recent = self._recent
                left = recent[over] + self.window_s - self._updated if over < len(recent) else self.window_s
                delay = max(delay, left + 1e-4)
            self._wake = asyncio.get_running_loop().call_later(delay, self._serve)

    def _serve(self) -> None:
        self._wake = None
        self._schedule()

    def recent_rate(self, now: float | None = None) -> float:
        """Messages sent in the last second (what Ably's per-second limit sees); ``now`` on the
        limiter's clock (``time.monotonic``), at or after its last update."""
        self._refill()
        recent = self._recent
        if now is None or now <= self._updated:
            return float(len(recent) + self._in_flight)
        horizon = now - self.window_s
        return float(sum(1 for t in recent if t >= horizon) + self._in_flight)
