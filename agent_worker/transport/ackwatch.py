"""One ACK deadline timer per channel for its pipelined appends (see ``Channel.start_append``).

An ``asyncio.timeout`` per append costs a timeout object and a timer handle scheduled, rescheduled
and cancelled for every token; the appends of one channel are sent (and, almost always, ACKed) in
order with the same timeout, so their deadlines are in order too: one queue and one timer armed for
the oldest deadline do the same job. Done appends leave the queue's head as new ones join."""

from __future__ import annotations

import asyncio
import collections
import weakref
from typing import Any

__all__ = ["AckWatch"]


class AckWatch:
    """Cancels a watched task still running ``timeout_s`` after :meth:`watch`; the task turns that
    cancellation into ``TimeoutError`` with :meth:`timed_out` (as ``asyncio.timeout`` does). The
    timer follows the oldest deadline, so a task watched with a shorter timeout than the one before
    it expires no earlier than that one."""

    __slots__ = ("_expired", "_handle", "_queue")

    def __init__(self) -> None:
        self._queue: collections.deque[tuple[float, asyncio.Task[Any]]] = collections.deque()
        self._expired: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
        self._handle: asyncio.TimerHandle | None = None

    def watch(self, task: asyncio.Task[Any], timeout_s: float) -> None:
        queue = self._queue
        while queue and queue[0][1].done():
            queue.popleft()
        loop = asyncio.get_running_loop()
        queue.append((loop.time() + timeout_s, task))
        if self._handle is None:
            self._handle = loop.call_at(queue[0][0], self._check)

    def timed_out(self, task: asyncio.Task[Any]) -> bool:
        """Call on ``CancelledError``: ``True`` when this watch cancelled ``task`` (and nothing
        else did), then raise ``TimeoutError`` instead."""
        if task not in self._expired:
            return False
        self._expired.discard(task)
        return task.uncancel() == 0

    def _check(self) -> None:
        self._handle = None
        queue = self._queue
        now = asyncio.get_running_loop().time()
        while queue and (queue[0][1].done() or queue[0][0] <= now):
            _, task = queue.popleft()
            if not task.done():
                self._expired.add(task)
                task.cancel()
        if queue:
            self._handle = asyncio.get_running_loop().call_at(queue[0][0], self._check)
