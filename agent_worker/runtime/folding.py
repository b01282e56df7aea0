"""Folding a run of appends as one: the cheap path for the agent's own echoed token stream.

A session folds every message of its channel into its ConversationTree, including the echo of each
append the agent itself published — one decode-and-fold per token. Consecutive appends to one
message fold to exactly what one append with their data concatenated (and the last one's extras and
version serial) folds to — the equivalence Ably's own server-side rollup relies on — so the session
*defers* string appends per message serial and folds each run of them once: when any other message
arrives (order across messages is kept) or before anything reads the tree.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

from agent_worker.protocol.headers import H_EVENT_ID, H_RUN_ID, H_STATUS, H_STREAM
from agent_worker.protocol.wire import InboundMessage

__all__ = ["AppendDeferral", "OpenStreams"]


class AppendDeferral:
    """Appends held per message serial, oldest first; ``drain()`` returns them merged."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[InboundMessage, list[str], InboundMessage]] = {}

    def __len__(self) -> int:
        return len(self._held)

    def offer(self, msg: InboundMessage) -> bool:
        """Hold ``msg`` if it is a plain string append (``True``); else the caller folds it now."""
        if msg.action != "message.append" or not msg.serial or not isinstance(msg.data, str):
            return False
        if H_EVENT_ID in msg.transport_headers:  # may resolve a waiting trigger: fold at once
            return False
        held = self._held.get(msg.serial)
        if held is None:
            self._held[msg.serial] = (msg, [msg.data], msg)
        else:
            held[1].append(msg.data)
            self._held[msg.serial] = (held[0], held[1], msg)
        return True

    def drain(self) -> list[InboundMessage]:
        """The held appends, one merged message per serial, in the order each serial first came."""
        if not self._held:
            return []
        held, self._held = self._held, {}
        out = []
        for first, parts, last in held.values():
            if first is last:
                out.append(first)
            else:
                out.append(
                    dataclasses.replace(
                        first, data="".join(parts), extras=last.extras, version_serial=last.version_serial
                    )
                )
        return out


class OpenStreams:
    """Streamed messages whose status is still ``streaming``, by serial, with their opening publish:
    what a process that died mid-stream left open, for whoever ends that run to close (a durable
    engine's cleanup). History folds newest page first, so a stream's closing append can arrive
    before its opening: closed serials are remembered (bounded) too."""

    def __init__(self, limit: int = 10_000) -> None:
        self._open: OrderedDict[str, InboundMessage] = OrderedDict()
        self._closed: OrderedDict[str, None] = OrderedDict()
        self._limit = limit

    def observe(self, msg: InboundMessage) -> None:
        serial = msg.serial
        headers = msg.transport_headers
        if serial is None or headers.get(H_STREAM) != "true":
            return
        status = headers.get(H_STATUS)
        if status is not None and status != "streaming":
            self._open.pop(serial, None)
            self._closed[serial] = None
            if len(self._closed) > self._limit:
                self._closed.popitem(last=False)
        elif serial not in self._closed and (msg.action == "message.create" or serial not in self._open):
            # Live: the create, then appends; history: one entry, the latest version rolled up.
            self._open[serial] = msg
            if len(self._open) > self._limit:
                self._open.popitem(last=False)

    def of_run(self, run_id: str) -> list[InboundMessage]:
        """The opening messages of the run's streams still open."""
        return [m for m in self._open.values() if m.transport_headers.get(H_RUN_ID) == run_id]
