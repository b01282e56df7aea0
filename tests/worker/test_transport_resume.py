"""The transport adapter across a dropped connection: what ably-python resends and what is new must
reach the server in ``msgSerial`` order (see the notes in agent_worker/transport/ably.py)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from agent_worker.protocol.wire import OutboundMessage
from agent_worker.server import EmbeddedServer
from agent_worker.transport.ably import AblyTransport
from tests.runtime.runtime_support import worker_settings


async def test_append_submitted_while_reconnecting_follows_the_resent_one(
    ably_server: EmbeddedServer,
) -> None:
    """An append in flight when the socket drops is resent on resume; one submitted while the
    client reconnects is sent only once the connection is back, so both are ACKed and the text is
    in order. (Started while reconnecting, ably-python would queue it ahead of the resent append
    in its ACK queue: the resent append's ACK would resolve nothing and its future would hang; and
    a send started just before the resend tasks run would overtake them on the wire.)"""
    transport = AblyTransport(worker_settings(ably_server, rate=1000.0))
    await transport.connect()
    try:
        name = f"conversations:resume-{uuid.uuid4().hex[:8]}"
        channel = transport.channel(name)
        serial = await channel.publish(OutboundMessage(name="t", data="a"))
        assert serial is not None
        connection = channel.client.connection
        down = asyncio.Event()

        def on_change(change: Any) -> None:
            if str(getattr(change.current, "value", change.current)) in {"disconnected", "connecting"}:
                down.set()

        connection.on(on_change)
        # Written (its first step ran) but never ACKed: the server drops the socket unread.
        await channel.acquire()
        in_flight = channel.start_append(serial, OutboundMessage(name="t", data="b"))
        await asyncio.sleep(0)
        assert ably_server.drop_connections("agent-worker") == 1
        async with asyncio.timeout(20):
            await down.wait()

        async def submit() -> asyncio.Task[str | None]:
            await channel.acquire()
            return channel.start_append(serial, OutboundMessage(name="t", data="c"))

        async with asyncio.timeout(20):
            later = await submit()
            await asyncio.gather(in_flight, later)
        connection.off(on_change)
        assert ably_server.hub.channel(name).log.records[serial].content["data"] == "abc"
    finally:
        await transport.close()
