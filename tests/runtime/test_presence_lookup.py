"""The push notifier's presence lookup (``Channel.present_connections``) through the history
reader's lean GET (transport/history.py): the server's current members of one clientId, the SDK's
``request()`` never on the way while the primary host answers, and still its fallback on a 5xx;
error answers keep Ably's code (50000 when they name none); a ``Link`` is not followed."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
from aiohttp import web

from agent_worker.errors import TransportError
from agent_worker.server import EmbeddedServer
from agent_worker.server.testing import python_realtime
from agent_worker.transport.ably import AblyTransport
from agent_worker.transport.history import HistoryReader, HistoryRefused
from tests.runtime.runtime_support import worker_settings
from tests.runtime.test_history_reader import FakeAbly, _rest

CLIENT = "al ice+1@x"  # a clientId with characters the query must escape


async def _until(predicate: Any, what: str) -> None:
    async with asyncio.timeout(10):
        while not predicate():  # noqa: ASYNC110 - polls the server's presence set
            await asyncio.sleep(0.02)


async def test_counts_the_servers_members_without_the_sdk_request(ably_server: EmbeddedServer) -> None:
    name = "conversations:presence-lookup"
    devices = [python_realtime(ably_server, client_id=CLIENT) for _ in range(2)]
    other = python_realtime(ably_server, client_id="bob")
    transport = AblyTransport(worker_settings(ably_server))
    await transport.connect()
    try:
        for client in [*devices, other]:
            await client.channels.get(name).presence.enter({"device": "d"})
        hub = ably_server.hub.channel(name).presence

        def members(client_id: str) -> int:
            return len(hub.snapshot(client_id=client_id, connection_id=None))

        await _until(lambda: members(CLIENT) == 2 and members("bob") == 1, "three members")
        ch = await transport.open_channel(name)
        calls: list[str] = []
        rest = transport._rest
        assert rest is not None
        real = rest.request

        async def spy(method: str, path: str, *args: Any, **kwargs: Any) -> Any:
            calls.append(path)
            return await real(method, path, *args, **kwargs)

        rest.request = spy  # type: ignore[method-assign]
        assert await ch.present_connections(CLIENT) == 2
        assert await ch.present_connections("bob") == 1
        assert await ch.present_connections("carol") == 0
        await devices[0].close()
        await _until(lambda: members(CLIENT) == 1, "one device left")
        assert await ch.present_connections(CLIENT) == 1
        assert calls == []  # every lookup was the lean GET
    finally:
        await transport.close()
        for client in [*devices, other]:
            await client.close()


async def test_refused_lookup_keeps_its_code(ably_server: EmbeddedServer) -> None:
    """A token without the presence capability: a TransportError with Ably's 40160."""

    async def token() -> dict[str, Any]:
        return ably_server.token_details(client_id="agent-worker", capability={"*": ["publish"]})

    transport = AblyTransport(dataclasses.replace(worker_settings(ably_server), token_source=token))
    await transport.connect()
    try:
        ch = await transport.open_channel("conversations:hidden")
        with pytest.raises(TransportError) as refused:
            await ch.present_connections("alice")
        assert refused.value.code == 40160
        assert "presence of conversations:hidden failed" in refused.value.message
    finally:
        await transport.close()


class FakePresence(FakeAbly):
    """FakeAbly's answers at ``/channels/<name>/presence``; ``bare`` answers an error without a code."""

    bare = False

    async def start(self, ssl_context: Any = None) -> None:
        app = web.Application()
        app.router.add_get("/channels/{name}/presence", self.presence)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def presence(self, request: web.Request) -> web.Response:
        if self.bare:
            self.requests.append({"path": request.path_qs, "headers": dict(request.headers)})
            return web.Response(status=400, text="no", content_type="text/plain")
        return await self.history(request)  # its Link names ./messages: not this resource


PRESENCE = "/channels/conversations%3Aa/presence?clientId=alice"


async def test_items_ignore_the_link_and_fall_back_on_5xx() -> None:
    fake = FakePresence()
    await fake.start()
    rest = _rest(fake.port, [])
    reader = HistoryReader(rest, binary=True, max_connections=4)
    try:
        assert len(await reader.items(PRESENCE)) == 1  # page() would refuse that Link
        with pytest.raises(HistoryRefused):
            await reader.page(PRESENCE)
        fake.answers = [(503, {"X-Ably-Errorcode": "50003"})]
        assert len(await reader.items(PRESENCE)) == 1  # the lean GET got a 503: the SDK read it
        lean = ["aiohttp" in r["headers"]["User-Agent"] for r in fake.requests]
        assert lean == [True, True, True, False]
        assert {r["path"] for r in fake.requests} == {PRESENCE}
        fake.answers = [(404, {"X-Ably-Errorcode": "40400"})]
        with pytest.raises(HistoryRefused) as missing:
            await reader.items(PRESENCE)
        assert missing.value.code == 40400 and len(fake.requests) == 5
        fake.bare = True
        with pytest.raises(HistoryRefused) as bare:
            await reader.items(PRESENCE)
        assert (bare.value.code, bare.value.status_code) == (50000, 400)
        with pytest.raises(HistoryRefused) as bare_history:
            await reader.page(PRESENCE)
        assert bare_history.value.code == 104011  # history keeps AIT's code
    finally:
        await reader.close()
        await rest.close()
        assert fake.runner is not None
        await fake.runner.cleanup()
