"""``AW_BENCH_SENDLOG=prefix``: when each scripted token left the agent, for both agents.

Diagnostics only (where the N-stream latency goes: the agent, or the server and the client). The
Python worker wraps ably-python's ``WebSocketTransport.send`` (the frame is encoded and written to
the socket in that call) and ``Channel.start_append`` (the writer hands the append over); the JS
agent (tests/js/bench/agent.mjs) wraps ``ws``'s ``WebSocket.send``, where ably-js writes each frame.
For every ``<seq>:<us>;`` token in an outgoing frame, each logs ``[seq, us, sent_us]`` (and the
worker ``[seq, us, handed_us]``), in CLOCK_MONOTONIC microseconds, to ``<prefix>-<kind>-<pid>.json``
when it exits. Nothing here runs in production.

``python -m bench.agent.sendlog RAW.json PREFIX`` joins the logs with a ``--json`` dump of a run
made with ``AW_BENCH_TIMELINE=1`` (the client's receive time per token) and prints, per agent, over
the N-stream phase's steady tokens: model → socket (the agent), socket → client (the server's
fan-out and the client, shared by both agents), and the client's total.
"""

from __future__ import annotations

import atexit
import glob
import json
import os
import re
import sys
import time
from typing import Any

__all__ = ["install", "main"]

_TOKEN = re.compile(r"(\d+):(\d{6,});")


def _now() -> int:
    return time.monotonic_ns() // 1000


def install(prefix: str) -> None:
    """Wrap the worker's send path (call before the worker connects)."""
    from ably.transport.websockettransport import WebSocketTransport  # noqa: PLC0415

    from agent_worker.transport.ably import Channel  # noqa: PLC0415

    sent: list[list[int]] = []
    handed: list[list[int]] = []
    frames = [0, 0]  # frames with tokens, tokens in them

    def tokens(data: object) -> list[tuple[int, int]]:
        if not isinstance(data, str):
            return []
        return [(int(a), int(b)) for a, b in _TOKEN.findall(data)]

    send = WebSocketTransport.send

    async def traced_send(self: Any, message: dict[str, Any]) -> Any:
        t = _now()
        found = False
        for m in message.get("messages") or ():
            for seq, us in tokens(m.get("data") if isinstance(m, dict) else None):
                sent.append([seq, us, t])
                found = True
                frames[1] += 1
        frames[0] += found
        return await send(self, message)

    start_append = Channel.start_append

    def traced_start_append(self: Any, serial: str, msg: Any) -> Any:
        t = _now()
        for seq, us in tokens(msg.data):
            handed.append([seq, us, t])
        return start_append(self, serial, msg)

    inbound: dict[str, int] = {}
    decode = WebSocketTransport.decode_raw_websocket_frame

    def counted_decode(self: Any, raw: Any) -> Any:
        msg = decode(self, raw)
        key = str(msg.get("action"))
        inbound[key] = inbound.get(key, 0) + 1
        return msg

    WebSocketTransport.send = traced_send  # type: ignore[method-assign]
    WebSocketTransport.decode_raw_websocket_frame = counted_decode  # type: ignore[method-assign]
    Channel.start_append = traced_start_append  # type: ignore[method-assign]

    def dump() -> None:
        path = f"{prefix}-py-{os.getpid()}.json"
        times = os.times()
        status = open("/proc/self/status").read()  # noqa: SIM115
        switches = {k: int(v) for k, v in re.findall(r"(\w*ctxt_switches):\s+(\d+)", status)}
        out = {"kind": "py", "sent": sent, "handed": handed, "frames": frames, "inbound": inbound}
        out["cpu"] = {"user": times.user, "system": times.system, **switches}
        with open(path, "w") as fh:
            json.dump(out, fh)

    atexit.register(dump)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def _row(name: str, values: list[float]) -> str:
    qs = " / ".join(f"{_pct(values, q) / 1000:.2f}" for q in (50, 90, 99))
    return f"    {name:<34} p50 / p90 / p99 {qs} ms (n={len(values)})"


def steady_receipts(result: dict[str, Any]) -> tuple[dict[tuple[int, int], float], int] | None:
    """The client's receive time per (stream, seq) token of the N-stream phase, and the time from
    which tokens count as steady (every stream had delivered its first); None without a timeline."""
    timeline = (result.get("latencyN") or {}).get("timeline")
    if not timeline:
        return None
    recv = {(s[0], s[1]): s[2] for stream in timeline for s in stream["samples"]}
    return recv, max(stream["samples"][0][2] for stream in timeline if stream["samples"])


def main(argv: list[str]) -> int:
    raw = json.loads(open(argv[0]).read())["raw"]  # noqa: SIM115
    logs = [json.loads(open(p).read()) for p in sorted(glob.glob(f"{argv[1]}-*.json"))]  # noqa: SIM115
    for variant, result in raw.items():
        receipts = steady_receipts(result)
        if receipts is None:
            continue
        recv, steady_from = receipts
        best = max(logs, key=lambda log: sum((s[0], s[1]) in recv for s in log["sent"][:2000]), default=None)
        last = max(key[1] for key in recv)
        print(f"  {variant}: steady tokens emitted {steady_from} .. {last} us")
        client = [t - us for (_, us), t in recv.items() if us >= steady_from]
        print(_row("client latency (model → client)", client))
        if best is None:
            continue
        sent = {(s[0], s[1]): s[2] for s in best["sent"] if (s[0], s[1]) in recv and s[1] >= steady_from}
        print(_row("model → socket write (agent)", [t - us for (_, us), t in sent.items()]))
        print(_row("socket write → client (server+client)", [recv[k] - t for k, t in sent.items()]))
        if best.get("handed"):
            handed = {(s[0], s[1]): s[2] for s in best["handed"] if (s[0], s[1]) in sent}
            print(_row("model → start_append (agent loop)", [t - k[1] for k, t in handed.items()]))
            print(_row("start_append → socket write", [sent[k] - t for k, t in handed.items()]))
        frames, toks = best.get("frames", [0, 0])
        if frames:
            print(f"    frames with tokens {frames}, tokens per frame {toks / frames:.3f}")
        if best.get("cpu"):
            print(f"    process life CPU and context switches: {best['cpu']}")
        if best.get("inbound"):
            print(f"    inbound frames by action (whole process life): {best['inbound']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
