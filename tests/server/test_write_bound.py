"""A client that sends requests and never reads the answers no longer holds its connection, the
handler writing to it and the bytes buffered for it for ever (aiohttp has no write timeout): once
its writes make no progress for ``http_write_timeout_s`` the connection is aborted, logged once per
burst, while other clients are served throughout. A response that keeps draining is never cut,
however long it lasts (agent_worker/conncap.py)."""

from __future__ import annotations

import asyncio
import base64
import socket
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
import structlog
from aiohttp import web

from agent_worker.conncap import CappedSite, ConnectionCap
from agent_worker.errors import ConfigError
from agent_worker.server import EmbeddedServer, ServerConfig
from tests.server.server_support import MESSAGE, eventually, flood

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
TIMEOUT = 0.2  # small so the test is quick; what is asserted is the outcome, not the time


async def stalled_client(host: str, port: int, request: bytes) -> socket.socket:
    """A socket with a tiny receive buffer that sends ``request`` and never reads."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, (host, port))
    await loop.sock_sendall(sock, request)
    return sock


async def read_to_end(sock: socket.socket) -> None:
    """Read what the server sent until the connection ends (EOF or reset)."""
    loop = asyncio.get_running_loop()
    with sock:
        while True:
            try:
                chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 30)
            except ConnectionResetError:
                return
            if not chunk:
                return


async def serve_while(url: str, done: asyncio.Event) -> int:
    """GET ``url`` on fresh connections until ``done``; each must be answered 200. Returns how many."""
    served = 0
    async with aiohttp.ClientSession() as http:
        while True:
            async with http.get(url) as resp:
                assert resp.status == 200
                await resp.read()
            served += 1
            if done.is_set():
                return served
            await asyncio.sleep(0.01)


async def test_a_history_reader_that_stops_reading_is_dropped_and_others_are_served() -> None:
    cfg = ServerConfig(http_write_timeout_s=TIMEOUT)
    async with EmbeddedServer(cfg) as server, aiohttp.ClientSession() as http:
        cap = server.connection_cap
        auth = "Basic " + base64.b64encode(server.default_key.encode()).decode()
        big = "x" * (48 << 10)
        for i in range(40):  # a ~2 MB page (asked for 4 times per connection: more than kernels buffer)
            body = {"name": "n", "data": f"{i}-{big}"}
            async with http.post(
                f"http://{server.endpoint}/channels/big/messages", json=body, headers={"Authorization": auth}
            ) as resp:
                assert resp.status == 201, await resp.text()

        with structlog.testing.capture_logs() as logs:
            request = (
                "GET /channels/big/messages?limit=1000 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: {auth}\r\n"
                "Accept: application/json\r\n\r\n"
            )
            stuck = [await stalled_client(server.host, server.port, 4 * request.encode()) for _ in range(2)]
            done = asyncio.Event()
            others = asyncio.create_task(serve_while(f"http://{server.endpoint}/time", done))
            await eventually(lambda: cap.stalled == 2, what="both stalled readers dropped")
            done.set()
            assert await others >= 1  # served throughout, on connections of their own
            for sock in stuck:
                await read_to_end(sock)  # the server ended it (read to the reset, not for ever)
            await eventually(lambda: cap.open == 1, what="only the test's own client connection left")
            await eventually(lambda: any(e["event"] == "connections_write_timeouts_ended" for e in logs))
        timed_out = [e for e in logs if e["event"] == "connections_write_timed_out"]
        assert len(timed_out) == 1, logs  # once per burst, not per connection
        assert timed_out[0]["timeout_s"] == TIMEOUT
        ended = [e for e in logs if e["event"] == "connections_write_timeouts_ended"]
        assert ended[0]["aborted"] == 2


async def test_a_realtime_socket_that_stops_reading_is_dropped_below_its_byte_bound() -> None:
    """Before, a realtime client that stopped reading with its socket full was dropped only once
    ``max_outbound_bytes`` more had queued for it; now after ``http_write_timeout_s`` too."""
    async with EmbeddedServer(ServerConfig(http_write_timeout_s=TIMEOUT)) as server, flood(server) as f:
        while server.connection_cap.stalled == 0:  # the slow client never reads
            assert f.sent < 2000, "the slow reader was never dropped"
            await f.publish_one()  # the others are served throughout
        assert f.transport.queued_bytes < server.config.max_outbound_bytes
        await eventually(f.transport._writer.done, what="the slow socket's writer ended")
        await f.pub.publish("flood", [{"name": "n", "data": "after"}])
        assert (await f.bystander.expect(MESSAGE))["messages"][0]["data"] == "after"


async def _capped_app(handler: Handler, *, write_timeout_s: float) -> tuple[web.AppRunner, CappedSite]:
    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = CappedSite(runner, "127.0.0.1", 0, ConnectionCap(16, name="test", write_timeout_s=write_timeout_s))
    await site.start()
    return runner, site


async def test_a_stream_is_bounded_per_write_not_in_total_and_its_handler_ends() -> None:
    chunk = b"y" * (256 << 10)
    ended: list[str] = []

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        try:
            for _ in range(int(request.query["chunks"])):
                await resp.write(chunk)
                await asyncio.sleep(TIMEOUT / 4)  # the stream lasts several times the bound
            await resp.write_eof()
            ended.append("complete")
        except ConnectionError:  # the write failed: the connection was aborted
            ended.append("aborted")
        except asyncio.CancelledError:  # (or the handler was cancelled with it)
            ended.append("aborted")
            raise
        return resp

    runner, site = await _capped_app(stream, write_timeout_s=TIMEOUT)
    cap = site.cap
    try:
        # A reader that keeps reading gets the whole stream, though it lasts past the bound.
        url = f"http://127.0.0.1:{site.port}/?chunks=12"
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            assert len(await resp.read()) == 12 * len(chunk)
        assert ended == ["complete"]
        assert cap.stalled == 0

        # A reader that stops: dropped, and the handler parked in its write ends.
        sock = await stalled_client("127.0.0.1", site.port, b"GET /?chunks=1000 HTTP/1.1\r\nHost: x\r\n\r\n")
        await eventually(lambda: ended == ["complete", "aborted"], what="the stalled stream's handler ended")
        assert cap.stalled == 1
        await read_to_end(sock)
        await eventually(lambda: cap.open == 0, what="the connection released")
    finally:
        await runner.cleanup()


async def test_a_close_waiting_behind_unread_bytes_is_dropped() -> None:
    """Once a handler has finished, closing its connection (``Connection: close``, or the idle
    bound) waited for ever for the bytes the client never read: the transport was not paused (less
    than its high-water mark buffered), so no handler waited, but the socket stayed."""

    async def big(request: web.Request) -> web.Response:
        transport = request.transport
        assert transport is not None
        transport.set_write_buffer_limits(high=64 << 20)  # never paused: the bytes wait in the close
        resp = web.Response(body=b"z" * (8 << 20))
        resp.force_close()
        return resp

    runner, site = await _capped_app(big, write_timeout_s=TIMEOUT)
    try:
        sock = await stalled_client("127.0.0.1", site.port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await eventually(lambda: site.cap.stalled == 1, what="the close given up")
        await read_to_end(sock)
        await eventually(lambda: site.cap.open == 0, what="the connection released")
    finally:
        await runner.cleanup()


def test_a_write_timeout_must_be_positive() -> None:
    with pytest.raises(ConfigError):
        ConnectionCap(4, name="test", write_timeout_s=0)
