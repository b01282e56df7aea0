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
sees only ``connection_made`` / ``connection_lost``; the hot callbacks (``data_received``, flow
control) are the handler's own bound methods, so nothing is added per read.
"""

from __future__ import annotations

import asyncio
import json
import resource
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

    def __init__(self, limit: int, *, name: str) -> None:
        if limit < 1:
            msg = f"the connection limit of {name} must be at least 1"
            raise ConfigError(msg)
        self.limit = limit
        self.name = name
        self.open = 0  # connections being served
        self.refused = 0  # refused since start (all bursts)
        self._burst = 0  # refused since the last time the count was below the low-water mark
        self._low_water = limit * 9 // 10
        self._lingering: set[_Refusal] = set()
        self._answer = _answer(limit, name)

    def wrap(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``loop.create_server``: ``factory``'s protocol while under the
        limit, else a refusal."""

        def make() -> asyncio.Protocol:
            if self.open >= self.limit:
                return self._refuse()
            inner = factory()
            self.open += 1  # counted from the accept (connection_made comes a loop turn later)
            return _Counted(inner, self)

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

    def _released(self) -> None:
        self.open -= 1
        if self._burst and self.open <= self._low_water:
            log.info("connections_accepted_again", listener=self.name, refused=self._burst)
            self._burst = 0

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
    (instance attributes shadow the class's), so only opening and closing pass through here."""

    def __init__(self, inner: asyncio.Protocol, cap: ConnectionCap) -> None:
        self._inner = inner
        self._cap: ConnectionCap | None = cap
        self.data_received = inner.data_received  # type: ignore[method-assign]
        self.eof_received = inner.eof_received  # type: ignore[method-assign]
        self.pause_writing = inner.pause_writing  # type: ignore[method-assign]
        self.resume_writing = inner.resume_writing  # type: ignore[method-assign]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap._released()
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

    async def stop(self) -> None:
        await super().stop()
        self._cap.close_refusals()
