"""A token bucket that keeps one Ably connection under its inbound message-rate limit.

Ably limits each connection to 50 inbound messages per second; a worker streaming several runs over
one connection would exceed it with one append per token. Every outbound operation of a connection
(publish, append, update, presence) takes a token first. Waiting here is what lets the stream
writer's coalescing buffer grow: while a stream waits for a token its deltas keep accumulating and
go out as one larger append, so text is never dropped or reordered, only batched.

Two classes of waiter, one rate. A *deferrable* token is one whose wait costs no message: the next
append of a stream that has already shown text (its deltas keep merging while it waits, so a later
grant sends the same text in the same number of messages or fewer). Every other operation — a run's
lifecycle, the opening chunks, a stream's create and its first append, closes, updates, presence —
is *urgent* and goes before deferrable waiters, so a start sharing a connection with running streams
reaches its first text sooner. Within each class waiters are served in arrival order, and a
deferrable waiter passed over for ``max_defer_s`` counts as urgent from then on (in its arrival
order), so no stream is starved. The rate and the burst are the same for both classes.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

__all__ = ["RateLimiter"]

MAX_DEFER_S = 0.1
"""How long a deferrable waiter can be passed over by urgent ones (then it is served in arrival order)."""


@dataclass(slots=True)
class _Waiter:
    since: float
    future: asyncio.Future[None] = field(repr=False)
    task: asyncio.Task[object] | None = field(default=None, repr=False)


class RateLimiter:
    """Token bucket: ``rate`` tokens per second, at most ``burst`` saved up; waiters in arrival
    order, urgent ones before deferrable ones (for at most ``max_defer_s``, see the module doc)."""

    def __init__(self, rate: float, burst: int = 10, *, max_defer_s: float = MAX_DEFER_S) -> None:
        if rate <= 0 or burst < 1 or max_defer_s < 0:
            msg = "rate must be positive, burst at least 1 and max_defer_s not negative"
            raise ValueError(msg)
        self.rate = rate
        self.burst = burst
        self.max_defer_s = max_defer_s
        self._tokens = float(burst)
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
        self._recent: deque[float] = deque()  # send times within the last second

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(float(self.burst), self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    def _queued(self) -> bool:
        return bool(self._urgent or self._deferred)

    def available(self) -> float:
        """Tokens that could be taken now without waiting (0 while others are queued)."""
        self._refill()
        return 0.0 if self._queued() else self._tokens

    def would_wait(self) -> bool:
        self._refill()
        return self._tokens < 1.0 or self._queued()

    def _take(self) -> None:
        self._tokens -= 1.0
        self.sent += 1
        self._recent.append(self._updated)

    def _give_back(self) -> None:
        self._refill()
        self._tokens = min(float(self.burst), self._tokens + 1.0)
        self.sent -= 1
        if self._recent:
            self._recent.pop()

    def try_acquire(self) -> bool:
        """Take a token only if one is free now and nobody is queued for one."""
        if self._queued():
            return False
        self._refill()
        if self._tokens < 1.0:
            return False
        self._take()
        return True

    async def acquire(self, *, defer: bool = False) -> None:
        """Take one token, waiting for it if none is free or others are queued. ``defer``: this
        token's wait costs no message (a running stream's next append), so urgent waiters that
        come later may go first, for at most ``max_defer_s``."""
        if not self._queued():
            self._refill()
            if self._tokens >= 1.0:
                self._take()
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
        while self._queued() and self._tokens >= 1.0:
            waiter = self._next(self._updated)
            if waiter.future.done():  # cancelled: its task removes nothing more
                continue
            self._take()
            waiter.future.set_result(None)
        if self._queued():
            delay = (1.0 - self._tokens) / self.rate
            self._wake = asyncio.get_running_loop().call_later(delay, self._serve)

    def _serve(self) -> None:
        self._wake = None
        self._schedule()

    def recent_rate(self, now: float | None = None) -> float:
        """Messages sent in the last second (what Ably's per-second limit sees)."""
        now = time.monotonic() if now is None else now
        recent = self._recent
        while recent and now - recent[0] > 1.0:
            recent.popleft()
        return float(len(recent))
