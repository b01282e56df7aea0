"""A token bucket that keeps one Ably connection under its inbound message-rate limit.

Ably limits each connection to 50 inbound messages per second; a worker streaming several runs over
one connection would exceed it with one append per token. Every outbound operation of a connection
(publish, append, update, presence) takes a token first. Waiting here is what lets the stream
writer's coalescing buffer grow: while a stream waits for a token its deltas keep accumulating and
go out as one larger append, so text is never dropped or reordered, only batched.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

__all__ = ["RateLimiter"]


class RateLimiter:
    """FIFO token bucket: ``rate`` tokens per second, at most ``burst`` saved up."""

    def __init__(self, rate: float, burst: int = 10) -> None:
        if rate <= 0 or burst < 1:
            msg = "rate must be positive and burst at least 1"
            raise ValueError(msg)
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._updated = time.monotonic()
        self._lock = asyncio.Lock()
        self.waited = 0
        """How many acquisitions had to wait (observable in tests and metrics)."""
        self.sent = 0
        """Tokens taken so far (messages sent on the connection)."""
        self._recent: deque[float] = deque()  # send times within the last second

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(float(self.burst), self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    def available(self) -> float:
        """Tokens that could be taken now without waiting (0 while others are queued)."""
        self._refill()
        return 0.0 if self._lock.locked() else self._tokens

    def would_wait(self) -> bool:
        self._refill()
        return self._tokens < 1.0 or self._lock.locked()

    def try_acquire(self) -> bool:
        """Take a token only if one is free now and nobody is queued for one."""
        if self._lock.locked():
            return False
        self._refill()
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        self.sent += 1
        self._recent.append(self._updated)
        return True

    async def acquire(self) -> None:
        # The lock makes waiters queue in arrival order, so one busy stream cannot starve another.
        async with self._lock:
            self._refill()
            if self._tokens < 1.0:
                self.waited += 1
                await asyncio.sleep((1.0 - self._tokens) / self.rate)
                self._refill()
            self._tokens -= 1.0
            self.sent += 1
            self._recent.append(self._updated)

    def recent_rate(self, now: float | None = None) -> float:
        """Messages sent in the last second (what Ably's per-second limit sees)."""
        now = time.monotonic() if now is None else now
        recent = self._recent
        while recent and now - recent[0] > 1.0:
            recent.popleft()
        return float(len(recent))
