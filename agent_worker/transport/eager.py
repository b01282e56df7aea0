"""A task whose first step runs at once, in the caller's turn (what Python 3.12's ``eager_start`` does).

``asyncio.create_task`` runs a new task's first step on the loop's next iteration, after everything
else already queued for this one. For a pipelined append that first step is the send (msgSerial,
frame written to the socket), so each token left the worker one iteration after the model yielded
it, and when the loop had fallen behind (a burst of due timers: many streams' tokens handled in one
iteration) every append of the burst waited for the whole burst; ably-js writes each frame in the
tick that made it. :func:`eager_task` steps the coroutine synchronously up to its first suspension
(the ACK wait, once the frame is written) and hands the suspended coroutine to an ordinary task,
through the coroutine protocol only (``send``/``throw``/``close``): the task first waits for what
that step yielded, exactly as if it had taken the step itself.

The first step runs in the caller's task (``asyncio.current_task()`` is the caller's there, ``None``
from a loop callback; Python 3.12's eager tasks swap it, which needs asyncio's private hooks), so it
must not reach anything bound to the current task — ``asyncio.timeout``, ``wait_for`` (on 3.12+),
``TaskGroup`` — or the deadline would cancel the caller: use it for a coroutine whose first step
is plain synchronous work up to an await on a future, as an append's send is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

__all__ = ["eager_task"]

T = TypeVar("T")


class _Started(Coroutine[Any, Any, T]):
    """A coroutine already stepped once: the task's first ``send`` gets what that step yielded."""

    __slots__ = ("_coro", "_first", "_fresh")

    def __init__(self, coro: Coroutine[Any, Any, T], first: Any) -> None:
        self._coro = coro
        self._first = first
        self._fresh = True

    def send(self, value: Any) -> Any:
        if self._fresh:
            self._fresh = False
            first, self._first = self._first, None
            return first
        return self._coro.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        # A task cancelled before its first step throws here: into the suspended coroutine, which
        # is where a task that had taken the step itself would get it.
        self._fresh = False
        self._first = None
        if val is None and tb is None:
            return self._coro.throw(typ)
        return self._coro.throw(typ, val, tb)  # pragma: no cover - asyncio throws one argument

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, Any, T]:  # pragma: no cover - only a task drives it
        value: Any = self.send(None)
        while True:
            try:
                sent = yield value
            except BaseException as exc:
                try:
                    value = self.throw(exc)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]
            else:
                try:
                    value = self.send(sent)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]


async def _returned(value: T) -> T:
    return value


async def _raised(exc: BaseException) -> Any:
    raise exc


def eager_task(coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """``asyncio.create_task(coro)`` with its first step already taken, now (see the module doc).

    What that step raises is the task's outcome (a ``CancelledError``: the task ends cancelled),
    except ``KeyboardInterrupt``/``SystemExit``, which propagate as from any callback."""
    try:
        first = coro.send(None)
    except StopIteration as stop:
        return asyncio.create_task(_returned(stop.value))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        return asyncio.create_task(_raised(exc))
    return asyncio.create_task(_Started(coro, first))
