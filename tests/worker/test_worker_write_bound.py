"""The worker's HTTP app drops a caller that stops reading its answer — the 1.1 MB web client,
asked for again and again on one connection — once its writes make no progress for
``[http] write_timeout_s``, and serves other callers throughout (agent_worker/conncap.py)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import structlog

from agent_worker.config import HttpConfig
from agent_worker.conncap import CappedSite
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
            request = b"GET /app.js HTTP/1.1\r\nHost: x\r\n\r\n"
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
