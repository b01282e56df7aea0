"""CPython's cyclic GC held off while a history page is decoded and folded.

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

__all__ = ["gc_paused"]


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
