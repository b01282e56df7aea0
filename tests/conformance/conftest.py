"""Fixtures: a worker + scripted provider on the shared in-process embedded server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from agent_worker.server import EmbeddedServer
from tests.conformance.conformance_support import Conductor, Script, Stack, start_stack

StackFactory = Callable[..., Awaitable[Stack]]


@pytest.fixture
def conductor() -> Conductor:
    return Conductor()


@pytest.fixture
async def make_stack(ably_server: EmbeddedServer, conductor: Conductor) -> AsyncIterator[StackFactory]:
    made: list[Stack] = []

    async def factory(script: Script, **kwargs: Any) -> Stack:
        stack = await start_stack(ably_server, script, conductor, **kwargs)
        made.append(stack)
        return stack

    yield factory
    for stack in made:
        await stack.close()
