"""``AW_BENCH_SERVERLOG=prefix``: when each scripted token passed through the embedded server.

Diagnostics only (the part of the N-stream latency after the agent's socket write, which both
agents share). In the bench's server process it records, in CLOCK_MONOTONIC microseconds, for
every ``<seq>:<us>:<due>;`` token: when its bytes were read from the agent's socket (aiohttp's
``data_received``), when the server handled the frame (``RealtimeConnection.handle``) and when the
fan-out frame was written to the client's socket (``Transport._send``); per connection, the
frames and reads it saw (format, frame sizes, messages per frame, the keys of a frame and of its
messages, ACKs and batches written). Written to ``<prefix>-server-<pid>.json`` when the server exits.

``python -m bench.agent.serverlog RAW.json PREFIX`` joins it with a ``--json`` dump of a run made with
``AW_BENCH_TIMELINE=1`` (and ``AW_BENCH_SENDLOG=PREFIX``, for the agents' socket writes) and prints,
per agent, the steady tokens' time in each segment. Nothing here runs in production.
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

from bench.agent.sendlog import _pct, phase_arg, steady_receipts

__all__ = ["install", "main"]

_TOKEN = re.compile(rb"(\d+):(\d{6,})(?::\d+)?;")
_TOKEN_STR = re.compile(r"(\d+):(\d{6,})(?::\d+)?;")


def _now() -> int:
    return time.monotonic_ns() // 1000


def install(prefix: str) -> None:
    """Wrap the server's read, handle and write paths (call before the server accepts sockets)."""
    from aiohttp import web_protocol  # noqa: PLC0415

    from agent_worker.server import constants as C  # noqa: PLC0415
    from agent_worker.server.connection import RealtimeConnection  # noqa: PLC0415
    from agent_worker.server.websocket import Transport  # noqa: PLC0415

    read: list[list[int]] = []  # seq, us, t, reader id
    handled: list[list[Any]] = []  # seq, us, t, clientId
    written: list[list[int]] = []  # seq, us, t
    conns: dict[str, dict[str, Any]] = {}  # connection id -> stats
    by_transport: dict[int, dict[str, Any]] = {}
    reads: dict[int, list[int]] = {}  # protocol id -> [calls, bytes, time of the last]

    def stats(conn: Any) -> dict[str, Any]:
        row = conns.get(conn.id)
        if row is None:
            row = conns[conn.id] = {
                "clientId": conn.principal.client_id,
                "fmt": str(conn.fmt),
                "echo": conn.echo,
                "frames": {},
                "msgs_per_frame": {},
                "bytes_in": 0,
                "shapes": {},
                "examples": {},
                "writes": 0,
                "frames_out": 0,
                "bytes_out": 0,
                "acks_out": 0,
                "handle_ns": [],
                "send_ns": [],
            }
        return row

    received = web_protocol.RequestHandler.data_received

    def traced_received(self: Any, data: bytes) -> None:
        t = _now()
        # Client frames are masked: the tokens are found when the frame is handled, which looks up
        # the time of the last read on its socket (a later read before the handler ran moves it).
        row = reads.setdefault(id(self.transport), [0, 0, 0])  # keyed by the socket's transport
        row[0] += 1
        row[1] += len(data)
        row[2] = t
        received(self, data)

    handle = RealtimeConnection.handle

    def traced_handle(self: Any, frame: dict[str, Any], size: int | None = None) -> None:
        t = _now()
        row = stats(self)
        action = frame.get("action")
        key = str(action)
        row["frames"][key] = row["frames"].get(key, 0) + 1
        row["bytes_in"] += size or 0
        if action == C.MESSAGE:
            msgs = frame.get("messages") or []
            n = str(len(msgs))
            row["msgs_per_frame"][n] = row["msgs_per_frame"].get(n, 0) + 1
            shape = ",".join(sorted(frame)) + " | " + ";".join(",".join(sorted(m)) for m in msgs[:2])
            row["shapes"][shape] = row["shapes"].get(shape, 0) + 1
            if shape not in row["examples"]:
                row["examples"][shape] = {"size": size, "frame": _jsonable(frame)}
            for m in msgs:
                data = m.get("data") if isinstance(m, dict) else None
                if isinstance(data, str):
                    raw = self.transport.raw if self.transport is not None else None
                    proto = id(raw) if raw is not None else 0
                    t_read = reads.get(proto, [0, 0, 0])[2]
                    for a, b in _TOKEN_STR.findall(data):
                        read.append([int(a), int(b), t_read, proto])
                        handled.append([int(a), int(b), t, self.principal.client_id])
        c0 = time.perf_counter_ns()
        handle(self, frame, size)
        if action == C.MESSAGE:
            row["handle_ns"].append(time.perf_counter_ns() - c0)

    attach = RealtimeConnection.attach_transport

    def traced_attach(self: Any, transport: Any) -> None:
        by_transport[id(transport)] = stats(self)
        attach(self, transport)

    send = Transport._send

    async def traced_send(self: Any, batch: list[str | bytes]) -> None:
        t = _now()
        row = by_transport.get(id(self))
        if row is not None:
            row["writes"] += 1
            row["frames_out"] += len(batch)
            for data in batch:
                raw = data if isinstance(data, bytes) else data.encode()
                row["bytes_out"] += len(raw)
                if row["clientId"] == "bench-client":
                    written.extend([int(a), int(b), t] for a, b in _TOKEN.findall(raw))
        c0 = time.perf_counter_ns()
        await send(self, batch)
        if row is not None:
            row["send_ns"].append(time.perf_counter_ns() - c0)

    flush = RealtimeConnection._flush_acks

    def traced_flush(self: Any) -> None:
        if self._ack_run is not None and self.transport is not None:
            stats(self)["acks_out"] += 1
        flush(self)

    RealtimeConnection._flush_acks = traced_flush  # type: ignore[method-assign]
    web_protocol.RequestHandler.data_received = traced_received  # type: ignore[method-assign]
    RealtimeConnection.handle = traced_handle  # type: ignore[method-assign]
    RealtimeConnection.attach_transport = traced_attach  # type: ignore[method-assign]
    Transport._send = traced_send  # type: ignore[method-assign]

    def dump() -> None:
        out = {"read": read, "handled": handled, "written": written, "conns": conns, "reads": reads}
        with open(f"{prefix}-server-{os.getpid()}.json", "w") as fh:
            json.dump(out, fh, default=str)

    atexit.register(dump)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, bytes):
        return f"<{len(obj)} bytes>"
    return obj


def _row(name: str, values: list[float]) -> str:
    qs = " / ".join(f"{_pct(values, q) / 1000:.3f}" for q in (10, 25, 50, 90, 99))
    return f"    {name:<36} p10 / p25 / p50 / p90 / p99 {qs} ms (n={len(values)})"


def main(argv: list[str]) -> int:
    argv, phase = phase_arg(argv)
    raw = json.loads(open(argv[0]).read())["raw"]  # noqa: SIM115
    prefix = argv[1]
    server = [json.loads(open(p).read()) for p in sorted(glob.glob(f"{prefix}-server-*.json"))]  # noqa: SIM115
    agents = [json.loads(open(p).read()) for p in sorted(glob.glob(f"{prefix}-py-*.json"))]  # noqa: SIM115
    agents += [json.loads(open(p).read()) for p in sorted(glob.glob(f"{prefix}-js-*.json"))]  # noqa: SIM115
    if not server:
        print("no server log")
        return 1
    srv = server[-1]
    read = {(r[0], r[1]): r[2] for r in srv["read"]}
    srv_reader = {(r[0], r[1]): r[3] for r in srv["read"]}
    handled = {(r[0], r[1]): (r[2], r[3]) for r in srv["handled"]}
    written = {(r[0], r[1]): r[2] for r in srv["written"]}
    sent: dict[tuple[int, int], int] = {}
    for log in agents:
        sent.update({(s[0], s[1]): s[2] for s in log["sent"]})
    for variant, result in raw.items():
        receipts = steady_receipts(result, phase)
        if receipts is None:
            continue
        recv, steady_from = receipts
        keys = [k for k in recv if k[1] >= steady_from and k in written and k in handled and k in read]
        print(f"  {variant}: {len(keys)} steady tokens seen at every step")
        print(_row("client latency (model → client)", [recv[k] - k[1] for k in keys]))
        with_sent = [k for k in keys if k in sent]
        if with_sent:
            print(_row("model → agent socket write", [sent[k] - k[1] for k in with_sent]))
            print(_row("agent write → server read", [read[k] - sent[k] for k in with_sent]))
        print(_row("server read → handle", [handled[k][0] - read[k] for k in keys]))
        print(_row("handle → write to client", [written[k] - handled[k][0] for k in keys]))
        print(_row("write to client → client", [recv[k] - written[k] for k in keys]))
        print(_row("server read → client", [recv[k] - read[k] for k in keys]))
        reads_ = {(srv_reader[k], read[k]) for k in keys}
        writes_ = {written[k] for k in keys}
        per_read, per_write = len(keys) / max(1, len(reads_)), len(keys) / max(1, len(writes_))
        print(f"    socket reads carrying these tokens {len(reads_)} (tokens per read {per_read:.2f})")
        print(f"    client writes carrying them {len(writes_)} (tokens per write {per_write:.2f})")
    for cid, row in srv["conns"].items():
        if not any(row["frames"].values()):
            continue
        print(f"  connection {cid} clientId={row['clientId']} fmt={row['fmt']} echo={row['echo']}")
        for what in ("handle_ns", "send_ns"):
            ns = row[what]
            if ns:
                qs = " / ".join(f"{_pct(ns, q) / 1000:.1f}" for q in (25, 50, 90))
                print(f"    {what[:-3]} µs p25 / p50 / p90 {qs} (n={len(ns)})")
        print(f"    frames in {row['frames']} msgs/frame {row['msgs_per_frame']} bytes in {row['bytes_in']}")
        print(
            f"    writes {row['writes']} frames out {row['frames_out']} acks {row['acks_out']} "
            f"bytes out {row['bytes_out']}"
        )
        for shape, n in sorted(row["shapes"].items(), key=lambda kv: -kv[1])[:4]:
            ex = row["examples"][shape]
            print(f"    {n}x {shape}\n      e.g. size {ex['size']}: {json.dumps(ex['frame'])[:600]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
