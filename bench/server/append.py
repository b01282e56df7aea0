"""Micro-benchmark of the embedded server's realtime publish path: ``python -m bench.server.append``.

In-process, no sockets: a publisher connection and ``--subscribers`` subscriber connections (msgpack,
their socket writers replaced by counters) attached to one channel; ``--streams`` messages created,
then AIT-shaped text appends (13 ``extras.ai.transport`` + 2 ``extras.ai.codec`` headers, as the
official agent writes them) round-robin over them, each frame decoded and handled as the WebSocket
loop does — decode and depth check, msgSerial dedupe, checks, log, fan-out encode, ACK (one per 10
frames, as one socket read brings several). Prints CPU microseconds per append (best of
``--reps`` slices). Measures the server's own Python per append, not aiohttp's reading and writing
or the kernel's. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import time
from typing import Any

import msgpack

from agent_worker.server import EmbeddedServer, ServerConfig
from agent_worker.server import constants as C
from agent_worker.server.codec import MSGPACK, decode_frame
from agent_worker.server.connection import RealtimeConnection


class _CountingTransport:
    closing = False

    def __init__(self) -> None:
        self.frames = 0

    def enqueue(self, data: str | bytes) -> None:
        self.frames += 1

    def abort(self) -> None:
        return None


def _extras() -> dict[str, Any]:
    transport = {f"header-{i}": f"value-{i:02d}-" + "x" * 12 for i in range(13)}
    return {"ai": {"transport": transport, "codec": {"kind": "text-delta", "id": "t0"}}}


async def run(appends: int, streams: int, subscribers: int, reps: int, window_ms: int) -> float:
    config = ServerConfig(host="127.0.0.1", port=0)
    async with EmbeddedServer(config) as server:
        gateway = server._gateway
        assert gateway is not None
        conns = []
        for i in range(1 + subscribers):
            principal = gateway.authenticate({"key": server.default_key, "clientId": f"c{i}"})
            conn = RealtimeConnection(gateway, principal, f"c{i}", MSGPACK, True)
            conn.transport = _CountingTransport()  # type: ignore[assignment]
            conn.rollup_window_ms = window_ms
            gateway.connections[conn.id] = conn
            conns.append(conn)
        channel = "bench:append"
        for conn in conns:
            conn.handle({"action": C.ATTACH, "channel": channel})
        pub, extras = conns[0], _extras()
        for j in range(streams):
            create = {"name": "ai-output", "data": "", "extras": extras}
            pub.handle({"action": C.MESSAGE, "channel": channel, "msgSerial": j, "messages": [create]})
        await asyncio.sleep(0)
        serials = list(server.hub.channels[channel].log.records)
        frames = [
            msgpack.packb(
                {
                    "action": C.MESSAGE,
                    "channel": channel,
                    "msgSerial": streams + i,
                    "messages": [
                        {
                            "action": 5,
                            "serial": serials[i % streams],
                            "name": "ai-output",
                            "data": " tok",
                            "extras": extras,
                        }
                    ],
                }
            )
            for i in range(appends)
        ]
        # A tree from before the frame-size argument (this file copied into an older checkout, for A/B).
        sized = len(inspect.signature(pub.handle).parameters) > 1
        best = float("inf")
        per = appends // reps
        for rep in range(reps):
            chunk = frames[rep * per : (rep + 1) * per]
            started = time.process_time()
            for i, raw in enumerate(chunk):
                frame = decode_frame(raw, MSGPACK, config.frame_limit)
                if sized:
                    pub.handle(frame, len(raw))
                else:
                    pub.handle(frame)
                if i % 10 == 9:
                    await asyncio.sleep(0)  # the loop turn that flushes the ACK
            best = min(best, (time.process_time() - started) / len(chunk))
        for conn in conns:
            conn.transport = None
        return best * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.server.append", description=__doc__)
    parser.add_argument("--appends", type=int, default=30_000)
    parser.add_argument("--streams", type=int, default=100, help="messages the appends go to, round-robin")
    parser.add_argument("--subscribers", type=int, default=1, help="besides the publisher's own echo")
    parser.add_argument("--reps", type=int, default=6)
    args = parser.parse_args(argv)
    us = asyncio.run(run(args.appends, args.streams, args.subscribers, args.reps, 0))
    print(f"{us:.1f} us CPU per append ({args.subscribers} subscriber(s) + echo, best of {args.reps})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
