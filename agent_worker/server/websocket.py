"""One WebSocket's outbound side: an ordered, byte-bounded queue drained by a writer task.

A :class:`Transport` is one socket of a :class:`~agent_worker.server.connection.RealtimeConnection`
(the connection outlives it for resume); a slow reader is disconnected, not buffered without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from typing import cast

import structlog
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from agent_worker.server import wsframes

__all__ = ["Transport"]

log = structlog.get_logger(__name__)

_MAX_QUEUE = 50_000
_HIGH_WATER = 1 << 16  # bytes unsent in the socket's buffer before the writer waits for the client


class Transport:
    """One WebSocket with an ordered outbound queue drained by a writer task.

    The writer sends everything queued since its last turn as one socket write (``wsframes``):
    a loop turn that fans out or acknowledges ten frames to a connection costs one syscall, not
    ten. The queue is bounded in bytes (``max_bytes``): a consumer that falls that far behind is a
    slow consumer, and ``on_overflow`` disconnects it (as Ably does) instead of letting it hold the
    server's memory."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        raw: asyncio.BaseTransport | None,
        max_bytes: int = 1 << 62,
        writer: AbstractStreamWriter | None = None,
        close_timeout_s: float = 5.0,
    ) -> None:
        """``writer``: what ``ws.prepare()`` returned; its ``drain()`` waits for the socket's buffer
        to go below the low-water mark (the transport's ``resume_writing``). ``close_timeout_s``:
        how long a close may take to flush its last frames and handshake before the socket is
        dropped."""
        self.ws = ws
        self.raw = raw
        self._drain = writer.drain if writer is not None else None
        if raw is not None and writer is not None:
            # The transport pauses its protocol above this many bytes unsent (and resumes below a
            # quarter of it): the writer waits for that instead of polling the buffer's size.
            cast("asyncio.WriteTransport", raw).set_write_buffer_limits(high=_HIGH_WATER)
        self.closing = False
        self.max_bytes = max_bytes
        self.queued_bytes = 0
        self.on_overflow: Callable[[], None] | None = None
        self.close_timeout_s = close_timeout_s
        self._close_deadline: asyncio.TimerHandle | None = None
        self._close_reason = ""
        self._queue: deque[str | bytes | None] = deque()
        self._ready = asyncio.Event()
        self._writer = asyncio.get_running_loop().create_task(self._write())

    def enqueue(self, data: str | bytes) -> None:
        if self.closing:
            return
        if len(self._queue) > _MAX_QUEUE or self.queued_bytes + len(data) > self.max_bytes:
            log.warning("slow_consumer_dropped", queued=len(self._queue), queued_bytes=self.queued_bytes)
            if self.on_overflow is not None:
                self.on_overflow()
            else:
                self.abort()
            return
        self.queued_bytes += len(data)
        self._queue.append(data)
        self._ready.set()

    def overflow(self, last: str | bytes) -> None:
        """Drop everything queued, send ``last`` (the DISCONNECTED error), then close."""
        self._queue.clear()
        self.queued_bytes = len(last)
        self._queue.append(last)
        self._ready.set()
        self.close_soon("slow_consumer")

    async def _write(self) -> None:
        queue = self._queue
        while True:
            if not queue:
                self._ready.clear()
                await self._ready.wait()
                continue
            batch: list[str | bytes] = []
            close = False
            while queue:
                data = queue.popleft()
                if data is None:
                    close = True
                    break
                self.queued_bytes -= len(data)
                batch.append(data)
            try:
                await self._send(batch)
            except (ConnectionError, RuntimeError, asyncio.CancelledError):
                self.abort()
                return
            if close:
                break
        with contextlib.suppress(Exception):
            await self.ws.close()
        if self._buffered() == 0:  # else the socket's graceful close still waits on the client
            self._cancel_deadline()

    async def _send(self, batch: list[str | bytes]) -> None:
        # A write transport (uvloop's does not subclass asyncio's, hence the cast).
        raw = cast("asyncio.WriteTransport | None", self.raw)
        if raw is None or self.ws.compress or self._drain is None:  # aiohttp frames (and drains) each
            for data in batch:
                if isinstance(data, bytes):
                    await self.ws.send_bytes(data)
                else:
                    await self.ws.send_str(data)
            return
        if raw.is_closing():
            msg = "websocket transport closing"
            raise ConnectionResetError(msg)
        raw.write(wsframes.frames(batch))
        # A client that does not read: later frames wait in the queue, where ``max_bytes`` counts
        # them, not in the socket's buffer (aiohttp's writer drains at the same 64 KiB). Woken by
        # the transport's resume_writing (or its loss, which raises), not polled.
        await self._drain()

    def close_soon(self, reason: str = "close") -> None:
        """Flush what is queued, then close the socket cleanly — within ``close_timeout_s``: the
        last frames (80020's DISCONNECTED among them) wait behind everything the client has not
        read, so a client that stopped reading would otherwise hold the socket and its unsent bytes
        for ever. Past the bound the socket is dropped (:meth:`abort`)."""
        if not self.closing:
            self.closing = True
            self._close_reason = reason
            self._queue.append(None)
            self._ready.set()
            if not self._writer.done():
                loop = asyncio.get_running_loop()
                self._close_deadline = loop.call_later(self.close_timeout_s, self._close_expired)

    def _close_expired(self) -> None:
        self._close_deadline = None
        if self._writer.done() and self._buffered() == 0:
            return
        log.warning(
            "socket_close_timed_out",
            reason=self._close_reason,
            timeout_s=self.close_timeout_s,
            unsent_bytes=self.queued_bytes + self._buffered(),
        )
        self.abort()

    def _buffered(self) -> int:
        """Bytes the socket still holds unsent (a graceful close waits for them: for ever, if the
        client does not read)."""
        raw = cast("asyncio.WriteTransport | None", self.raw)
        return raw.get_write_buffer_size() if raw is not None else 0

    def _cancel_deadline(self) -> None:
        if self._close_deadline is not None:
            self._close_deadline.cancel()
            self._close_deadline = None

    def abort(self) -> None:
        """Drop the TCP connection without a close handshake (clients see an abrupt disconnect)."""
        self.closing = True
        self._cancel_deadline()
        self._writer.cancel()
        if self.raw is not None:
            self.raw.abort()  # type: ignore[attr-defined]
        else:  # pragma: no cover - aiohttp always exposes the transport
            asyncio.get_running_loop().create_task(self.ws.close())

    async def wait_closed(self) -> None:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._writer
