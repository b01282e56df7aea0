"""Fixtures for the engine suite: the runtime suite's worker and client factories and workers in
temporal mode (the Temporal dev server, ``temporal_server``, comes from tests/conftest.py: one per
test session)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from agent_worker.config import EngineConfig
from agent_worker.server import EmbeddedServer
from tests.runtime.runtime_fixtures import make_client, make_worker, session_name
from tests.runtime.runtime_support import Harness, start_harness
from tests.temporal_support import TemporalDevServer, task_queue

__all__ = [
    "MakeWorker",
    "make_client",
    "make_temporal_worker",
    "make_worker",
    "session_name",
]

MakeWorker = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def make_temporal_worker(
    ably_server: EmbeddedServer, temporal_server: TemporalDevServer
) -> AsyncIterator[MakeWorker]:
    """Workers in temporal mode, each fleet on a task queue of its own (``queue=`` to share one)."""
    made: list[Harness] = []

    async def factory(provider: Any, *, queue: str | None = None, **kwargs: Any) -> Harness:
        engine = EngineConfig(
            kind="temporal",
            address=temporal_server.address,
            namespace=temporal_server.namespace,
            task_queue=queue or task_queue(),
            heartbeat_timeout_s=kwargs.pop("heartbeat_timeout_s", 10.0),
        )
        harness = await start_harness(ably_server, provider, engine=engine, **kwargs)
        made.append(harness)
        return harness

    yield factory
    for harness in made:
        await harness.close()
