"""A client that stops reading parks its connection's writer until the socket drains: the writer is
woken by the transport's ``resume_writing``, not by polling the buffer every 5 ms, and everyone else
is served meanwhile. (The byte bound past which such a client is disconnected with 80020 is
``test_memory_bounds.py``'s.)"""

from __future__ import annotations

import asyncio
from typing import Any

from agent_worker.server import EmbeddedServer, ServerConfig
from tests.server.server_support import MESSAGE, eventually, flood


def _awaiting(task: asyncio.Task[Any]) -> list[str]:
    """The names of the coroutines ``task`` is suspended in, outermost first."""
    names: list[str] = []
    coro: Any = task.get_coro()
    while coro is not None and hasattr(coro, "cr_code"):
        names.append(coro.cr_code.co_name)
        coro = coro.cr_await
    return names


async def test_a_stalled_reader_parks_its_writer_until_it_reads_again() -> None:
    async with EmbeddedServer(ServerConfig(max_outbound_bytes=64 << 20)) as server, flood(server) as f:
        transport = f.transport
        # Publish until frames for the slow reader wait in the server's queue (its socket is full).
        while transport.queued_bytes == 0:
            assert f.sent < 2000, "the slow reader's socket never filled"
            await f.publish_one()
        # Parked on the transport's drain, not in a polling sleep; the others are still served.
        assert "sleep" not in _awaiting(transport._writer), _awaiting(transport._writer)
        for _ in range(3):
            await f.publish_one()
        assert transport.queued_bytes > 0 and "sleep" not in _awaiting(transport._writer)
        # Reading again wakes the writer: every message arrives, in order.
        for i in range(f.sent):
            got = await f.slow.expect(MESSAGE)
            assert got["messages"][0]["data"].startswith(f"{i}:")
        await eventually(lambda: transport.queued_bytes == 0, what="the queue drained")
