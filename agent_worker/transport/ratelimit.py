"""A token bucket that keeps one Ably connection under its inbound message-rate limit.

Ably limits each connection to 50 inbound messages per second; a worker streaming several runs over
one connection would exceed it with one append per token. Every outbound operation of a connection
(publish, append, update, presence) takes a token first. Waiting here is what lets the stream
writer's coalescing buffer grow: while a stream waits for a token its deltas keep accumulating and
go out as one larger append, so text is never dropped or reordered, only batched.
"""

from __future__ import annotations

import asyncio
import math
import time

__all__ = ["RATE_TAU_S", "RateLimiter"]

RATE_TAU_S = 2.0


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
        self._rate = 0.0  # exponentially decaying event rate, time constant RATE_TAU_S
        self._rate_at = self._updated

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(float(self.burst), self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    def would_wait(self) -> bool:
        self._refill()
        return self._tokens < 1.0 or self._lock.locked()

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
            now = time.monotonic()
            self._rate = self.recent_rate(now) + 1.0 / RATE_TAU_S
            self._rate_at = now

    def recent_rate(self, now: float | None = None) -> float:
        """Messages per second over roughly the last ``RATE_TAU_S`` seconds (an exponentially
        weighted event rate: each message adds ``1/tau`` that decays with time constant tau)."""
        now = time.monotonic() if now is None else now
        return self._rate * math.exp(-max(0.0, now - self._rate_at) / RATE_TAU_S)
