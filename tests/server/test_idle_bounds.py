"""Bounded in time, not only in bytes: a realtime client that stopped reading is dropped once its
80020 close cannot drain, and an HTTP connection that never completes a request is closed after the
server's idle bound — while realtime sockets, idle or not, are not cut by that bound."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from typing import cast
from urllib.parse import urlencode

import aiohttp
import structlog

from agent_worker.server import EmbeddedServer, ServerConfig
from agent_worker.server.connection import RealtimeConnection
from agent_worker.server.testing import python_realtime
from tests.server.server_support import (
    ACK,
    ATTACH,
    HEARTBEAT,
    MESSAGE,
    RawClient,
    collector,
    eventually,
    wait_connected,
)


async def _stalled_client(server: EmbeddedServer, channel: str) -> socket.socket:
    """A WebSocket client, by hand over a plain socket with a small receive buffer, that attaches to
    ``channel`` and then never reads (aiohttp's client reads on in the background)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, (server.host, server.port))
    query = urlencode({"key": server.default_key, "clientId": "slow", "format": "json"})
    await loop.sock_sendall(
        sock,
        f"GET /?{query} HTTP/1.1\r\nHost: {server.endpoint}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode(),
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 4096), 30)
        assert chunk, "the server closed the handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    attach = json.dumps({"action": ATTACH, "channel": channel}).encode()
    assert len(attach) < 126
    # A masked text frame (client frames must be masked; a zero mask leaves the payload as is).
    await loop.sock_sendall(sock, bytes([0x81, 0x80 | len(attach)]) + b"\0\0\0\0" + attach)
    return sock


async def test_a_reader_that_never_reads_again_is_dropped_after_80020() -> None:
    """The DISCONNECTED (80020) frame waits behind everything the client has not read, so a client
    that never reads again held its socket, and the bytes buffered for it, for ever. Now the close
    is given ``close_timeout_ms``, then the socket is dropped (logged once)."""
    cfg = ServerConfig(max_outbound_bytes=256 << 10, close_timeout_ms=200)
    async with EmbeddedServer(cfg) as server:
        bystander = await RawClient.connect(server, clientId="bystander")
        pub = await RawClient.connect(server, clientId="pub", echo="false")
        slow = await _stalled_client(server, "flood")
        try:
            await bystander.attach("flood")
            gateway = server._gateway
            assert gateway is not None

            def stalled() -> RealtimeConnection | None:
                conns = [c for c in gateway.connections.values() if c.principal.client_id == "slow"]
                return conns[0] if conns else None

            await eventually(lambda: (c := stalled()) is not None and "flood" in c.attachments)
            conn = stalled()
            assert conn is not None and conn.transport is not None
            raw = cast("asyncio.WriteTransport | None", conn.transport.raw)
            assert raw is not None
            server_sock = raw.get_extra_info("socket")
            server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            payload = "x" * 20_000
            sent = 0
            with structlog.testing.capture_logs() as logs:
                # Publish until the stalled reader is disconnected as a slow consumer (80020).
                while conn.id in gateway.connections:
                    assert sent < 2000, "the stalled reader was never disconnected"
                    await pub.publish("flood", [{"name": "n", "data": f"{sent}:{payload}"}])
                    await pub.expect(ACK)
                    got = await bystander.expect(MESSAGE)
                    assert got["messages"][0]["data"].startswith(f"{sent}:")
                    sent += 1
                # The client still reads nothing; the server closes its socket anyway (before, the
                # writer waited for the buffer to drain: for ever).
                await eventually(lambda: server_sock.fileno() == -1, 30, "the server's socket closed")
            assert raw.get_write_buffer_size() == 0  # what was buffered for it is dropped
            timed_out = [e for e in logs if e["event"] == "socket_close_timed_out"]
            assert len(timed_out) == 1 and timed_out[0]["reason"] == "slow_consumer", timed_out
            # The bystander is still served.
            await pub.publish("flood", [{"name": "n", "data": "after"}])
            await pub.expect(ACK)
            assert (await bystander.expect(MESSAGE))["messages"][0]["data"] == "after"
            # Reading again, the client finds its stream ended (EOF or reset) after what was sent.
            loop = asyncio.get_running_loop()
            with contextlib.suppress(ConnectionResetError):
                while await asyncio.wait_for(loop.sock_recv(slow, 65536), 30):
                    pass
        finally:
            slow.close()
            for c in (bystander, pub):
                await c.close()


async def _until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (EOF or reset)."""
    data = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), 30):
            data += chunk
    except ConnectionResetError:
        pass
    return data


async def test_http_connections_without_a_request_are_closed_after_the_idle_bound() -> None:
    """aiohttp's default keep-alive (3,630 s) held a connection that sent half a request line for
    an hour. Now it is closed after ``http_idle_timeout_s``, as is a kept-alive connection idle
    between requests; REST requests are served meanwhile, and realtime sockets (an idle raw one, an
    idle ably-python client) outlive the bound."""
    cfg = ServerConfig(http_idle_timeout_s=0.3, heartbeat_interval_ms=100, max_idle_interval_ms=300)
    async with EmbeddedServer(cfg) as server:
        raw = await RawClient.connect(server)
        rt = python_realtime(server, client_id="idle", realtime_request_timeout=300)
        session = aiohttp.ClientSession()
        try:
            await wait_connected(rt)
            connection_id = rt.connection.connection_manager.connection_id
            states, on_state = collector()
            rt.connection.on(on_state)
            # Opened after both realtime sockets: each close below proves they are older than the bound.
            for _ in range(2):
                reader, writer = await asyncio.open_connection(server.host, server.port)
                writer.write(b"GET /ti")
                await writer.drain()
                async with session.get(f"http://{server.endpoint}/time") as resp:
                    assert resp.status == 200
                assert await _until_closed(reader) == b""
                writer.close()
            # A complete request is answered, then its kept-alive connection closed once idle.
            reader, writer = await asyncio.open_connection(server.host, server.port)
            writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            answer = await _until_closed(reader)
            writer.close()
            assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"yes"), answer
            # The realtime sockets are still up and answer.
            await raw.send({"action": HEARTBEAT, "id": "still-there"})
            assert await raw.expect(HEARTBEAT) == {"action": HEARTBEAT, "id": "still-there"}
            assert states == [], "ably-python saw no disconnect"
            assert rt.connection.connection_manager.connection_id == connection_id
            channel = rt.channels.get("idle-check")
            await channel.attach()
        finally:
            await session.close()
            await rt.close()
            await raw.close()


async def test_a_rest_body_that_stops_arriving_is_refused_408() -> None:
    """A REST request (here requestToken) whose body stalls after its headers held its connection
    and handler for ever (the idle bound applies only between requests); now it is answered
    408 / 40800 after ``http_body_timeout_s``, and other requests are served meanwhile."""
    cfg = ServerConfig(http_body_timeout_s=0.2)
    async with EmbeddedServer(cfg) as server, aiohttp.ClientSession() as session:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        key_name = server.default_key.partition(":")[0]
        writer.write(
            f"POST /keys/{key_name}/requestToken HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"ttl":'.encode()
        )
        await writer.drain()
        async with session.get(f"http://{server.endpoint}/time") as resp:
            assert resp.status == 200
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        writer.close()
        assert head.startswith(b"HTTP/1.1 408"), head
        assert b"X-Ably-Errorcode: 40800" in head and b"Connection: close" in head, head
