"""The one retry helper: ``await call()`` again after failures a predicate accepts, with backoff.

Used for opening a provider stream (before the first token), for publishes the service refused
for rate, for the run-start publish and for history pages. No tenacity here on purpose: it wraps
every publish, and tenacity's per-call object graph (retry state, attempt managers) is cyclic
garbage the GC would have to collect each time.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["Wait", "backoff", "retry"]

T = TypeVar("T")

Wait = Callable[[int, BaseException], float]
"""Seconds to sleep after the n-th failure (1-based) with that exception."""


def backoff(initial: float = 0.2, max_wait: float = 2.0, jitter: float = 0.0) -> Wait:
    """``initial * 2**(n-1)`` capped at ``max_wait``, plus up to ``jitter`` seconds of noise."""

    def wait(failures: int, _exc: BaseException) -> float:
        base: float = min(max_wait, initial * 2.0 ** (failures - 1))
        return base + (random.uniform(0, jitter) if jitter else 0.0)

    return wait


async def retry(
    call: Callable[[], Awaitable[T]],
    *,
    attempts: int,
    retry_if: Callable[[BaseException], bool],
    wait: Wait | None = None,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
) -> T:
    """``await call()`` up to ``attempts`` times; re-raise the last failure, or the first one that
    ``retry_if`` rejects. ``on_retry(failures, exc, sleep_s)`` runs before each sleep (logging)."""
    schedule = wait or backoff()
    failures = 0
    while True:
        try:
            return await call()
        except Exception as exc:
            failures += 1
            if failures >= attempts or not retry_if(exc):
                raise
            delay = schedule(failures, exc)
            if on_retry is not None:
                on_retry(failures, exc, delay)
        await asyncio.sleep(delay)
