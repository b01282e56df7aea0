"""Worker harness and chat-client fixture factories (they close what they make)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from agent_worker.server import EmbeddedServer
from tests.runtime.runtime_support import ChatClient, Harness, start_harness


@pytest.fixture
def session_name() -> str:
    return f"conversations:{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def make_worker(ably_server: EmbeddedServer) -> AsyncIterator[Callable[..., Awaitable[Harness]]]:
    made: list[Harness] = []

    async def factory(provider: Any, **kwargs: Any) -> Harness:
        harness = await start_harness(ably_server, provider, **kwargs)
        made.append(harness)
        return harness

    yield factory
    for harness in made:
        await harness.close()


@pytest.fixture
async def make_client(
    ably_server: EmbeddedServer, session_name: str
) -> AsyncIterator[Callable[..., Awaitable[ChatClient]]]:
    made: list[ChatClient] = []

    async def factory(
        client_id: str | None = "user-abc", session: str | None = None, codec: str | None = None
    ) -> ChatClient:
        client = ChatClient(ably_server, session or session_name, client_id, codec=codec)
        made.append(client)
        return await client.connect()

    yield factory
    for client in made:
        await client.close()
