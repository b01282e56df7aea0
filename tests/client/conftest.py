"""Client test fixtures: chat devices (ChatSession over ably-python) against the embedded server."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from client_helpers import DeviceFactory

from agent_worker.client.app import ChatOptions, connect_session
from agent_worker.client.session import ChatSession
from agent_worker.server import EmbeddedServer


@pytest.fixture
async def device(ably_server: EmbeddedServer) -> AsyncIterator[DeviceFactory]:
    """``await device(channel, client_id)`` → a connected :class:`ChatSession` (closed at teardown)."""
    opened: list[ChatSession] = []

    async def make(channel: str, client_id: str | None, **kw: Any) -> ChatSession:
        options = ChatOptions(
            session=channel,
            client_id=client_id,
            endpoint=ably_server.endpoint,
            key=kw.pop("key", ably_server.default_key),
            token=kw.pop("token", None),
            agent_url=kw.pop("agent_url", None),
        )
        session = await connect_session(options)
        opened.append(session)
        return session

    yield make
    for session in opened:
        transport = session.transport
        with contextlib.suppress(Exception):
            await session.close()
        with contextlib.suppress(Exception):
            await transport.close()
