"""Fixtures for driving unmodified ably-js 2.28 (Node) against an in-process EmbeddedServer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from agent_worker.server import EmbeddedServer, ServerConfig
from tests.server_js.server_js_support import ServerFactory


@pytest.fixture(scope="module", params=["msgpack", "json"])
def protocol(request: pytest.FixtureRequest) -> str:
    """Every ably-js scenario runs once per wire format (`useBinaryProtocol` true / false).

    Module-scoped so one Node run per format can feed several assertion-focused tests.
    """
    value: str = request.param
    return value


@pytest.fixture
async def make_server() -> AsyncIterator[ServerFactory]:
    """Starts EmbeddedServers on ephemeral loopback ports; stops them all afterwards."""
    started: list[EmbeddedServer] = []

    async def make(**overrides: Any) -> EmbeddedServer:
        server = EmbeddedServer(ServerConfig(host="127.0.0.1", port=0, **overrides))
        await server.start()
        started.append(server)
        return server

    yield make
    for server in reversed(started):
        await server.stop()
