"""Client test fixtures: chat devices (ChatSession over ably-python) against the embedded server."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from agent_worker.agent import Agent
from agent_worker.client.app import ChatOptions, connect_session
from agent_worker.client.session import ChatSession
from agent_worker.config import HttpConfig, WorkerConfig
from agent_worker.providers.base import ModelProvider
from agent_worker.providers.echo import EchoProvider
from agent_worker.server import EmbeddedServer
from agent_worker.transport.ably import AblySettings
from agent_worker.worker.http import serve
from agent_worker.worker.service import Worker
from tests.client.client_support import DeviceFactory, WorkerFactory


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
            codec=kw.pop("codec", None),
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


@pytest.fixture
async def make_worker(ably_server: EmbeddedServer) -> AsyncIterator[WorkerFactory]:
    """``await make_worker(provider)`` → the invocation URL of a real worker on the in-process server."""
    started: list[tuple[Worker, web.AppRunner]] = []

    async def start(provider: ModelProvider, **config: Any) -> str:
        async def token() -> dict[str, Any]:
            return ably_server.token_details(client_id="agent-worker")

        settings = AblySettings(endpoint=ably_server.endpoint, token_source=token, client_id="agent-worker")
        config.setdefault("coalesce_window_ms", 0.0)
        worker = Worker(transport=settings, agent=Agent(provider), config=WorkerConfig(**config))
        await worker.start()
        http = HttpConfig(port=0)
        runner = await serve(worker, http, port=0)
        started.append((worker, runner))
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}{http.path}"

    yield start
    for worker, runner in started:
        await runner.cleanup()
        await worker.close(drain_timeout_s=5)


@pytest.fixture
async def worker_url(make_worker: WorkerFactory) -> str:
    """A real worker answering with the echo provider (``echo: <prompt>``)."""
    return await make_worker(EchoProvider(prefix="echo: "))
