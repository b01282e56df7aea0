"""A batch publish is charged one rate token per message: Ably (and the embedded server with
``--enforce-rate-limits``) counts every message of a ProtocolMessage against the connection's
inbound limit, so a limiter that charged a batch once let batches through at several times the
limit and the server refused them (42911)."""

from __future__ import annotations

import uuid

from agent_worker.protocol.wire import OutboundMessage
from agent_worker.server import EmbeddedServer, ServerConfig
from agent_worker.transport.ably import AblyTransport
from tests.runtime.runtime_support import worker_settings


async def test_batches_stay_under_the_enforced_inbound_limit() -> None:
    """Twelve batches of eight (96 messages) back to back at the shipped 45 msg/s: every batch is
    ACKed with its serials and the limiter counted each message."""
    async with EmbeddedServer(ServerConfig(enforce_rate_limits=True)) as server:
        transport = AblyTransport(worker_settings(server, rate=45.0))
        await transport.connect()
        try:
            channel = transport.channel(f"conversations:batch-{uuid.uuid4().hex[:8]}")
            sent0 = channel.limiter.sent
            for b in range(12):
                batch = [OutboundMessage(name="t", data=f"{b}:{i}") for i in range(8)]
                serials = await channel.publish_batch(batch)
                assert len(serials) == 8 and all(serials)
            assert channel.limiter.sent - sent0 == 96
        finally:
            await transport.close()
