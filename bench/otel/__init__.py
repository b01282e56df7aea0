"""Telemetry overhead: the same worker and workload with OpenTelemetry absent, off and on.

``python -m bench otel`` (or ``python -m bench.otel``) starts the embedded server in its own process
(``bench.agent.procs server``), then for each mode a worker process (:mod:`bench.otel.worker`) fed
the agent benchmark's scripted model (``bench/agent/script.py``: each token carries the monotonic
time it left the model), and drives it from this process with ably-python clients:

* *runs*: ``--runs`` short runs (5 tokens), ``--concurrency`` at a time — runs/s, and the worker's
  CPU time per run (the per-run cost: spans, attributes, metrics);
* *stream*: ``--streams`` concurrent runs of ``--tokens`` unpaced tokens — tokens/s and worker CPU
  per 1,000 tokens (the per-token cost), plus provider→client token latency p50/p99.

Modes run interleaved (``--rounds`` times, best round reported) to spread machine noise. Writes the
"Telemetry overhead" section of docs/benchmarks.md. Not a test: nothing asserts on timings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from ably import AblyRealtime
from ably.types.message import Message

from agent_worker.protocol.headers import build_input_headers
from agent_worker.protocol.vercel.encoder import encode_user_message
from agent_worker.server.testing import RemoteServer, python_realtime
from agent_worker.transport.ably import to_inbound
from bench.agent.script import now_us

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- bench:otel:start -->", "<!-- bench:otel:end -->"
COMMAND = ".venv/bin/python -m bench otel"
MODES = ("absent", "off", "on")
TOKEN = re.compile(r"(\d+):(\d+);")


@dataclass
class Child:
    proc: subprocess.Popen[str]
    ready: dict[str, Any]

    def cpu(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def spawn(args: list[str], env: dict[str, str]) -> Child:
    proc = subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("@@ready "):
            return Child(proc, json.loads(line.split(" ", 1)[1]))
    msg = f"{args} exited before it was ready"
    raise RuntimeError(msg)


def otel_env(mode: str) -> dict[str, str]:
    env = {k: "" for k in os.environ if k.startswith("OTEL_")}
    if mode == "on":
        env.update(OTEL_TRACES_EXPORTER="console", OTEL_METRICS_EXPORTER="console", OTEL_SERVICE_NAME="bench")
    return env


@dataclass
class Client:
    """One ably-python connection on one session; records token latencies and run ends."""

    realtime: AblyRealtime
    session: str
    latencies_us: list[int] = field(default_factory=list)
    tokens: int = 0
    ended: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    failed: int = 0

    def on_message(self, msg: Message) -> None:
        now = now_us()
        if isinstance(msg.data, str):
            for _, sent in TOKEN.findall(msg.data):
                self.tokens += 1
                self.latencies_us.append(now - int(sent))
        if msg.name == "ai-run-end":
            headers = to_inbound(msg).transport_headers
            run_id = headers.get("run-id", "")
            self.failed += headers.get("run-reason") != "complete"
            # The end may arrive before the POST's answer names the run: leave a resolved future.
            fut = self.ended.setdefault(run_id, asyncio.get_running_loop().create_future())
            if not fut.done():
                fut.set_result(None)


async def connect(server: dict[str, Any], session: str) -> Client:
    realtime = python_realtime(
        RemoteServer(f"127.0.0.1:{server['port']}", server["key"]), client_id="bench-user"
    )
    client = Client(realtime, session)
    await realtime.channels.get(session).subscribe(client.on_message)
    return client


async def one_run(client: Client, http: aiohttp.ClientSession, url: str, tokens: int) -> None:
    cmid, eid = str(uuid.uuid4()), str(uuid.uuid4())
    headers = build_input_headers(codec_message_id=cmid, event_id=eid, run_client_id="bench-user")
    spec = json.dumps({"bench": "stream", "id": cmid, "tokens": tokens, "rate": 0})
    parts = encode_user_message(
        {"id": cmid, "role": "user", "parts": [{"type": "text", "text": spec}]}, headers
    )
    await client.realtime.channels.get(client.session).publish(
        [Message(name=m.name, data=m.data, extras=m.extras) for m in parts]
    )
    async with http.post(url, json={"inputEventId": eid, "sessionName": client.session}) as resp:
        body = await resp.json()
    fut = client.ended.setdefault(body["runId"], asyncio.get_running_loop().create_future())
    await asyncio.wait_for(fut, 120)


async def phase(
    server: dict[str, Any], worker: Child, *, runs: int, concurrency: int, tokens: int
) -> dict[str, Any]:
    """``runs`` runs of ``tokens`` tokens, ``concurrency`` sessions in parallel (one client each)."""
    url = worker.ready["url"]
    clients = [await connect(server, f"bench:otel-{uuid.uuid4().hex[:8]}") for _ in range(concurrency)]
    try:
        async with aiohttp.ClientSession() as http:
            await asyncio.gather(*(one_run(c, http, url, tokens) for c in clients))  # warm-up
            for c in clients:
                c.latencies_us.clear()
                c.tokens = 0
            cpu0, t0 = worker.cpu(), time.perf_counter()

            async def lane(c: Client, n: int) -> None:
                for _ in range(n):
                    await one_run(c, http, url, tokens)

            per = [runs // concurrency + (1 if i < runs % concurrency else 0) for i in range(concurrency)]
            await asyncio.gather(*(lane(c, n) for c, n in zip(clients, per, strict=True)))
            wall, cpu = time.perf_counter() - t0, worker.cpu() - cpu0
    finally:
        for c in clients:
            await c.realtime.close()
    lat = sorted(v for c in clients for v in c.latencies_us)
    received = sum(c.tokens for c in clients)
    failed = sum(c.failed for c in clients)
    if failed:
        msg = f"{failed} runs did not complete: the numbers would not be comparable"
        raise RuntimeError(msg)
    return {
        "runs": runs,
        "wall_s": wall,
        "cpu_s": cpu,
        "runs_per_s": runs / wall,
        "cpu_ms_per_run": cpu / runs * 1000,
        "tokens": received,
        "tokens_per_s": received / wall,
        "cpu_ms_per_1k_tokens": cpu / received * 1e6 if received else None,
        "p50_ms": lat[len(lat) // 2] / 1000 if lat else None,
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] / 1000 if lat else None,
    }


async def measure(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    server = spawn(["bench.agent.procs", "server"], {})
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in args.modes}
    try:
        for r in range(args.rounds):
            for mode in args.modes:
                cfg = json.dumps({"port": server.ready["port"], "key": server.ready["key"]})
                worker = spawn(["bench.otel.worker", mode], {**otel_env(mode), "AW_BENCH_CONFIG": cfg})
                assert worker.ready["otel"] == (mode == "on"), worker.ready
                try:
                    short = await phase(
                        server.ready, worker, runs=args.runs, concurrency=args.concurrency, tokens=5
                    )
                    stream = await phase(
                        server.ready, worker, runs=args.streams, concurrency=args.streams, tokens=args.tokens
                    )
                finally:
                    worker.stop()
                results[mode].append({"runs": short, "stream": stream})
                print(f"round {r + 1} {mode:6}", json.dumps({"runs": short, "stream": stream}), flush=True)
    finally:
        server.stop()
    return results


def median(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per metric, the median over rounds (noise on a shared machine goes both ways end to end)."""
    out: dict[str, Any] = {}
    for ph in ("runs", "stream"):
        vals = [r[ph] for r in rounds]
        out[ph] = {k: statistics.median(v[k] for v in vals) for k in vals[0] if isinstance(vals[0][k], float)}
    return out


def render(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace, micro: dict[str, Any]) -> str:
    b = {m: median(rs) for m, rs in results.items()}
    base = b.get("absent") or b[next(iter(b))]

    def rel(value: float, ref: float) -> str:
        return f"{(value / ref - 1) * 100:+.0f}%"

    lines = [
        START,
        "## Telemetry overhead (OpenTelemetry absent / off / on)",
        "",
        "The same worker process and workload three ways: `absent` = the `opentelemetry` import blocked",
        "(as without the `otel` extra); `off` = the API installed, no provider configured (what a user who",
        "set no `OTEL_*` variable gets: the hooks return the un-instrumented objects); `on` =",
        "`OTEL_TRACES_EXPORTER=console OTEL_METRICS_EXPORTER=console` configured by `configure_from_env`",
        "as `agent-worker run` does, the console exporters writing to /dev/null (batch span processor,",
        "JSON encoding of every span included). Server, worker and clients are separate processes on",
        "loopback; worker settings like-for-like with the agent benchmark (no coalescing, no presence).",
        f"*runs*: {args.runs} runs of 5 tokens, {args.concurrency} sessions in parallel; *stream*:",
        f"{args.streams} concurrent runs x {args.tokens} unpaced tokens. CPU = worker process utime+stime.",
        f"Median of {args.rounds} interleaved rounds per cell; latency = provider→client per token.",
        "",
        f"Command: `{COMMAND}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"measured {dt.date.today().isoformat()}, load average after the run "
        f"{' / '.join(f'{x:.1f}' for x in os.getloadavg())} (other work shares the machine).",
        "",
        "| mode | runs/s | CPU ms/run | tokens/s | CPU ms/1k tokens | token p50 ms | token p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, v in b.items():

        def cell(ph: str, key: str, fmt: str, v: dict[str, Any] = v) -> str:
            return f"{v[ph][key]:{fmt}} ({rel(v[ph][key], base[ph][key])})"

        cells = [
            cell("runs", "runs_per_s", ".1f"),
            cell("runs", "cpu_ms_per_run", ".2f"),
            cell("stream", "tokens_per_s", ".0f"),
            cell("stream", "cpu_ms_per_1k_tokens", ".1f"),
            f"{v['stream']['p50_ms']:.1f}",
            f"{v['stream']['p99_ms']:.1f}",
        ]
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    us = micro["us_per_run"]
    lines += [
        "",
        "Percentages are relative to `absent`.",
        "",
        "The hooks alone, in process (`python -m bench.otel.micro`): one simulated run = `trace_run`",
        f"around one model call of {micro['tokens']} events through `chat_stream` (a scripted provider,",
        "no network) and one `tool_span`; *direct* = the same calls without hooks (what the absent",
        "extra amounts to), *on-null* = SDK providers with a null span exporter (the instrumentation",
        "and the SDK's bookkeeping), *on-console* = batch processor + console exporters on /dev/null",
        "(the export thread's JSON encoding included). Process CPU µs per run (all threads), best of",
        f"{micro['repeat']} interleaved rounds x {micro['runs']} runs.",
        "",
        "| | direct | off | on-null | on-console |",
        "|---|---:|---:|---:|---:|",
        "| CPU µs per run | "
        + " | ".join(f"{us[m]:.0f}" for m in ("direct", "off", "on-null", "on-console"))
        + " |",
        "| µs over direct | 0 | "
        + " | ".join(f"{us[m] - us['direct']:+.0f}" for m in ("off", "on-null", "on-console"))
        + " |",
        END,
    ]
    return "\n".join(lines)


def write_section(section: str, doc: Path = DOC) -> None:
    text = doc.read_text()
    if START in text:
        head, rest = text.split(START, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    doc.write_text(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.otel", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=300)
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--streams", type=int, default=20)
    p.add_argument(
        "--tokens", type=int, default=1000, help="per stream; ~20 bytes each, under 64 KiB a message"
    )
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--micro-runs", type=int, default=2000, help="simulated runs per micro-benchmark round")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--no-write", action="store_true", help="print the section instead of updating the doc")
    args = p.parse_args(argv)
    from bench.otel.micro import measure as measure_hooks  # noqa: PLC0415 - `-m bench.otel.micro` too

    micro = measure_hooks(args.micro_runs, 100, max(args.rounds, 5))
    section = render(asyncio.run(measure(args)), args, micro)
    print(section)
    if not args.no_write:
        write_section(section)
    return 0
