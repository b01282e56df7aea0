"""REST requests through the SDK are bounded per client (transport/ably.py ``rest_request``).

Found by the 500-stream benchmark: 500 run ends looking up presence at once queued 500 requests
in ably-python's httpx pool, whose per-event re-matching of every queued request against every
connection took seconds of CPU. Against a real Ably-shaped HTTP endpoint (aiohttp on loopback),
50 concurrent lookups must reach it at most ``REST_IN_FLIGHT`` at a time, and all succeed."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from ably import AblyRest
from aiohttp import web

from agent_worker.transport.ably import REST_IN_FLIGHT, rest_request


async def test_concurrent_rest_requests_are_bounded_per_client() -> None:
    in_flight = 0
    peak = 0
    release = asyncio.Event()

    async def presence(_request: web.Request) -> web.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await asyncio.wait_for(release.wait(), 10)
        finally:
            in_flight -= 1
        return web.json_response([{"clientId": "u", "connectionId": "c", "action": 1}])

    app = web.Application()
    app.router.add_get("/channels/{name}/presence", presence)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    site = web.SockSite(runner, sock)
    await site.start()
    port = sock.getsockname()[1]
    rest = AblyRest(
        token="test-token", rest_host="127.0.0.1", port=port, tls=False, use_binary_protocol=False
    )
    try:

        async def lookup(i: int) -> Any:
            return await rest_request(
                rest, "GET", f"/channels/c{i}/presence", "presence", params={"clientId": "u"}
            )

        tasks = [asyncio.create_task(lookup(i)) for i in range(50)]
        for _ in range(200):  # until the bound is reached (or, unbounded, passed)
            await asyncio.sleep(0.02)
            if in_flight >= REST_IN_FLIGHT:
                break
        await asyncio.sleep(0.2)
        assert in_flight == REST_IN_FLIGHT
        release.set()
        pages = await asyncio.gather(*tasks)
        assert [len(p.items) for p in pages] == [1] * 50
        assert peak == REST_IN_FLIGHT
    finally:
        release.set()
        await rest.close()
        await runner.cleanup()
