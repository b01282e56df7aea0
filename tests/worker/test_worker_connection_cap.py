"""The worker's HTTP port holds at most ``[http] max_connections`` connections: past it a new one is
answered 503 / 50300 and closed, while a caller already connected still invokes runs; a place freed
is taken by the next caller."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from typer.testing import CliRunner
from yarl import URL

from agent_worker.cli import app
from agent_worker.config import Config, HttpConfig
from agent_worker.conncap import CappedSite, ConnectionCap
from agent_worker.providers.echo import EchoProvider
from agent_worker.worker.main import Overrides, apply_overrides
from tests.runtime.runtime_support import ChatClient, Harness
from tests.server.server_support import eventually

CAP = 4


def _cap(harness: Harness) -> ConnectionCap:
    (site,) = harness.runner.sites
    assert isinstance(site, CappedSite)
    return site.cap


async def test_connections_past_the_cap_are_refused_and_a_caller_inside_still_invokes(
    make_worker: Any, make_client: Any, session_name: str
) -> None:
    harness: Harness = await make_worker(EchoProvider(), http=HttpConfig(port=0, max_connections=CAP))
    cap = _cap(harness)
    url = URL(harness.url)
    health = url.with_path("/healthz")
    # A caller's kept-alive connection, one of CAP (kept as long as the server keeps it).
    caller = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1, keepalive_timeout=3600))
    async with caller.get(health) as resp:
        assert resp.status == 200
    idle = [await asyncio.open_connection(url.host, url.port) for _ in range(CAP - 1)]
    try:
        await eventually(lambda: cap.open == CAP, what="the cap's worth of connections")
        reader, writer = await asyncio.open_connection(url.host, url.port)
        writer.write(f"GET /healthz HTTP/1.1\r\nHost: {url.host}\r\n\r\n".encode())
        raw = await asyncio.wait_for(reader.read(), 30)  # the refusal closes the socket
        writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503"), head
        assert json.loads(body)["error"]["code"] == 50300
        async with aiohttp.ClientSession() as stranger, stranger.post(url, json={}) as resp:
            assert resp.status == 503
            assert resp.headers["Retry-After"] == "1"

        # The caller inside invokes a run as before, over its connection.
        client: ChatClient = await make_client()
        sent = await client.send_text("hello")
        async with caller.post(
            url, json={"inputEventId": sent.event_id, "sessionName": session_name}
        ) as resp:
            assert resp.status == 200, await resp.text()
        end = await client.run_end_for(sent.codec_message_id)
        assert end.transport_headers["run-reason"] == "complete"
        assert cap.refused == 2

        idle[0][1].close()
        await eventually(lambda: cap.open < CAP, what="the closed connection to be released")
        async with aiohttp.ClientSession() as newcomer, newcomer.get(health) as resp:
            assert resp.status == 200
    finally:
        for _, w in idle:
            w.close()
        await caller.close()


@pytest.mark.parametrize(
    "case",
    [
        (
            "--http-max-connections",
            "AGENT_WORKER_HTTP_MAX_CONNECTIONS",
            "max_connections",
            7,
            1024,
            "at least 1",
        ),
        (
            "--http-write-timeout-s",
            "AGENT_WORKER_HTTP_WRITE_TIMEOUT_S",
            "write_timeout_s",
            2.5,
            30.0,
            "a finite number of seconds above 0",
        ),
    ],
)
def test_the_cli_flags_set_the_http_bounds(case: tuple[str, str, str, float, float, str]) -> None:
    """Each flag (and its variable) reaches ``[http]``; a value out of range is refused before
    anything starts."""
    flag, env, field, value, default, refusal = case
    overrides = (
        Overrides(http_max_connections=int(value))
        if field == "max_connections"
        else Overrides(http_write_timeout_s=value)
    )
    cfg = apply_overrides(Config(), overrides)
    assert getattr(cfg.http, field) == value
    assert getattr(Config().http, field) == default
    result = CliRunner().invoke(app, ["run", flag, "0"])
    assert result.exit_code == 1
    assert f"{flag} must be {refusal}" in result.output
    result = CliRunner().invoke(app, ["run"], env={env: "-1"})
    assert f"{flag} must be {refusal}" in result.output
