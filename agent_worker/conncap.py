"""A bound on the connections one aiohttp listener holds at once (the embedded server's port, the
worker's invocation port).

Why: aiohttp accepts every connection the kernel hands it, bounded only by the process's file
descriptor limit, so a stranger who can reach the port can hold sockets (and their buffers) without
bound — idle, or sending a byte now and then — until the idle timeout closes each. Here each
listener counts the connections it serves; over ``limit`` a new one is answered at once with a
canned ``503`` and an Ably-style error body (**50300**, ``Retry-After: 1``; a realtime client sees a
failed WebSocket upgrade and retries as for any connection failure) and closed, while the
connections already in are served as before. Refusals are logged once per burst, not per
connection: the burst ends when the count falls back to 90 % of the limit.

The count is kept by a thin protocol around aiohttp's own :class:`~aiohttp.web.RequestHandler` that
sees only ``connection_made`` / ``connection_lost`` (and, with a write bound, flow control); the
hot callback (``data_received``) is the handler's own bound method, so nothing is added per read.

A bound on writes too (``write_timeout_s``): aiohttp has no write timeout, so a client that sends a
request and never reads the answer held its handler — parked in ``drain()`` behind the socket's
full buffer — and the bytes buffered for it for ever; and once a handler had finished, a graceful
close still waited for ever behind the bytes the client never read. Here a connection whose
transport stays paused (its buffer over the high-water mark) for ``write_timeout_s``, or that is
closing with bytes unsent, and drains less than :data:`MIN_PROGRESS_BYTES` (16 KiB, or all it
still holds) in ``write_timeout_s`` is aborted: its buffer is released and its handler's ``drain()``
fails, so the handler ends. So the bound is a minimum send rate while a client holds bytes back
(16 KiB per 30 s by default, ~550 B/s; Kestrel's and IIS's default floor is 240 B/s), not a bound
per response: an answer that keeps draining at least that fast is never cut, however long it takes
(a realtime socket included), and one trickled out a few bytes at a time is. Before, only the
transport's ``resume_writing`` counted as progress, which comes once the buffer is back under its
low-water mark (16 KiB): a body written in one piece behind full kernel buffers (an aiohttp
``Response``: a history page, the worker's 1.1 MB web client) had to drain almost whole within the
bound, so a client reading it steadily at 385 KB/s was cut at a 0.5 s bound. One sweep per listener
every ``write_timeout_s / 2`` checks the connections (so an abort comes after 1 to 1.5 times the
bound); aborts are logged once per burst, like refusals.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import resource
import socket
import struct
import sys
import termios
from collections.abc import Callable
from typing import cast

import structlog
from aiohttp import web

from agent_worker.errors import ConfigError

__all__ = ["CappedSite", "ConnectionCap"]

log = structlog.get_logger(__name__)

REFUSED_CODE = 50300
#: A refused socket waits this long for the request it answers, so that closing it reads the
#: request first (a FIN, not a reset that could discard the answer in flight).
LINGER_S = 1.0
#: Refused sockets lingering at once; past this they are closed right after the answer is written.
MAX_LINGERING = 256
#: A connection waiting on its client (paused, or closing with bytes unsent) must drain at least this
#: much (or all it holds) per write bound to keep going: the floor of a slow reader's rate.
MIN_PROGRESS_BYTES = 16 * 1024
#: ``SIOCOUTQ``: the bytes a socket's kernel send queue holds, not yet acknowledged by the client.
#: The kernel takes more from the transport only once a third or more of its queue (megabytes on a
#: fast path) has drained, so the transport's own buffer shows a slow reader's progress in lumps.
_SIOCOUTQ: int | None = getattr(termios, "TIOCOUTQ", None) if sys.platform == "linux" else None


def _kernel_unsent(fd: int) -> int:
    """What the kernel still holds for the client (0 where that cannot be asked)."""
    if _SIOCOUTQ is None or fd < 0:
        return 0
    try:
        return int(struct.unpack("i", fcntl.ioctl(fd, _SIOCOUTQ, b"\0\0\0\0"))[0])
    except OSError:
        return 0


def _answer(limit: int, what: str) -> bytes:
    message = f"{what} is at its limit of {limit} concurrent connections; retry shortly"
    body = json.dumps({"error": {"code": REFUSED_CODE, "statusCode": 503, "message": message}}).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Retry-After: 1\r\n"
        f"X-Ably-ErrorCode: {REFUSED_CODE}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


class ConnectionCap:
    """Counts a listener's connections; :meth:`wrap` makes its protocol factory refuse past ``limit``."""

    def __init__(self, limit: int, *, name: str, write_timeout_s: float | None = None) -> None:
        if limit < 1:
            msg = f"the connection limit of {name} must be at least 1"
            raise ConfigError(msg)
        if write_timeout_s is not None and not write_timeout_s > 0:
            msg = f"the write timeout of {name} must be positive"
            raise ConfigError(msg)
        self.limit = limit
        self.name = name
        self.open = 0  # connections being served
        self.refused = 0  # refused since start (all bursts)
        self._burst = 0  # refused since the last time the count was below the low-water mark
        self._low_water = limit * 9 // 10
        self._lingering: set[_Refusal] = set()
        self._answer = _answer(limit, name)
        self.write_timeout_s = write_timeout_s
        self.stalled = 0  # connections aborted for a stalled write since start (all bursts)
        self._stall_burst = 0
        self._watched: set[_Counted] = set()  # with a write bound: the connections to sweep
        self._sweeper: asyncio.TimerHandle | None = None
        self._listening = False

    def wrap(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``loop.create_server``: ``factory``'s protocol while under the
        limit, else a refusal."""

        def make() -> asyncio.Protocol:
            if self.open >= self.limit:
                return self._refuse()
            inner = factory()
            self.open += 1  # counted from the accept (connection_made comes a loop turn later)
            counted = _Counted(inner, self)
            if self.write_timeout_s is not None:
                self._watched.add(counted)
            return counted

        return make

    def close_refusals(self) -> None:
        for refusal in list(self._lingering):
            refusal.close()

    def _refuse(self) -> _Refusal:
        self.refused += 1
        self._burst += 1
        if self._burst == 1:
            log.warning("connections_refused", listener=self.name, limit=self.limit, code=REFUSED_CODE)
        return _Refusal(self)

    def _released(self, counted: _Counted) -> None:
        self.open -= 1
        self._watched.discard(counted)
        if self._burst and self.open <= self._low_water:
            log.info("connections_accepted_again", listener=self.name, refused=self._burst)
            self._burst = 0

    def start_sweeping(self) -> None:
        """Check the connections' writes every ``write_timeout_s / 2`` while the listener is open
        (and afterwards, until its last connection has gone)."""
        self._listening = True
        if self.write_timeout_s is not None and self._sweeper is None:
            self._schedule(asyncio.get_running_loop())

    def stop_sweeping(self) -> None:
        self._listening = False  # the sweeps go on while connections remain (shutdown closes them)

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self.write_timeout_s is not None
        self._sweeper = loop.call_later(self.write_timeout_s / 2, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Abort the connections whose writes have drained less than ``MIN_PROGRESS_BYTES`` (or all
        they hold) in ``write_timeout_s``."""
        timeout = self.write_timeout_s
        assert timeout is not None
        now = loop.time()
        stuck = [c for c in self._watched if c.stalled_for(now) >= timeout]
        if stuck:
            self.stalled += len(stuck)
            if not self._stall_burst:
                log.warning(
                    "connections_write_timed_out",
                    listener=self.name,
                    timeout_s=timeout,
                    unsent_bytes=stuck[0].unsent(),
                    hint="a client stopped reading its answers (or reads them slower than "
                    f"{MIN_PROGRESS_BYTES} bytes per {timeout:g} s); its connection is dropped",
                )
            self._stall_burst += len(stuck)
            for counted in stuck:
                counted.abort()
        elif self._stall_burst:
            log.info("connections_write_timeouts_ended", listener=self.name, aborted=self._stall_burst)
            self._stall_burst = 0
        if self._listening or self._watched:
            self._schedule(loop)
        else:
            self._sweeper = None

    def check_fd_limit(self) -> None:
        """Warn once if the process may run out of file descriptors before the cap is reached."""
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < self.limit + 64:
            log.warning(
                "connection_limit_above_fd_limit",
                listener=self.name,
                limit=self.limit,
                fd_limit=soft,
                hint="raise `ulimit -n` past the connection limit, or lower the limit",
            )


class _Counted(asyncio.Protocol):
    """The handler's protocol, counted; the hot callbacks are the handler's own bound methods
    (instance attributes shadow the class's), so only opening and closing pass through here — and
    flow control (once per buffer's worth, to a slow reader, not per write) when the cap bounds writes."""

    def __init__(self, inner: asyncio.Protocol, cap: ConnectionCap) -> None:
        self._inner = inner
        self._cap: ConnectionCap | None = cap
        self._transport: asyncio.WriteTransport | None = None
        self._fd: int | None = None  # the socket's, once asked what the kernel still holds (-1: none)
        self._paused = False  # the transport paused writing (its buffer over the high-water mark)
        self._wait_since: float | None = None  # when the current window of waiting on the client began ...
        self._wait_unsent = 0  # ... and the bytes buffered then (the most since, if it grew)
        self.data_received = inner.data_received  # type: ignore[method-assign]
        self.eof_received = inner.eof_received  # type: ignore[method-assign]
        if cap.write_timeout_s is None:
            self.pause_writing = inner.pause_writing  # type: ignore[method-assign]
            self.resume_writing = inner.resume_writing  # type: ignore[method-assign]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not subclasses of asyncio's, so a cast, not an isinstance check)
        self._transport = cast("asyncio.WriteTransport", transport)
        self._inner.connection_made(transport)

    def pause_writing(self) -> None:
        self._paused = True
        if self._wait_since is None:
            self._wait_since = asyncio.get_running_loop().time()
            self._wait_unsent = self.unsent() + self._kernel_unsent()
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        # Back under the low-water mark: at least high - low (48 KiB) drained since the pause.
        self._paused = False
        self._wait_since = None
        self._inner.resume_writing()

    def stalled_for(self, now: float) -> float:
        """How long this connection has waited on its client without draining ``MIN_PROGRESS_BYTES``
        (or all it held) — 0 while it waits for nothing."""
        transport = self._transport
        unsent = transport.get_write_buffer_size() if transport is not None else 0
        if not self._paused and not (unsent and transport is not None and transport.is_closing()):
            self._wait_since = None
            return 0.0
        unsent += self._kernel_unsent()  # the client's progress, as the kernel sees it
        if self._wait_since is None:  # a closing transport's wait, first seen
            self._wait_since, self._wait_unsent = now, unsent
        elif unsent > self._wait_unsent:
            self._wait_unsent = unsent  # more was buffered: count the drain from there
        elif self._wait_unsent - unsent >= min(MIN_PROGRESS_BYTES, self._wait_unsent):
            self._wait_since, self._wait_unsent = now, unsent  # enough progress: a new window
        return now - self._wait_since

    def _kernel_unsent(self) -> int:
        """What the socket's kernel queue still holds for the client (only asked while waiting on it)."""
        if self._fd is None:
            sock = self._transport.get_extra_info("socket") if self._transport is not None else None
            self._fd = sock.fileno() if sock is not None and _SIOCOUTQ is not None else -1
        return _kernel_unsent(self._fd)

    def unsent(self) -> int:
        return self._transport.get_write_buffer_size() if self._transport is not None else 0

    def abort(self) -> None:
        transport = self._transport
        if transport is not None:
            # A reset, not a close: a closed socket's kernel queue (megabytes, orphaned) would still
            # be trickled out to the client for as long as it keeps reading.
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()  # connection_lost follows: the handler's drain() fails

    def connection_lost(self, exc: Exception | None) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap._released(self)
        self._transport = None
        self._inner.connection_lost(exc)


class _Refusal(asyncio.Protocol):
    """Writes the 503 at once, reads (and drops) what the client sends, then closes."""

    def __init__(self, cap: ConnectionCap) -> None:
        self._cap = cap
        self._transport: asyncio.BaseTransport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        # (uvloop's transports are not subclasses of asyncio's, so a cast, not an isinstance check)
        cast("asyncio.WriteTransport", transport).write(self._cap._answer)
        if len(self._cap._lingering) >= MAX_LINGERING:
            transport.close()  # the answer is flushed first
            return
        self._cap._lingering.add(self)
        self._timer = asyncio.get_running_loop().call_later(LINGER_S, transport.close)

    def data_received(self, data: bytes) -> None:
        self.close()  # the request has been read: closing now sends a FIN after the answer

    def eof_received(self) -> bool:
        return False  # the transport closes itself

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._cap._lingering.discard(self)
        self._transport = None


class CappedSite(web.BaseSite):
    """aiohttp's ``TCPSite`` with a :class:`ConnectionCap` on its listener."""

    __slots__ = ("_cap", "_host", "_port")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, cap: ConnectionCap) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._cap = cap

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def cap(self) -> ConnectionCap:
        return self._cap

    @property
    def port(self) -> int:
        """The bound port (the requested one before :meth:`start`)."""
        sockets = getattr(self._server, "sockets", None)  # an asyncio.Server's (AbstractServer has none)
        return int(sockets[0].getsockname()[1]) if sockets else self._port

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None  # BaseSite refuses a runner that is not set up
        self._cap.check_fd_limit()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._cap.wrap(server), self._host, self._port)
        self._cap.start_sweeping()

    async def stop(self) -> None:
        await super().stop()
        self._cap.close_refusals()
        self._cap.stop_sweeping()
