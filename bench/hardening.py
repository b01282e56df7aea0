"""Hardening numbers: a bystander's round trip during each attack, and memory with slow consumers.

``python -m bench hardening``. The bystander sends a HEARTBEAT with an id and times the echo every
50 ms for 5 s per scenario, while the attack runs on other sockets of the same embedded server (in process).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp

from agent_worker.server import EmbeddedServer, ServerConfig

MESSAGE, HEARTBEAT, ACK = 15, 0, 1


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Ws:
    def __init__(self, http: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.http, self.ws = http, ws

    @classmethod
    async def open(cls, server: EmbeddedServer, client_id: str) -> Ws:
        http = aiohttp.ClientSession()
        ws = await http.ws_connect(
            f"ws://{server.endpoint}/", params={"key": server.default_key, "clientId": client_id}
        )
        await ws.receive_json()  # CONNECTED
        return cls(http, ws)

    async def rtt(self, n: int) -> float:
        started = time.perf_counter()
        await self.ws.send_str(json.dumps({"action": HEARTBEAT, "id": f"b{n}"}))
        while True:
            msg = await self.ws.receive(timeout=60)
            if msg.type != aiohttp.WSMsgType.TEXT:
                msg_text = f"bystander socket closed: {msg.type}"
                raise RuntimeError(msg_text)
            if json.loads(msg.data).get("id") == f"b{n}":
                return time.perf_counter() - started

    async def close(self) -> None:
        await self.ws.close()
        await self.http.close()


async def deep_frames(server: EmbeddedServer, stop: asyncio.Event) -> None:
    frame = json.dumps({"action": MESSAGE, "channel": "x", "msgSerial": 0, "messages": [{"data": "D"}]})
    frame = frame.replace('"D"', "[" * 965 + "]" * 965)
    while not stop.is_set():
        ws = await Ws.open(server, "mallory")
        await ws.ws.send_str(frame)
        await ws.ws.receive(timeout=30)
        await ws.close()


async def huge_bodies(server: EmbeddedServer, stop: asyncio.Event) -> None:
    body = b"[" * (9 << 20)
    async with aiohttp.ClientSession() as http:
        while not stop.is_set():
            async with http.post(f"http://{server.endpoint}/keys/x/requestToken", data=body) as resp:
                await resp.read()


async def slow_consumers(server: EmbeddedServer, stop: asyncio.Event) -> None:
    slow = [await Ws.open(server, f"slow{i}") for i in range(3)]
    for s in slow:
        await s.ws.send_str(json.dumps({"action": 10, "channel": "firehose"}))
    pub = await Ws.open(server, "pub")
    n = 0
    payload = "x" * 60_000
    while not stop.is_set():
        await pub.ws.send_str(
            json.dumps(
                {"action": MESSAGE, "channel": "firehose", "msgSerial": n, "messages": [{"data": payload}]}
            )
        )
        n += 1
        await asyncio.sleep(0.002)
    for c in (*slow, pub):
        await c.close()


async def measure(
    name: str, attack: Callable[[EmbeddedServer, asyncio.Event], Coroutine[Any, Any, None]] | None, **cfg: Any
) -> None:
    async with EmbeddedServer(ServerConfig(**cfg)) as server:
        bystander = await Ws.open(server, "bystander")
        stop = asyncio.Event()
        task = asyncio.create_task(attack(server, stop)) if attack else None
        before = rss_mb()
        rtts: list[float] = []
        started = time.perf_counter()
        queued = 0
        gateway = server._gateway
        assert gateway is not None
        while time.perf_counter() - started < 5.0:  # 5 s of attack, a round trip every 50 ms
            rtts.append(await bystander.rtt(len(rtts)))
            now = sum(c.transport.queued_bytes for c in gateway.connections.values() if c.transport)
            queued = max(queued, now)
            await asyncio.sleep(0.05)
        rtts.sort()
        grown = rss_mb() - before
        stop.set()
        if task is not None:
            await asyncio.wait_for(task, 60)
        await bystander.close()
    p50, p99 = statistics.median(rtts) * 1000, rtts[int(len(rtts) * 0.99)] * 1000
    print(f"| {name} | {p50:.1f} | {p99:.1f} | {grown:+.0f} | {queued / 2**20:.1f} |")


async def run() -> None:
    print("| scenario (5 s each) | bystander RTT p50 ms | p99 ms | RSS change, MB | max queued out, MiB |")
    print("|---|---|---|---|---|")
    await measure("idle", None)
    await measure("deep JSON frames (depth 965), new socket each", deep_frames)
    await measure("9 MB requestToken bodies, back to back", huge_bodies)
    await measure("3 non-reading subscribers + 60 KB publisher (8 MiB cap, default)", slow_consumers)
    await measure(
        "3 non-reading subscribers + 60 KB publisher (no byte cap, as before)",
        slow_consumers,
        max_outbound_bytes=1 << 62,
    )


def main(argv: list[str] | None = None) -> int:
    asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
