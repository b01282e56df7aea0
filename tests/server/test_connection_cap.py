"""The embedded server holds at most ``max_connections`` TCP connections (realtime and REST): past
it a new one is answered 503 / 50300 at once and closed, logged once per burst, while the clients
already in are served; a place freed is taken by the next one."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
import structlog

from agent_worker.errors import ConfigError
from agent_worker.server import EmbeddedServer, ServerConfig
from agent_worker.server.testing import python_realtime
from tests.server.server_support import collector, eventually

CAP = 6


async def _idle(server: EmbeddedServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection that never sends a byte (what a flood of sockets looks like)."""
    return await asyncio.open_connection(server.host, server.port)


async def _refused_answer(server: EmbeddedServer) -> tuple[bytes, dict[str, object]]:
    """A plain HTTP request on a new connection; the server's whole answer (it closes after)."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(f"GET /time HTTP/1.1\r\nHost: {server.endpoint}\r\n\r\n".encode())
        raw = await asyncio.wait_for(reader.read(), 30)  # to EOF: the refusal closes the socket
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return head, json.loads(body)


async def test_connections_past_the_cap_are_refused_503_and_those_in_are_served() -> None:
    async with EmbeddedServer(ServerConfig(max_connections=CAP)) as server:
        cap = server.connection_cap
        rt = python_realtime(server, client_id="inside")  # one realtime socket, already in
        idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        try:
            got, listener = collector()
            channel = rt.channels.get("cap")
            await channel.subscribe(listener)
            idle = [await _idle(server) for _ in range(CAP - 1)]
            await eventually(lambda: cap.open == CAP, what="the cap's worth of connections")

            with structlog.testing.capture_logs() as logs:
                head, body = await _refused_answer(server)
                assert head.startswith(b"HTTP/1.1 503"), head
                assert b"retry-after: 1" in head.lower()
                assert body["error"] == {
                    "code": 50300,
                    "statusCode": 503,
                    "message": f"the server is at its limit of {CAP} concurrent connections; retry shortly",
                }
                # A realtime client's upgrade is refused the same way (its SDK retries later).
                async with aiohttp.ClientSession() as http:
                    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                        await http.ws_connect(f"http://{server.endpoint}/?key={server.default_key}")
                    assert err.value.status == 503
                    for _ in range(3):
                        async with http.get(f"http://{server.endpoint}/time") as resp:
                            assert resp.status == 503
                            assert (await resp.json())["error"]["code"] == 50300
            refusals = [e for e in logs if e["event"] == "connections_refused"]
            assert len(refusals) == 1, logs  # once per burst, not per connection
            assert refusals[0]["limit"] == CAP
            assert cap.refused == 5
            assert cap.open == CAP  # refusals are not counted as served connections

            # The client already in is served as before.
            await channel.publish("n", "still here")
            await eventually(lambda: [m.data for m in got] == ["still here"])

            # A place freed is taken by the next connection.
            for _, writer in idle[:2]:
                writer.close()
            await eventually(lambda: cap.open <= CAP - 2, what="the closed connections to be released")
            async with aiohttp.ClientSession() as http, http.get(f"http://{server.endpoint}/time") as resp:
                assert resp.status == 200
        finally:
            for _, writer in idle:
                writer.close()
            await rt.close()


async def test_a_burst_ends_when_the_count_falls_below_90_percent() -> None:
    """One log line per burst: the next burst (after the count fell back) is logged again."""
    async with EmbeddedServer(ServerConfig(max_connections=CAP)) as server:
        cap = server.connection_cap
        idle = [await _idle(server) for _ in range(CAP)]
        try:
            await eventually(lambda: cap.open == CAP)
            with structlog.testing.capture_logs() as logs:
                await _refused_answer(server)
                for _, writer in idle[:2]:
                    writer.close()
                await eventually(lambda: cap.open == CAP - 2)
                idle[:2] = [await _idle(server) for _ in range(2)]
                await eventually(lambda: cap.open == CAP)
                await _refused_answer(server)
                await _refused_answer(server)
            events = [e["event"] for e in logs if e["event"].startswith("connections_")]
            assert events == ["connections_refused", "connections_accepted_again", "connections_refused"]
            again = next(e for e in logs if e["event"] == "connections_accepted_again")
            assert again["refused"] == 1
        finally:
            for _, writer in idle:
                writer.close()


async def test_closing_the_server_releases_the_count() -> None:
    server = EmbeddedServer(ServerConfig(max_connections=CAP))
    async with server:
        idle = [await _idle(server) for _ in range(3)]
        await eventually(lambda: server.connection_cap.open == 3)
    assert server.connection_cap.open == 0
    for _, writer in idle:
        writer.close()


def test_a_cap_below_one_is_refused() -> None:
    with pytest.raises(ConfigError):
        EmbeddedServer(ServerConfig(max_connections=0))
