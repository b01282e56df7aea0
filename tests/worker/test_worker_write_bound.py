"""The worker's HTTP app drops a caller that stops reading its answer — the 1.1 MB web client,
asked for again and again on one connection — or trickles it out slower than 16 KiB per
``[http] write_timeout_s``, and serves other callers throughout; a caller reading slowly but
steadily gets every answer, however long they take (agent_worker/conncap.py)."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field

import structlog
from aiohttp import web

from agent_worker.config import HttpConfig
from agent_worker.conncap import MIN_PROGRESS_BYTES, CappedSite
from agent_worker.web import WebSettings, static_file
from agent_worker.worker.admission import Invocation
from agent_worker.worker.http import serve
from agent_worker.worker.metrics import WorkerMetrics
from tests.server.server_support import eventually
from tests.server.test_write_bound import read_to_end, serve_while, stalled_client


@dataclass
class _Worker:
    """Just what ``/healthz`` reads."""

    metrics: WorkerMetrics = field(default_factory=WorkerMetrics)
    transport: None = None
    state: str = "running"
    active_runs: tuple[()] = ()
    sessions: tuple[()] = ()

    async def invoke(
        self, session_name: object, input_event_id: object, *, caller_client_id: str | None = None
    ) -> Invocation:  # pragma: no cover - not invoked here
        raise NotImplementedError


async def test_a_web_client_reader_that_stops_reading_is_dropped_and_others_are_served() -> None:
    assert len(static_file("app.js")) > 500_000  # the bundle this is about
    config = HttpConfig(port=0, write_timeout_s=0.2)
    runner = await serve(_Worker(), config, host="127.0.0.1", web_client=WebSettings(ably_host=None))
    (site,) = runner.sites
    assert isinstance(site, CappedSite)
    cap = site.cap
    try:
        with structlog.testing.capture_logs() as logs:
            # No Accept-Encoding: the whole bundle, asked for 8 times (pipelined) and never read.
            request = b"GET /app.js HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            sock = await stalled_client("127.0.0.1", site.port, 8 * request)
            done = asyncio.Event()
            others = asyncio.create_task(serve_while(f"http://127.0.0.1:{site.port}/index.html", done))
            await eventually(lambda: cap.stalled == 1, what="the stalled reader dropped")
            done.set()
            assert await others >= 1
            await read_to_end(sock)
            await eventually(lambda: cap.open == 0, what="every connection released")
        assert [e["listener"] for e in logs if e["event"] == "connections_write_timed_out"] == [
            "the worker's HTTP endpoint"
        ]
    finally:
        await runner.cleanup()


async def _read_slowly(sock: socket.socket, want: int, chunk: int, every_s: float) -> tuple[int, str]:
    """Read ``chunk`` bytes every ``every_s`` until ``want`` bytes came or the server ended it."""
    loop = asyncio.get_running_loop()
    got = 0
    with sock:
        while got < want:
            try:
                data = await asyncio.wait_for(loop.sock_recv(sock, chunk), 30)
            except ConnectionResetError:
                return got, "reset"
            if not data:
                return got, "closed"
            got += len(data)
            await asyncio.sleep(every_s)
    return got, "complete"


async def _web_client_site(write_timeout_s: float) -> tuple[web.AppRunner, CappedSite]:
    config = HttpConfig(port=0, write_timeout_s=write_timeout_s)
    runner = await serve(_Worker(), config, host="127.0.0.1", web_client=WebSettings(ably_host=None))
    (site,) = runner.sites
    assert isinstance(site, CappedSite)
    return runner, site


async def test_a_slow_but_steady_reader_of_large_answers_is_not_cut() -> None:
    """Each answer is written in one piece, so behind a small kernel send buffer (a slow path's;
    set here on the listening socket, which the accepted ones inherit) the transport holds most of
    the 1.1 MB bundle. Before, only the transport draining back to its 16 KiB low-water mark counted
    as progress, so the bundle had to go out almost whole within the bound: this reader, steady at
    under a megabyte a second, was cut at a 0.5 s bound. Now 16 KiB per bound is progress enough
    (what the kernel still holds counts too: on loopback it takes the transport's bytes in lumps of
    megabytes)."""
    bundle = len(static_file("app.js"))
    runner, site = await _web_client_site(0.5)
    try:
        for listening in site._server.sockets:  # type: ignore[union-attr]
            listening.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, ("127.0.0.1", site.port))
        await loop.sock_sendall(sock, 2 * b"GET /app.js HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        got, how = await _read_slowly(sock, 2 * bundle, 16384, 0.01)
        assert (how, site.cap.stalled) == ("complete", 0), got
    finally:
        await runner.cleanup()


async def test_a_trickle_reader_is_dropped_though_it_reads() -> None:
    """A caller that keeps reading, but a few bytes at a time (here ~20 KB/s against a floor of
    16 KiB per 0.2 s), holds its connection no longer than one that stopped."""
    runner, site = await _web_client_site(0.2)
    assert MIN_PROGRESS_BYTES / 0.2 > 2 * 1024 / 0.05  # the floor: over twice this reader's rate
    try:
        request = b"GET /app.js HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        sock = await stalled_client("127.0.0.1", site.port, 8 * request)
        got, how = await _read_slowly(sock, 8 * len(static_file("app.js")), 1024, 0.05)
        # Reset: what the kernel held for it is dropped too, not trickled out after the close.
        assert (how, site.cap.stalled) == ("reset", 1), got
        await eventually(lambda: site.cap.open == 0, what="the connection released")
    finally:
        await runner.cleanup()
