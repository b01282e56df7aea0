"""CPython's cyclic GC: tuned for long-lived processes (:func:`tune_gc`, the worker and the
standalone server), held off while a history page is decoded and folded (:class:`gc_paused`), and —
bounded — while a run start is latency-critical (:data:`starts`, a :class:`GcDeferral`: from the
invocation until its ``ai-run-start`` is handed to the socket and, for a long conversation, its
branch's older history pages are read).

Rebuilding a long session allocates ~30 containers per message (the page's dicts, an
``InboundMessage``, the tree's log entries and UIMessage parts), most of them kept: every 700 of them
start a young collection, every tenth of those a collection of the middle generation, and as the
tree grows, full collections walk every object in the process — other sessions' trees included. A
1,000-message session loaded into a worker that already holds a few hundred sessions spent
100-370 ms of its rebuild in the collector (the fold itself: ~100 ms). Decoding and folding are
plain loops that create no cyclic garbage of their own, so the collector is paused around each
slice of them (synchronous code only: never across an ``await``, so nothing else runs paused) and
the survivors are examined once, at the next collection after it, instead of over and over.
That next collection still fell inside the rebuild (at the first allocation after a slice), so
:data:`starts` keeps it off until the run start is sent: see :class:`GcDeferral`.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from types import TracebackType

__all__ = ["GC_THRESHOLDS", "GcDeferral", "GcHold", "gc_paused", "starts", "tune_gc"]


class gc_paused:
    """Disable the cyclic GC for a synchronous block; nests, and leaves a GC that someone else
    disabled (an embedding application) disabled."""

    __slots__ = ("_was_enabled",)

    def __enter__(self) -> None:
        self._was_enabled = gc.isenabled()
        if self._was_enabled:
            gc.disable()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._was_enabled:
            gc.enable()


GC_THRESHOLDS = (10_000, 5, 40)
"""CPython's defaults are (700, 10, 10). Streaming allocates per token (ably-python's Message, future,
timer task and frame; ours), so the default young generation is collected many times a second, each
time meeting the objects of every append still in flight and promoting them, which makes the older
generations due too: 12% of the worker's CPU went to the collector in the 100-stream benchmark. A
young generation of 10,000 is collected ~10x less often and promotes far less (4%); at most a few MB
of cyclic garbage wait for it.

The middle generation is collected after every 5th young collection (CPython: 10th; this worker had
20): such a collection walks everything that survived the young collections since the previous one,
so its pause grows with that count while the total work stays the same (each survivor is walked there
once, then promoted). A history rebuild leaves ~35,000 objects alive and runs 4-5 young collections:
after 20 of them the middle collection walked the last few rebuilds' trees at once, 150 ms of CPU
inside one rebuild (the full benchmark's second history session, load 5); after 5 it walks about one
rebuild's worth. The oldest generation is still considered every 200 young collections (5 x 40)."""


HOLD_MAX_S = 0.5
"""How long one hold episode may keep the collector off (see :class:`GcDeferral`)."""

HOLD_MAX_OBJECTS = 100_000
"""How many net new tracked objects (``gc.get_count()[0]``) a hold episode may let pile up: about
three rebuilds of a 1,000-message session, a few tens of MB at most."""

HOLD_MAX_HOLDERS = 4
"""More starts than this at once end the episode: a burst is many short starts, whose collections
are small, and holding the collector across 100 of them measured slower (see :class:`GcDeferral`)."""

_CHECK_EVERY_S = 0.05


class GcHold:
    """One holder's share of a :class:`GcDeferral`; :meth:`release` is idempotent (call it on every
    path: the deferral's bounds are a backstop, not the way a hold ends)."""

    __slots__ = ("_owner",)

    def __init__(self, owner: GcDeferral | None) -> None:
        self._owner = owner

    def release(self) -> None:
        owner, self._owner = self._owner, None
        if owner is not None:
            owner._release()

    def release_soon(self) -> None:
        """Release at the loop's next turn: after the caller's task has gone on to its next ``await``
        (say, the model's request written), so the due collection runs while it waits."""
        if self._owner is None:
            return
        try:
            asyncio.get_running_loop().call_soon(self.release)
        except RuntimeError:
            self.release()


class GcDeferral:
    """Keeps the cyclic GC off while starts are latency-critical (a POST until its ``ai-run-start``
    is handed to the socket and its branch read), bounded, so the collections they make due run after it.

    Why: :class:`gc_paused` pauses the collector around each decode/fold slice, but the allocation
    counts keep growing and the due collection fires at the first allocation after the slice —
    inside the rebuild. A 1,000-message rebuild makes ~3 young collections due, and with
    :data:`GC_THRESHOLDS` every second rebuild also a middle-generation one that walks both
    rebuilds' trees (53-114 ms of CPU on the bench machine, 20-30% of a rebuild's). Held, the
    rebuild runs no collection; at the release the young generation is collected once (the same
    objects, walked once instead of in three pieces), while the run waits for its model.

    Process-wide, so bounded: an episode starts when the first holder arrives and the collector is
    on; it ends when the last one leaves, or — however many starts keep arriving — after
    :data:`HOLD_MAX_S`, :data:`HOLD_MAX_OBJECTS` net new tracked objects or more than
    :data:`HOLD_MAX_HOLDERS` overlapping starts, whichever comes first (checked by a loop timer
    every 50 ms and at each hold and release); after that the collector stays on until the holders
    are gone. Holders are counted. A burst (100 simultaneous starts) is not held: its collections
    are small (~5% of its CPU) and holding them across it measured no better (the 100-start
    benchmark, docs/benchmarks.md). A collector that was off when an episode would start (an
    embedding application's choice, or a :class:`gc_paused` block) is left alone, and nothing is
    held; one turned off *during* an episode is turned back on at its end. Inactive until
    :func:`tune_gc` (the process's owner opts in)."""

    __slots__ = (
        "_clock",
        "_deadline",
        "_disabled",
        "_holders",
        "_timer",
        "active",
        "max_holders",
        "max_objects",
        "max_s",
    )

    def __init__(
        self,
        *,
        max_s: float = HOLD_MAX_S,
        max_objects: int = HOLD_MAX_OBJECTS,
        max_holders: int = HOLD_MAX_HOLDERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.active = False
        self.max_s = max_s
        self.max_objects = max_objects
        self.max_holders = max_holders
        self._clock = clock
        self._holders = 0
        self._disabled = False  # this episode turned the collector off (and must turn it back on)
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None

    @property
    def holding(self) -> bool:
        """The collector is off because of this deferral."""
        return self._disabled

    @property
    def holders(self) -> int:
        return self._holders

    def hold(self) -> GcHold:
        """A share of the deferral (a no-op one while inactive)."""
        if not self.active:
            return GcHold(None)
        self._holders += 1
        if self._holders == 1:
            if gc.isenabled() and gc.get_count()[0] < self.max_objects:
                gc.disable()
                self._disabled = True
                self._deadline = self._clock() + self.max_s
                self._arm()
        elif self._disabled:
            if self._holders > self.max_holders:
                self._resume()
            else:
                self.check()
        return GcHold(self)

    def check(self) -> None:
        """End the hold (collector back on) if it is past its time or allocation bound."""
        if self._disabled and (self._clock() >= self._deadline or gc.get_count()[0] >= self.max_objects):
            self._resume()

    def _release(self) -> None:
        self._holders -= 1
        if self._holders <= 0:
            self._holders = 0
            self._resume()
        elif self._disabled:
            self.check()

    def _resume(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._disabled:
            self._disabled = False
            gc.enable()

    def _arm(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop: the bounds are checked at each hold and release
        self._timer = loop.call_later(_CHECK_EVERY_S, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self.check()
        if self._disabled:
            self._arm()


starts = GcDeferral()
"""The process's deferral for run starts (``Worker`` holds it from an invocation until its run
start is sent); activated by :func:`tune_gc`."""


def tune_gc(thresholds: tuple[int, int, int] | None = GC_THRESHOLDS, *, defer_starts: bool = True) -> None:
    """Make CPython's cyclic GC cheap for a long-lived worker process; call once, after start-up.

    Why: streaming makes cyclic garbage at a high rate — ably-python arms a timeout ``Timer`` per
    published message and cancels it on the ACK, leaving a task/``CancelledError``/traceback/frame
    cycle behind each time — so full (gen-2) collections run every few seconds, and each one walks
    every tracked object in the process, the ~75k that importing aiohttp, ably-python and the
    providers left behind included. At 100 concurrent streams that is a 50-180 ms stop of the event
    loop, every stream's next token delayed at once (the p99 tail). ``gc.freeze()`` moves everything
    alive after start-up into the permanent generation, which collections never walk. The embedded
    server's process is long-lived too, and its channel logs only grow: a full collection of the
    bench server walked ~125k objects (81 ms) in one N-stream phase. It is a
    process-wide setting, so it belongs to whoever owns the process (``agent-worker run`` and
    ``agent-worker server`` call it; an application embedding ``Worker`` may too), not to ``Worker.start``.
    ``thresholds``: passed to ``gc.set_threshold`` (``None`` keeps the current ones; the default,
    :data:`GC_THRESHOLDS`, collects the young generation less often). ``defer_starts``: activate
    :data:`starts` (collections wait, bounded, until a run start is sent).
    """
    starts.active = defer_starts
    gc.collect()
    if thresholds is not None:
        gc.set_threshold(*thresholds)
    gc.freeze()
