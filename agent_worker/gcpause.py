"""CPython's cyclic GC: tuned for long-lived processes (:func:`tune_gc`, the worker and the
standalone server), and held off while a history page is decoded and folded (:class:`gc_paused`).

Rebuilding a long session allocates ~30 containers per message (the page's dicts, an
``InboundMessage``, the tree's log entries and UIMessage parts), most of them kept: every 700 of them
start a young collection, every tenth of those a collection of the middle generation, and as the
tree grows, full collections walk every object in the process — other sessions' trees included. A
1,000-message session loaded into a worker that already holds a few hundred sessions spent
100-370 ms of its rebuild in the collector (the fold itself: ~100 ms). Decoding and folding are
plain loops that create no cyclic garbage of their own, so the collector is paused around each
slice of them (synchronous code only: never across an ``await``, so nothing else runs paused) and
the survivors are examined once, at the next collection after it, instead of over and over.
"""

from __future__ import annotations

import gc
from types import TracebackType

__all__ = ["GC_THRESHOLDS", "gc_paused", "tune_gc"]


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


def tune_gc(thresholds: tuple[int, int, int] | None = GC_THRESHOLDS) -> None:
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
    :data:`GC_THRESHOLDS`, collects the young generation less often).
    """
    gc.collect()
    if thresholds is not None:
        gc.set_threshold(*thresholds)
    gc.freeze()
