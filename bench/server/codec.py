"""Micro-benchmark of the embedded server's body/frame encoding: ``python -m bench.server.codec``.

Encodes REST history pages (``codec.encode_body``) and realtime MESSAGE frames
(``codec.encode_frame``) of AIT-shaped messages — the shape ``MessageLog.render_latest`` +
``outbound_payload`` give the REST handler: the record header, ``data``, ``extras.ai.transport`` /
``extras.ai.codec`` headers as the official agent writes them, ``action`` and ``version`` — and
prints microseconds per message for each format, with the time spent dropping ``None`` fields
shown separately. In-process and CPU-bound: numbers depend on the machine, not on other processes'
I/O. Not a test.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from agent_worker.server import codec


def ait_message(i: int) -> dict[str, Any]:
    """One history item as the REST handler hands it to ``encode_body`` (top-level None dropped)."""
    transport = {
        "role": "assistant",
        "codec-message-id": f"msg-{i:06d}-4f1c9a",
        "run-id": f"run-{i // 2:06d}",
        "run-client-id": "alice",
        "parent": f"msg-{i - 1:06d}-4f1c9a",
        "invocation-id": f"inv-{i // 2:06d}",
        "input-client-id": "alice",
        "input-codec-message-id": f"msg-{i - 1:06d}-4f1c9a",
        "step-id": f"step-{i:06d}",
        "step-client-id": "agent-worker",
        "stream": "true",
        "status": "complete",
        "stream-id": f"text-{i:06d}",
    }
    item = {
        "id": f"Kq3xP0aZ:{i}",
        "clientId": "agent-worker",
        "connectionId": "c0nnAbCdEf",
        "timestamp": 1_763_700_000_000 + i,
        "serial": f"01763700000000-{i:03d}@bench:0",
        "name": "ai-output",
        "data": "The quick brown fox jumps over the lazy dog. " * 6,
        "extras": {"ai": {"transport": transport, "codec": {"kind": "text", "id": f"t{i}"}}},
        "action": 1,
        "version": {"serial": f"01763700000100-{i:03d}@bench:0", "timestamp": 1_763_700_000_100 + i},
    }
    return codec.outbound_payload(item, codec.JSON)


def _per_message_us(fn: Callable[[], Any], messages: int, min_s: float) -> float:
    """Best of repeated timing loops (the minimum is the least disturbed by other work)."""
    best = float("inf")
    spent = 0.0
    while spent < min_s:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        spent += dt
        best = min(best, dt)
    return best / messages * 1e6


def measure(page: int = 100, min_s: float = 1.0) -> dict[str, float]:
    items = [ait_message(i) for i in range(page)]
    drop_none = getattr(codec, "_drop_none", None)
    frame = {"action": 15, "channel": "bench", "channelSerial": "x", "messages": items}
    out: dict[str, float] = {}
    for f in (codec.JSON, codec.MSGPACK):
        out[f"history page, {f}"] = _per_message_us(partial(codec.encode_body, items, f), page, min_s)
        out[f"MESSAGE frame, {f}"] = _per_message_us(partial(codec.encode_frame, frame, f), page, min_s)
    if drop_none is not None:
        out["of which None-dropping"] = _per_message_us(lambda: drop_none(items), page, min_s)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.server.codec", description=__doc__)
    parser.add_argument("--page", type=int, default=100, help="messages per page / frame")
    parser.add_argument("--seconds", type=float, default=1.0, help="time spent on each measurement")
    args = parser.parse_args(argv)
    for label, us in measure(args.page, args.seconds).items():
        print(f"{label:>24}: {us:6.2f} µs/message")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
