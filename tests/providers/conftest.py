from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # provider_replay, without a tests package

from provider_replay import ReplayServer

from agent_worker.providers import guard


@pytest.fixture(autouse=True)
def no_real_provider_requests(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Adapters may reach loopback replay servers only; fake keys are set for the default env vars."""
    monkeypatch.setattr(guard, "ALLOW_PROVIDER_REQUESTS", False)
    monkeypatch.setenv("OPENAI_API_KEY", "mock-api-key")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "mock-api-key")
    yield


@pytest.fixture
async def replay() -> AsyncIterator[ReplayServer]:
    server = ReplayServer()
    await server.start()
    try:
        yield server
    finally:
        await server.close()
