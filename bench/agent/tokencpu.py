"""``python -m bench.agent.tokencpu``: the worker's CPU per steady token, like for like.

The bench's ``latencyN`` phase measures the client's latency, which moves with the machine's load
and with the variant order; this measures what a steady token costs the worker itself. The worker
is built as the bench's ``py`` variant (coalescing off, one connection, no limits, no presence, no
notifications, Ably's rollup off; uvloop; warning-level logs) and runs in this process's main
thread; the embedded server (no enforced limits) in a child process. ``--n`` runs stream
``--tokens`` tokens at ``--rate`` tokens/s each (the bench's token text, ``<seq>:<us>;``), their
inputs published over REST and their POSTs sent from a second thread. Counted: the main thread's
CPU (``time.thread_time``) from the moment the model has yielded ``--skip`` tokens per run to the
moment it has yielded all but ``--skip`` per run, divided by the tokens yielded in between (the
steady state: every run streaming, ACKs included, no starts or ends).

``--path``: also the time from each token's model stamp to its frame written (ably-python's
``WebSocketTransport.send`` returned), and the *bursts* (tokens whose model timers fired in one
loop turn: stamped within 300 µs of the previous frame written, as ``bench.agent.sendlog`` groups
them): the median burst length and, over bursts of 3 or more, the median of (last frame written
- first stamp) / tokens — what a burst's later tokens wait per earlier token. ``--profile=path``:
a ``thread_time`` cProfile of the steady windows (it slows small Python calls several-fold: read
it for the call tree and shares). Diagnostics only; nothing asserts on it (helper t13, twelfth
round).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import gc
import itertools
import json
import os
import re
import statistics
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from agent_worker.agent import Agent
from agent_worker.config import AblyConfig, Secret, WorkerConfig
from agent_worker.providers.base import ModelRequest, StreamEvent
from agent_worker.providers.echo import ScriptedProvider, latest_user_text
from agent_worker.transport.ably import AblySettings
from agent_worker.worker.service import Worker
from bench.agent import AGENT_CLIENT_ID, VARIANTS
from bench.agent.inproc import start_harness, start_server


@dataclasses.dataclass
class _Round:
    """One round's counters, read by the scripted model."""

    start_at: int
    end_at: int
    yielded: int = 0
    cpu0: float = 0.0
    cpu1: float = 0.0
    counted: int = 0
    started: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    ended: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    profiler: cProfile.Profile | None = None
    stamps: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # (seq id, ns)


ROUND = _Round(0, 0)


def _now_us() -> int:
    return time.monotonic_ns() // 1000


async def _script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
    spec = json.loads(latest_user_text(request))
    interval = 1.0 / spec["rate"]
    rnd = ROUND
    for seq in range(1, int(spec["tokens"]) + 1):
        await asyncio.sleep(interval)
        rnd.yielded += 1
        if rnd.yielded == rnd.start_at:
            rnd.cpu0 = time.thread_time()
            if rnd.profiler is not None:
                rnd.profiler.enable()
            rnd.started.set()
        elif rnd.yielded == rnd.end_at:
            rnd.cpu1 = time.thread_time()
            if rnd.profiler is not None:
                rnd.profiler.disable()
            rnd.counted = rnd.end_at - rnd.start_at
            rnd.ended.set()
        yield f"{seq}:{_now_us()};"


_TOKEN = re.compile(rb"\d+:(\d{6,})(?::\d+)?;")  # seq:us:due (bench/agent/script.py)


def _stamps(data: object) -> list[int]:
    if isinstance(data, str) and data.endswith(";") and ":" in data:
        return [int(token.split(":")[1]) for token in data[:-1].split(";")]
    return []


class _Path:
    """Each token's model stamp and frame-written time; with ``steps``, also when the token
    reached ``OutputMessage.send``, ``Channel.start_append``, its frame's encoded bytes
    (``websockets``' ``send_binary``, which every send path of the worker ends in), and when
    ``start_append`` returned. Written = ``websockets``' ``send_data`` returned after that frame."""

    def __init__(self, steps: bool) -> None:
        from websockets.asyncio.connection import Connection  # noqa: PLC0415
        from websockets.protocol import Protocol  # noqa: PLC0415

        from agent_worker.runtime.run import OutputMessage  # noqa: PLC0415
        from agent_worker.transport.ably import Channel  # noqa: PLC0415

        self.on = False
        self.rows: list[tuple[int, int]] = []  # (stamp us, written us)
        self.marks: dict[str, dict[int, int]] = {k: {} for k in ("send", "handed", "sdk", "returned")}
        path = self
        framed: list[int] = []  # stamps in frames not yet written
        send_binary = Protocol.send_binary

        def traced_send_binary(protocol: Any, data: bytes, fin: bool = True) -> None:
            if path.on:
                t = _now_us()
                for m in _TOKEN.finditer(data):
                    stamp = int(m.group(1))
                    framed.append(stamp)
                    if steps:
                        path.marks["sdk"][stamp] = t
            send_binary(protocol, data, fin)

        send_data = Connection.send_data

        def traced_send_data(connection: Any) -> None:
            send_data(connection)
            if framed:
                t = _now_us()
                path.rows.extend((stamp, t) for stamp in framed)
                framed.clear()

        Protocol.send_binary = traced_send_binary  # type: ignore[method-assign,assignment]
        Connection.send_data = traced_send_data  # type: ignore[method-assign,assignment]
        if not steps:
            return
        out_send = OutputMessage.send

        async def traced_out_send(self: Any, chunk: Any) -> None:
            if path.on:
                t = _now_us()
                for stamp in _stamps(chunk.get("delta") if isinstance(chunk, dict) else None):
                    path.marks["send"][stamp] = t
            await out_send(self, chunk)

        start_append = Channel.start_append

        def traced_start_append(self: Any, serial: str, msg: Any) -> Any:
            if not path.on:
                return start_append(self, serial, msg)
            t = _now_us()
            found = _stamps(msg.data)
            task = start_append(self, serial, msg)
            t2 = _now_us()
            for stamp in found:
                path.marks["handed"][stamp] = t
                path.marks["returned"][stamp] = t2
            return task

        OutputMessage.send = traced_out_send  # type: ignore[method-assign]
        Channel.start_append = traced_start_append  # type: ignore[method-assign]

    def report(self) -> str:
        rows = sorted(self.rows)
        if not rows:
            return "no tokens"
        waits = sorted(w - s for s, w in rows)
        bursts: list[list[tuple[int, int]]] = []
        last_written = -(10**12)
        for stamp, written in sorted(rows, key=lambda r: r[1]):
            if bursts and stamp - last_written <= 300:
                bursts[-1].append((stamp, written))
            else:
                bursts.append([(stamp, written)])
            last_written = written
        sizes = sorted(len(b) for b in bursts)
        per = sorted((b[-1][1] - b[0][0]) / len(b) for b in bursts if len(b) >= 3)
        # the next token's stamp in the same burst, after a token's start_append returned
        back = self.marks["returned"]
        gaps = [b[i + 1][0] - back.get(b[i][0], b[i + 1][0]) for b in bursts for i in range(len(b) - 1)]
        steps = ""
        if self.marks["send"]:
            points: list[tuple[str, str | None]] = [
                ("stamp", None), ("send", "send"), ("handed", "handed"), ("encoded", "sdk"),
            ]  # fmt: skip
            parts = []
            for (_, a), (name, b) in itertools.pairwise(points):
                assert b is not None
                at = self.marks[b]
                since = self.marks[a] if a is not None else None
                d = sorted(
                    at[s] - (s if since is None else since[s])
                    for s, _w in rows
                    if s in at and (since is None or s in since)
                )
                parts.append(f"->{name} {d[len(d) // 2]}" if d else f"->{name} -")
            d = sorted(w - self.marks["sdk"][s] for s, w in rows if s in self.marks["sdk"])
            parts.append(f"->written {d[len(d) // 2]}" if d else "")
            d = sorted(self.marks["returned"][s] - w for s, w in rows if s in self.marks["returned"])
            parts.append(f"->returned {d[len(d) // 2]}" if d else "")
            g = sorted(gaps)
            parts.append(f"->next stamp {g[len(g) // 2]}" if g else "")
            steps = "\n  steps p50 (us): " + " ".join(parts)
            for marks in self.marks.values():
                marks.clear()
        self.rows.clear()
        return (
            f"model->written p50 {waits[len(waits) // 2]} us p90 {waits[len(waits) * 9 // 10]} us;"
            f" bursts {len(bursts)}, size p50 {sizes[len(sizes) // 2]} p90 {sizes[len(sizes) * 9 // 10]};"
            f" per token in bursts of >= 3: p50 {statistics.median(per) if per else float('nan'):.0f} us"
        ) + steps


async def _main(args: argparse.Namespace) -> None:
    global ROUND  # noqa: PLW0603 - the script reads the round's counters
    server, info = start_server(enforce=False)
    spec, shipped = VARIANTS["py"], AblyConfig()  # as bench.agent.procs builds the `py` variant
    settings = AblySettings(
        endpoint=f"127.0.0.1:{info['port']}",
        key=Secret(info["key"]),
        tls=False,
        client_id=AGENT_CLIENT_ID,
        use_binary_protocol=True,
        max_messages_per_second=float(spec["max_messages_per_second"]),
        burst=int(spec["burst"]),
        connections=shipped.connections,
        max_connections=int(spec["max_connections"]),
        append_rollup_window_ms=spec["rollup"],
        echo_messages=shipped.echo_messages,
        warm_connections=shipped.warm_connections,
    )
    worker = Worker(
        transport=settings,
        agent=Agent(ScriptedProvider(_script, name="bench")),
        config=WorkerConfig(**spec["worker"]),
    )
    path = _Path(args.steps) if args.path or args.steps else None
    harness = await start_harness(worker, info)
    client = harness.client

    profiler = cProfile.Profile(time.thread_time) if args.profile else None
    results: list[float] = []
    done = 0
    for rnd in range(args.rounds):
        items = []
        for i in range(args.n):
            ask = {"bench": "stream", "id": f"{rnd}-{i}", "tokens": args.tokens, "rate": args.rate}
            items.append(await harness.publish_ask("tokens", ask))
        await asyncio.sleep(args.quiet)
        gc.collect()
        ROUND = _Round(args.n * args.skip, args.n * (args.tokens - args.skip))
        ROUND.profiler = profiler
        futures = [client.call(harness.post(name, eid)) for name, eid in items]
        statuses = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        assert all(s == 200 for s in statuses), statuses
        await asyncio.wait_for(ROUND.started.wait(), 120)
        if path is not None:
            path.on = True
        wall = time.perf_counter()
        await asyncio.wait_for(ROUND.ended.wait(), 300)
        wall = time.perf_counter() - wall
        if path is not None:
            path.on = False
        done += args.n
        await worker.wait_for_runs(done, 120)
        cpu = ROUND.cpu1 - ROUND.cpu0
        per = cpu * 1e6 / ROUND.counted
        results.append(per)
        line = (
            f"round {rnd}: {per:.1f} us CPU per token ({ROUND.counted} tokens, {cpu * 1000:.0f} ms CPU,"
            f" {wall:.1f} s), failed {worker.runs_failed}, load {os.getloadavg()[0]:.2f}"
        )
        if path is not None:
            line += "\n  " + path.report()
        print(line, flush=True)
    kept = sorted(results[1:] or results)
    print(
        f"RESULT us/token median {statistics.median(kept):.1f} min {kept[0]:.1f}"
        f" all {[round(x, 1) for x in results]} (the first round is cold, left out)"
    )
    if profiler is not None:
        profiler.dump_stats(args.profile)
    await harness.close(worker, server)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.agent.tokencpu", description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100, help="simultaneous runs per round")
    ap.add_argument("--tokens", type=int, default=60, help="tokens per run")
    ap.add_argument("--rate", type=float, default=10.0, help="tokens per second per run")
    ap.add_argument("--skip", type=int, default=10, help="tokens per run left out at each end")
    ap.add_argument("--rounds", type=int, default=4, help="rounds (the first is cold)")
    ap.add_argument("--quiet", type=float, default=1.0, help="seconds before each round")
    ap.add_argument("--path", action="store_true", help="model -> frame written times and bursts")
    ap.add_argument("--steps", action="store_true", help="--path, and the steps between (wraps more calls)")
    ap.add_argument("--profile", help="write a thread_time cProfile of the steady windows here")
    args = ap.parse_args(argv)
    if args.tokens <= 2 * args.skip or args.n < 1 or args.rounds < 1:
        ap.error("--tokens must exceed twice --skip (the window between), --n and --rounds at least 1")
    from agent_worker import eventloop  # noqa: PLC0415
    from agent_worker.logs import configure_logging  # noqa: PLC0415

    configure_logging(level="warning", fmt="console", stream=sys.stderr)
    eventloop.run(_main(args))


if __name__ == "__main__":
    main()
