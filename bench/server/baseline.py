"""The physical baseline: a bare `websockets` fan-out server with no protocol at all.

Subscribers connect to ``/?role=sub``; every frame a ``/?role=pub`` connection sends is broadcast
verbatim to all subscribers, then acknowledged to the publisher with a one-byte frame (standing in
for Ably's ACK so the publisher can keep a bounded window). Loopback only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, broadcast, serve


@asynccontextmanager
async def fanout_server(*, compression: str | None) -> AsyncIterator[int]:
    """Runs the fan-out server on an ephemeral 127.0.0.1 port; yields the port."""
    subscribers: set[ServerConnection] = set()

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        role = parse_qs(urlsplit(ws.request.path).query).get("role", ["sub"])[0]
        if role == "sub":
            subscribers.add(ws)
            try:
                await ws.wait_closed()
            finally:
                subscribers.discard(ws)
            return
        async for frame in ws:
            broadcast(subscribers, frame)
            await ws.send(b"a")

    async with serve(handler, "127.0.0.1", 0, compression=compression, ping_interval=None) as server:
        port: int = next(iter(server.sockets)).getsockname()[1]
        yield port
