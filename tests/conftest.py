"""Shared fixtures: an in-process embedded Ably-compatible server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from agent_worker.server import EmbeddedServer, ServerConfig


@pytest.fixture
async def ably_server() -> AsyncIterator[EmbeddedServer]:
    """A started in-memory server on an ephemeral 127.0.0.1 port (fast presence LEAVE, 5 s TTL)."""
    config = ServerConfig(port=0, presence_leave_delay_ms=300, connection_state_ttl_ms=5_000)
    async with EmbeddedServer(config) as server:
        yield server
