"""pytest fixtures for testing agents: ``pytest_plugins = ["agent_worker.pytest_plugin"]``.

``ably_server``: a started embedded Ably-compatible server on a free 127.0.0.1 port (ably-python
and ably-js connect to it as to Ably; see :mod:`agent_worker.server.testing`). Needs pytest-asyncio.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from agent_worker.server import EmbeddedServer
from agent_worker.testing import embedded_server

__all__ = ["ably_server"]


@pytest_asyncio.fixture
async def ably_server() -> AsyncIterator[EmbeddedServer]:
    """A started in-memory server on an ephemeral port (fast presence LEAVE, 5 s connection TTL)."""
    async with embedded_server(presence_leave_delay_ms=300, connection_state_ttl_ms=5_000) as server:
        yield server
