"""A local HTTP server that replays vendor streaming responses, for testing adapters through their
real SDKs over loopback.

Each request pops the next scripted :class:`Reply`: either a plain response (a 429 with
``Retry-After``, a 500, ...) or an SSE body taken from ``tests/fixtures/*.sse`` exactly as the
vendor sends it, written event by event (optionally slowly, optionally breaking the connection
mid-stream). The server records every request and counts the events it managed to write, and
notices when the client hangs up. The helpers at the end build tracked adapters and drain streams.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from agent_worker.plugins import build_provider
from agent_worker.providers import (
    ModelProvider,
    ModelRequest,
    ModelResponse,
    StreamEvent,
    TextDelta,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
FAST_RETRY = {"attempts": 3, "initial_wait": 0.01, "max_wait": 2.0, "jitter": 0.0}

P = TypeVar("P")


def load_events(name: str) -> list[str]:
    """The SSE events of a fixture file, each without its trailing blank line."""
    text = (FIXTURES / name).read_text()
    return [block for block in text.split("\n\n") if block.strip()]


@dataclass
class Reply:
    status: int = 200
    events: list[str] = field(default_factory=list)
    """SSE events (for a 200 stream); written one per chunk."""
    body: Any = None
    """JSON body for a non-streaming (error) reply."""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    """Pause between events (lets a test cancel mid-stream)."""
    break_after: int | None = None
    """Abort the TCP connection after writing this many events (a mid-stream network failure)."""


@dataclass
class SeenRequest:
    path: str
    headers: dict[str, str]
    """Lower-cased names."""
    body: Any


class ReplayServer:
    def __init__(self) -> None:
        self.replies: deque[Reply] = deque()
        self.requests: list[SeenRequest] = []
        self.events_written = 0
        self.client_gone = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._tracked: list[Any] = []

    def track(self, provider: Any) -> Any:
        """Close this provider's SDK client (its keep-alive pool) when the server closes."""
        self._tracked.append(provider)
        return provider

    def sse(self, fixture: str, **kw: Any) -> Reply:
        reply = Reply(events=load_events(fixture), **kw)
        self.replies.append(reply)
        return reply

    def error(self, status: int, body: Any, headers: dict[str, str] | None = None) -> Reply:
        reply = Reply(status=status, body=body, headers=headers or {})
        self.replies.append(reply)
        return reply

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined,union-attr]

    async def close(self) -> None:
        for provider in self._tracked:
            await provider.aclose()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        self.requests.append(
            SeenRequest(request.path, {k.lower(): v for k, v in request.headers.items()}, body)
        )
        if not self.replies:
            return web.json_response({"error": {"message": "replay server: no reply scripted"}}, status=500)
        reply = self.replies.popleft()
        if reply.status != 200 or not reply.events:
            return web.json_response(reply.body, status=reply.status, headers=reply.headers)
        resp = web.StreamResponse(
            status=200,
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **reply.headers},
        )
        await resp.prepare(request)
        transport = request.transport
        for i, event in enumerate(reply.events):
            if reply.break_after is not None and i >= reply.break_after:
                assert transport is not None
                transport.abort()  # no terminating chunk: the client sees a broken body
                return resp
            if transport is None or transport.is_closing():
                self.client_gone.set()
                return resp
            try:
                await resp.write((event + "\n\n").encode())
            except (ConnectionResetError, ConnectionError):
                self.client_gone.set()
                return resp
            self.events_written += 1
            if reply.delay:
                await asyncio.sleep(reply.delay)
        await resp.write_eof()
        return resp


def tracked_provider(replay: ReplayServer, kind: type[P], name: str, options: dict[str, Any]) -> P:
    """``build_provider(name, options)``, checked to be a ``kind`` and closed with the replay server."""
    p = build_provider(name, options)
    assert isinstance(p, kind)
    return replay.track(p)  # type: ignore[no-any-return]


async def collect(p: ModelProvider, request: ModelRequest) -> tuple[list[StreamEvent], ModelResponse]:
    """Every event of one stream, and the response it assembles."""
    async with p.stream(request) as stream:
        events = [e async for e in stream]
    return events, stream.get()


async def stream_texts(p: ModelProvider, request: ModelRequest, into: list[str]) -> None:
    """Append each text delta to ``into`` as it arrives (so a test sees them when the stream breaks)."""
    async with p.stream(request) as stream:
        async for event in stream:
            if isinstance(event, TextDelta):
                into.append(event.text)
