"""Embedded-server fan-out benchmark: ably-js through EmbeddedServer vs a raw websockets baseline.

``python -m bench.server`` runs one publisher to 1, 10 and 100 subscribers in JSON and msgpack,
measures publish->deliver latency (p50/p99, paced load) and throughput (bounded publish window),
runs the same client workload against a bare `websockets` fan-out server, and writes the
"Embedded server" section of ``docs/benchmarks.md``. Loopback only; every run is bounded in
message count and time. Not a test: nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from agent_worker.logs import configure_logging
from agent_worker.server import EmbeddedServer, ServerConfig
from bench.server.baseline import fanout_server
from tests.node_support import node_binary, node_config, run_node_async

ROOT = Path(__file__).resolve().parents[2]

CLIENTS = Path(__file__).resolve().parent / "clients.mjs"
DOC = ROOT / "docs" / "benchmarks.md"
START = "<!-- bench:server:start -->"
END = "<!-- bench:server:end -->"
COMMAND = ".venv/bin/python -m bench.server"


@dataclass(frozen=True, slots=True)
class Case:
    subscribers: int
    protocol: str
    latency_count: int
    rate_hz: float
    throughput_seconds: float


def plan(subscribers: list[int], protocols: list[str], scale: float) -> list[Case]:
    """Latency: a fixed message count at a paced rate; throughput: a fixed publishing time."""
    cases = []
    for n in subscribers:
        for proto in protocols:
            latency = max(20, int(200 * scale))
            cases.append(Case(n, proto, latency, 50.0 if n <= 10 else 20.0, max(0.5, 3.0 * scale)))
    return cases


async def _deflate_negotiated(port: int, key: str) -> bool:
    """Whether the embedded server accepts permessage-deflate (the `ws` client always offers it)."""
    async with connect(f"ws://127.0.0.1:{port}/?key={key}&format=json&v=6") as ws:
        assert ws.response is not None
        return "permessage-deflate" in ws.response.headers.get("Sec-WebSocket-Extensions", "")


async def _run_clients(mode: str, port: int, key: str | None, case: Case) -> dict[str, Any]:
    env = node_config(
        mode=mode,
        host="127.0.0.1",
        port=port,
        key=key,
        protocol=case.protocol,
        subscribers=case.subscribers,
        latencyCount=case.latency_count,
        rateHz=case.rate_hz,
        throughputSeconds=case.throughput_seconds,
        window=50,
        payloadBytes=64,
        timeoutMs=240_000,
    )
    result: dict[str, Any] = await run_node_async(CLIENTS, env=env, timeout=270)
    return result


@dataclass(frozen=True, slots=True)
class Row:
    case: Case
    ably: dict[str, Any]
    raw: dict[str, Any]  # baseline with the embedded server's compression setting
    floor: dict[str, Any]  # baseline without compression: the physical floor


async def run_case(case: Case) -> tuple[Row, bool]:
    server = EmbeddedServer(ServerConfig(host="127.0.0.1", port=0))
    await server.start()
    try:
        key = str(server.default_key)
        deflate = await _deflate_negotiated(server.port, key)
        ably = await _run_clients("ably", server.port, key, case)
    finally:
        await server.stop()
    # the baseline mirrors the embedded server's compression so only the protocol differs; the
    # uncompressed run shows what the socket layer alone can do on this machine
    async with fanout_server(compression="deflate" if deflate else None) as port:
        raw = await _run_clients("raw", port, None, case)
    floor = raw
    if deflate:
        async with fanout_server(compression=None) as port:
            floor = await _run_clients("raw", port, None, case)
    return Row(case, ably, raw, floor), deflate


def machine() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    node = subprocess.run([node_binary(), "--version"], capture_output=True, text=True, check=True)
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "node": node.stdout.strip(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
        "load": " / ".join(f"{x:.1f}" for x in os.getloadavg()),
    }


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _ratios(a: dict[str, Any], b: dict[str, Any]) -> str:
    la, lb = a["latency"], b["latency"]
    return (
        f"{la['p50'] / lb['p50']:.1f} | {la['p99'] / lb['p99']:.1f} "
        f"| {a['throughput']['msgsPerSec'] / b['throughput']['msgsPerSec']:.2f}"
    )


def _numbers(result: dict[str, Any]) -> str:
    lat, thr = result["latency"], result["throughput"]
    return f"{_ms(lat['p50'])} | {_ms(lat['p99'])} | {thr['msgsPerSec']:.0f}"


def render(rows: list[Row], info: dict[str, str], deflate: bool) -> str:
    compression = (
        "The embedded server (aiohttp) accepts the permessage-deflate offer that ably-js's `ws` client "
        "always makes, so every frame is compressed both ways; the baseline is run with deflate too, "
        "and once more without it (the physical floor, last table)."
        if deflate
        else "permessage-deflate is not negotiated by either server."
    )
    lines = [
        START,
        "## Embedded server",
        "",
        "One publisher fanning out to N subscribers on one channel: unmodified ably-js 2.28.0 through",
        "`EmbeddedServer` (a full Ably realtime protocol hop: decode, serial, store, fan-out, ACK) versus",
        "the baseline, a bare Python `websockets` server that broadcasts each frame verbatim and acks",
        "the publisher. Both runs use the same client process (one Node process holding the publisher",
        "and all N subscribers, decoding every frame: ably-js there, `ws` + JSON/msgpack decode here),",
        "the same 64-byte payload and the same loads. Latency: publish() call to subscriber callback,",
        "over every delivery, under a paced load (50 msg/s for N <= 10, 20 msg/s for N = 100; 200",
        "messages). Throughput: 3 s of publishing with at most 50 unacknowledged publishes, counted",
        "once all N subscribers have everything; msgs/s = published messages per second, each",
        "delivered N times. Ratio = embedded / baseline: for latency lower is better (2.0 = twice as",
        "slow), for msgs/s higher is better (0.50 = half the baseline's rate).",
        "",
        f"Command: `{COMMAND}` (about three minutes; `--help` for a smaller run).",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['os']}, Python {info['python']},",
        f"Node {info['node']}, measured {info['date']} (load average 1/5/15 min after the run:",
        f"{info['load']}; other work on the machine moves these numbers, ratios less so).",
        "Server and clients share the cores.",
        compression,
        "",
        "| subs | format | p50 ms | p99 ms | msgs/s | deliveries/s | baseline p50 | baseline p99 "
        "| baseline msgs/s | p50 ratio | p99 ratio | msgs/s ratio |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        thr = row.ably["throughput"]
        lines.append(
            f"| {row.case.subscribers} | {row.case.protocol} | {_numbers(row.ably)} "
            f"| {thr['deliveriesPerSec']:.0f} | {_numbers(row.raw)} | {_ratios(row.ably, row.raw)} |"
        )
    if deflate:
        lines += [
            "",
            "Against the uncompressed baseline (the socket layer alone):",
            "",
            "| subs | format | floor p50 ms | floor p99 ms | floor msgs/s | p50 ratio | p99 ratio "
            "| msgs/s ratio |",
            "|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        for row in rows:
            lines.append(
                f"| {row.case.subscribers} | {row.case.protocol} | {_numbers(row.floor)} "
                f"| {_ratios(row.ably, row.floor)} |"
            )
    lines += ["", END]
    return "\n".join(lines)


def write_section(section: str, doc: Path = DOC) -> None:
    """Replaces only this benchmark's marked section; other sections are left untouched."""
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        tail = rest.split(END, 1)[1]
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)


async def run(cases: list[Case]) -> tuple[list[Row], bool]:
    rows = []
    deflate = False
    for case in cases:
        print(f"  {case.subscribers:>3} subscribers, {case.protocol:<7} ...", flush=True)
        row, deflate = await run_case(case)
        rows.append(row)
        print(
            f"      p50 {_ms(row.ably['latency']['p50'])} ms (baseline {_ms(row.raw['latency']['p50'])}),"
            f" {row.ably['throughput']['msgsPerSec']:.0f} msgs/s"
            f" (baseline {row.raw['throughput']['msgsPerSec']:.0f})",
            flush=True,
        )
    return rows, deflate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.server", description=__doc__)
    parser.add_argument("--subscribers", default="1,10,100", help="comma-separated fan-out sizes")
    parser.add_argument("--formats", default="json,msgpack", help="comma-separated: json, msgpack")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply message counts (e.g. 0.2)")
    parser.add_argument("--no-write", action="store_true", help="print the section, leave the doc alone")
    parser.add_argument("--json", type=Path, help="also dump raw results to this file")
    args = parser.parse_args(argv)
    cases = plan(
        [int(n) for n in args.subscribers.split(",")],
        [f.strip() for f in args.formats.split(",")],
        args.scale,
    )
    configure_logging(level="warning")  # per-connection info lines would only add noise here
    print(f"embedded-server benchmark: {len(cases)} cases")
    rows, deflate = asyncio.run(run(cases))
    section = render(rows, machine(), deflate)
    if args.json:
        dump = [asdict(row) for row in rows]
        args.json.write_text(json.dumps(dump, indent=2))
    if args.no_write:
        print(section)
    else:
        write_section(section)
        print(f"wrote the 'Embedded server' section of {DOC.relative_to(ROOT)}")
    return 0
