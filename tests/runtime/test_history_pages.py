"""REST history paging of the transport: a small first page, then pages of up to 1,000."""

from __future__ import annotations

from ably.types.message import Message

from agent_worker.server import EmbeddedServer
from agent_worker.server.testing import python_rest
from agent_worker.transport.ably import AblyTransport
from tests.runtime.runtime_support import worker_settings


async def test_later_history_pages_are_large(ably_server: EmbeddedServer) -> None:
    """After a first page of ``page_size``, the transport asks for ``later_page_size`` per page:
    250 messages come back as 10 + 200 + 40, newest first, each exactly once."""
    rest = python_rest(ably_server, client_id="writer")
    try:
        channel = rest.channels.get("conversations:long")
        for start in range(0, 250, 50):
            await channel.publish(messages=[Message(name="m", data=str(i)) for i in range(start, start + 50)])
    finally:
        await rest.close()
    transport = AblyTransport(worker_settings(ably_server))
    await transport.connect()
    try:
        ch = await transport.open_channel("conversations:long")
        pages = [p async for p in ch.history_pages(page_size=10, later_page_size=200)]
        assert [len(p) for p in pages] == [10, 200, 40]
        assert [m.data for p in pages for m in p] == [str(i) for i in reversed(range(250))]
    finally:
        await transport.close()
