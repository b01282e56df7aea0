"""``python -m bench.push``: the embedded server's ``POST /push/publish`` to one clientId with 1, 10
and 50 registered web devices, each a local push service on loopback (it answers 201 after reading
the body). Measures the publish round trip, which includes the RFC 8291 encryption and the VAPID
signature of every delivery and the deliveries themselves (the server waits for them).

Prints a Markdown table; ``--rounds N`` (default 30) per device count.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import time
from typing import Any

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent_worker.server import EmbeddedServer, ServerConfig

__all__ = ["main"]


async def _push_service() -> tuple[web.AppRunner, str, list[int]]:
    got: list[int] = []

    async def handle(request: web.Request) -> web.Response:
        got.append(len(await request.read()))
        return web.Response(status=201)

    app = web.Application()
    app.router.add_post("/push/{sub}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/push", got


async def _ticker(stalls: list[float]) -> None:
    """The event loop's responsiveness meanwhile: how late a 1 ms sleep wakes (the server, the
    push services and this client share the loop, as the server shares it with its connections)."""
    while True:
        start = time.perf_counter()
        await asyncio.sleep(0.001)
        stalls.append((time.perf_counter() - start) * 1000 - 1)


def _device(i: int, base: str) -> dict[str, Any]:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    raw = key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    endpoint = f"{base}/{i}"
    return {
        "id": f"bench-{i}",
        "clientId": "alice",
        "platform": "browser",
        "formFactor": "desktop",
        "push": {
            "recipient": {
                "transportType": "web",
                "targetUrl": base64.b64encode(endpoint.encode()).decode(),
                "encryptionKey": {
                    "p256dh": base64.b64encode(raw).decode(),
                    "auth": base64.b64encode(os.urandom(16)).decode(),
                },
            }
        },
    }


async def run(rounds: int) -> list[tuple[int, float, float, float, float]]:
    rows = []
    async with EmbeddedServer(ServerConfig(push_allow_loopback_http=True)) as server:
        runner, base, got = await _push_service()
        token = base64.b64encode(server.mint_token("backend", {"*": ["push-admin"]}).encode()).decode()
        headers = {"Authorization": f"Bearer {token}"}
        url = f"http://{server.endpoint}"
        registered = 0
        async with aiohttp.ClientSession() as http:
            for devices in (1, 10, 50):
                while registered < devices:
                    async with http.post(
                        f"{url}/push/deviceRegistrations", json=_device(registered, base), headers=headers
                    ) as r:
                        assert r.status == 201, await r.text()
                    registered += 1
                body = {
                    "recipient": {"clientId": "alice"},
                    "notification": {
                        "title": "The agent has replied · conversations:bench",
                        "body": "x" * 160,
                    },
                    "data": {"sessionId": "conversations:bench", "runId": "r", "outcome": "complete"},
                }
                times = []
                stalls: list[float] = []
                ticking = asyncio.create_task(_ticker(stalls))
                for _ in range(rounds):
                    before = len(got)
                    start = time.perf_counter()
                    async with http.post(f"{url}/push/publish", json=body, headers=headers) as r:
                        report = await r.json()
                    times.append((time.perf_counter() - start) * 1000)
                    assert report["delivered"] == devices and len(got) - before == devices, report
                ticking.cancel()
                times.sort()
                p95 = times[max(0, round(0.95 * len(times)) - 1)]
                median = statistics.median(times)
                rows.append((devices, median, p95, median / devices, max(stalls, default=0.0)))
        await runner.cleanup()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.push")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args(argv)
    rows = asyncio.run(run(args.rounds))
    head = "| devices per clientId | publish round trip, median | p95 | per delivery | worst loop stall |"
    print(head)
    print("|---:|---:|---:|---:|---:|")
    for devices, median, p95, each, stall in rows:
        print(f"| {devices} | {median:.1f} ms | {p95:.1f} ms | {each:.2f} ms | {stall:.1f} ms |")
    return 0
