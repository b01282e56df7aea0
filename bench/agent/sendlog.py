"""``AW_BENCH_SENDLOG=prefix``: when each scripted token left the agent, for both agents.

Diagnostics only (where the N-stream latency goes: the agent, or the server and the client). The
Python worker wraps ably-python's ``WebSocketTransport.send`` (the frame is encoded and written to
the socket in that call) and ``Channel.start_append`` (the writer hands the append over); the JS
agent (tests/js/bench/agent.mjs) wraps ``ws``'s ``WebSocket.send``, where ably-js writes each frame.
For every ``<seq>:<us>:<due>;`` token in an outgoing frame, each logs ``[seq, us, sent_us]`` (and the
worker ``[seq, us, handed_us]``), in CLOCK_MONOTONIC microseconds, to ``<prefix>-<kind>-<pid>.json``
when it exits. Nothing here runs in production.

``python -m bench.agent.sendlog RAW.json PREFIX`` joins the logs with a ``--json`` dump of a run
made with ``AW_BENCH_TIMELINE=1`` (the client's receive time per token) and prints, per agent, over
the N-stream phase's steady tokens: model → socket (the agent), socket → client (the server's
fan-out and the client, shared by both agents), and the client's total. For the worker also the
steps in between (model → ``OutputMessage.send`` → ``start_append`` → the SDK's send → the frame
in the socket → ``start_append`` returned), and per agent the *bursts*: tokens whose model timers
fired in the same loop turn (a token stamped within 300 µs of the agent's previous socket write),
by position in the burst — the latency from its own stamp, and from the burst's first stamp
(a token's stamp is taken when its model task runs, so the time it waited behind the burst's
earlier tokens in the agent's loop is not in its latency; from the burst's first stamp it is).

Two knobs show how the measured latency answers the worker's CPU (diagnostics, never a fix):
``AW_BENCH_SPIN_US=N`` busy-waits N µs in the worker before each frame's send (after the model's
stamp), ``AW_BENCH_ACK_SPIN_US=N`` when each append's ACK is folded.
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

_TOKEN = re.compile(r"(\d+):(\d{6,})(?::\d+)?;")


def _now() -> int:
    return time.monotonic_ns() // 1000


def install(prefix: str) -> None:
    """Wrap the worker's send path (call before the worker connects)."""
    from ably.transport.websockettransport import WebSocketTransport  # noqa: PLC0415

    from agent_worker.transport.ably import Channel  # noqa: PLC0415

    sent: list[list[int]] = []
    handed: list[list[int]] = []
    written: list[list[int]] = []  # after the SDK's send returned (the frame is in the socket)
    returned: list[list[int]] = []  # start_append returned to the writer
    entered: list[list[int]] = []  # OutputMessage.send called with the token's chunk
    frames = [0, 0]  # frames with tokens, tokens in them

    def tokens(data: object) -> list[tuple[int, int]]:
        if not isinstance(data, str):
            return []
        return [(int(a), int(b)) for a, b in _TOKEN.findall(data)]

    send = WebSocketTransport.send

    spin = int(os.environ.get("AW_BENCH_SPIN_US", "0") or 0) * 1000
    ack_spin = int(os.environ.get("AW_BENCH_ACK_SPIN_US", "0") or 0) * 1000

    if ack_spin:
        from agent_worker.transport.local import LocalEcho  # noqa: PLC0415

        appended = LocalEcho.appended

        def spun_appended(self: Any, *args: Any) -> None:
            end = time.perf_counter_ns() + ack_spin
            while time.perf_counter_ns() < end:
                pass
            appended(self, *args)

        LocalEcho.appended = spun_appended  # type: ignore[method-assign,assignment]

    async def traced_send(self: Any, message: dict[str, Any]) -> Any:
        t = _now()
        if spin:
            end = time.perf_counter_ns() + spin
            while time.perf_counter_ns() < end:
                pass
        found = False
        for m in message.get("messages") or ():
            for seq, us in tokens(m.get("data") if isinstance(m, dict) else None):
                sent.append([seq, us, t])
                found = True
                frames[1] += 1
        frames[0] += found
        result = await send(self, message)
        if found:
            t2 = _now()
            for m in message.get("messages") or ():
                for seq, us in tokens(m.get("data") if isinstance(m, dict) else None):
                    written.append([seq, us, t2])
        return result

    start_append = Channel.start_append

    def traced_start_append(self: Any, serial: str, msg: Any) -> Any:
        t = _now()
        found = tokens(msg.data)
        for seq, us in found:
            handed.append([seq, us, t])
        task = start_append(self, serial, msg)
        t2 = _now()
        for seq, us in found:
            returned.append([seq, us, t2])
        return task

    from agent_worker.runtime.run import OutputMessage  # noqa: PLC0415

    out_send = OutputMessage.send

    async def traced_out_send(self: Any, chunk: Any) -> None:
        t = _now()
        for seq, us in tokens(chunk.get("delta") if isinstance(chunk, dict) else None):
            entered.append([seq, us, t])
        await out_send(self, chunk)

    OutputMessage.send = traced_out_send  # type: ignore[method-assign]

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
        out |= {"written": written, "returned": returned, "entered": entered}
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


_STEPS = ("entered", "handed", "sent", "written", "returned")
"""The worker's points per token: ``OutputMessage.send`` called, ``start_append`` called, the SDK's
``send`` called, returned (frame written), ``start_append`` returned."""

_BURST_GAP_US = 300


def _bursts(recv: dict[tuple[int, int], float], sent: dict[tuple[int, int], int]) -> None:
    """Steady tokens by position in their burst (see the module doc)."""
    keys = sorted(sent, key=lambda k: k[1])
    if not keys:
        return
    bursts: list[list[tuple[int, int]]] = [[keys[0]]]
    for k in keys[1:]:
        if k[1] - sent[bursts[-1][-1]] < _BURST_GAP_US:
            bursts[-1].append(k)
        else:
            bursts.append([k])
    sizes: list[float] = [len(b) for b in bursts for _ in b]
    spans: list[float] = [sent[b[-1]] - b[0][1] for b in bursts if len(b) > 1]
    print(
        f"    bursts {len(bursts)}; burst size per token p50 {_pct(sizes, 50)}; first stamp → last "
        f"write p50 {_pct(spans, 50) / 1000:.2f} ms (bursts of 2+)"
    )
    groups: dict[str, tuple[list[float], list[float]]] = {}
    for b in bursts:
        for i, k in enumerate(b):
            label = "1st" if i == 0 else "2nd-3rd" if i < 3 else "4th-8th" if i < 8 else "9th+"
            own, first = groups.setdefault(label, ([], []))
            own.append(recv[k] - k[1])
            first.append(recv[k] - b[0][1])
    for label in ("1st", "2nd-3rd", "4th-8th", "9th+"):
        if label in groups:
            own, first = groups[label]
            print(
                f"      {label:>7} in burst: n={len(own):5d} latency p50 {_pct(own, 50) / 1000:.2f} ms, "
                f"from the burst's first stamp p50 {_pct(first, 50) / 1000:.2f} ms"
            )


def steady_receipts(
    result: dict[str, Any], phase: str = "latencyN"
) -> tuple[dict[tuple[int, int], float], int] | None:
    """The client's receive time per (stream, seq) token of ``phase`` (the N-stream phase unless
    told), and the time from which tokens count as steady (every stream had delivered its first);
    None without a timeline."""
    timeline = (result.get(phase) or {}).get("timeline")
    if not timeline:
        return None
    recv = {(s[0], s[1]): s[2] for stream in timeline for s in stream["samples"]}
    return recv, max(stream["samples"][0][2] for stream in timeline if stream["samples"])


def phase_arg(argv: list[str]) -> tuple[list[str], str]:
    """``--phase=NAME`` (default ``latencyN``) taken out of ``argv``."""
    phase = "latencyN"
    rest = []
    for arg in argv:
        if arg.startswith("--phase="):
            phase = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return rest, phase


def main(argv: list[str]) -> int:
    argv, phase = phase_arg(argv)
    raw = json.loads(open(argv[0]).read())["raw"]  # noqa: SIM115
    logs = [json.loads(open(p).read()) for p in sorted(glob.glob(f"{argv[1]}-*.json"))]  # noqa: SIM115
    logs = [log for log in logs if "sent" in log]  # not the server's (bench.agent.serverlog)
    for variant, result in raw.items():
        receipts = steady_receipts(result, phase)
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
        points = {n: {(r[0], r[1]): r[2] for r in best.get(n) or []} for n in _STEPS}
        if all(points.values()):
            before: dict[tuple[int, int], int] = {k: k[1] for k in sent}  # the model's stamp
            label = "model"
            for name in _STEPS:
                at = points[name]
                gaps = [at[k] - before[k] for k in sent if k in at and k in before]
                print(_row(f"  {label} → {name}", gaps))
                before, label = at, name
        _bursts(recv, sent)
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
