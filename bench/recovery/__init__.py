"""Crash recovery of the local engine: SIGKILL ``agent-worker run`` mid-stream, restart it at once.

Measures, over ``--kills`` kills, the time from the SIGKILL to the interrupted run's ``ai-run-end``
on a device (ably-python on the session), and how much of it is the restarted worker's start-up up
to its banner (recovery happens before the banner). Writes the "Crash recovery" section of
``docs/benchmarks.md``. Loopback: ``agent-worker server`` and the worker are separate processes.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from ably.types.message import Message

from agent_worker.protocol.headers import build_input_headers
from agent_worker.protocol.vercel.encoder import encode_user_message
from agent_worker.server.testing import RemoteServer, python_realtime
from agent_worker.transport.ably import to_inbound

__all__ = ["drain", "line", "main", "pct", "spawn", "write_section"]

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "benchmarks.md"
START = "<!-- bench:recovery:start -->"
END = "<!-- bench:recovery:end -->"
SESSION = "conversations:bench-recovery"
CONFIG = """
[provider]
name = "echo"
[providers.echo]
tokens_per_second = 20
[tools]
enabled = []
[prompts]
system = ""
"""
LONG = " ".join(f"w{i}" for i in range(400))


async def spawn(*args: str) -> asyncio.subprocess.Process:
    """``agent-worker <args>`` as a child process (stdout piped, stderr discarded)."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent_worker.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "AGENT_WORKER_PROVIDER": ""},
    )  # fmt: skip


async def line(proc: asyncio.subprocess.Process, pattern: str) -> re.Match[str]:
    """The first line of ``proc``'s stdout matching ``pattern`` (waits up to 60 s)."""
    assert proc.stdout is not None
    async with asyncio.timeout(60):
        while text := (await proc.stdout.readline()).decode():
            if m := re.search(pattern, text):
                return m
    msg = f"process exited before printing {pattern!r}"
    raise RuntimeError(msg)


def drain(proc: asyncio.subprocess.Process) -> asyncio.Task[None]:
    async def read() -> None:
        assert proc.stdout is not None
        while await proc.stdout.readline():
            pass

    return asyncio.create_task(read())


async def measure(kills: int) -> dict[str, list[float]]:
    server_proc = await spawn("server", "--port", "0")
    endpoint = (await line(server_proc, r"^endpoint: (\S+)")).group(1)
    key = (await line(server_proc, r"^key: (\S+)")).group(1)
    drain(server_proc)
    server = RemoteServer(endpoint, key)
    tmp = Path(tempfile.mkdtemp(prefix="aw-bench-recovery-"))
    (tmp / "w.toml").write_text(CONFIG)
    args = ("run", "--config", str(tmp / "w.toml"), "--ably-endpoint", endpoint, "--key", key,
            "--http", "127.0.0.1:0", "--state-dir", str(tmp / "state"))  # fmt: skip
    client = python_realtime(server, client_id="bench")
    channel = client.channels.get(SESSION)
    ends: dict[str, float] = {}
    outputs: dict[str, int] = {}
    changed = asyncio.Event()

    def on_message(msg: Message) -> None:
        inbound = to_inbound(msg)
        run_id = inbound.transport_headers.get("run-id", "")
        if inbound.name == "ai-run-end":
            ends.setdefault(run_id, time.monotonic())
        elif run_id:
            outputs[run_id] = outputs.get(run_id, 0) + 1
        changed.set()

    await channel.subscribe(on_message)
    out: dict[str, list[float]] = {"kill_to_end": [], "restart_to_end": [], "startup": []}
    worker = await spawn(*args)
    http = (await line(worker, r"POST (http://\S+)")).group(1)
    drain(worker)
    try:
        for _ in range(kills):
            cmid, eid = str(uuid.uuid4()), str(uuid.uuid4())
            headers = build_input_headers(codec_message_id=cmid, event_id=eid, run_client_id="bench")
            msg = {"id": cmid, "role": "user", "parts": [{"type": "text", "text": LONG}]}
            await channel.publish(
                [
                    Message(name=m.name, data=m.data, extras=m.extras)
                    for m in encode_user_message(msg, headers)
                ]
            )
            async with (
                aiohttp.ClientSession() as s,
                s.post(http, json={"inputEventId": eid, "sessionName": SESSION}) as r,
            ):
                run_id = str((await r.json())["runId"])
            async with asyncio.timeout(60):
                while outputs.get(run_id, 0) < 5:
                    changed.clear()
                    await changed.wait()
            worker.kill()
            killed = time.monotonic()
            await worker.wait()
            worker = await spawn(*args)
            restarted = time.monotonic()
            http = (await line(worker, r"POST (http://\S+)")).group(1)
            out["startup"].append(time.monotonic() - restarted)
            drain(worker)
            async with asyncio.timeout(60):
                while run_id not in ends:
                    changed.clear()
                    await changed.wait()
            out["kill_to_end"].append(ends[run_id] - killed)
            out["restart_to_end"].append(ends[run_id] - restarted)
    finally:
        for proc in (worker, server_proc):
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        await client.close()
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def section(results: dict[str, list[float]], kills: int) -> str:
    rows = {
        "kill → `ai-run-end` on a device (worker restarted at once)": results["kill_to_end"],
        "worker process start → `ai-run-end`": results["restart_to_end"],
        "worker process start → banner (serving)": results["startup"],
    }
    lines = [
        START,
        "## Crash recovery (local engine)",
        "",
        f"`agent-worker run` SIGKILLed mid-stream {kills} times and restarted at once on the same",
        "`--state-dir`; a device (ably-python) times the interrupted run's `ai-run-end`. Most of it is",
        "the Python process starting (imports); the journal's close itself is a few publishes.",
        "",
        f"Command: `.venv/bin/python -m bench.recovery --kills {kills}`.",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores shared with other work, Python "
        f"{platform.python_version()}, measured {datetime.date.today().isoformat()}.",
        "",
        "| interval | p50 s | p99 s | max s |",
        "|---|---:|---:|---:|",
    ]
    for name, values in rows.items():
        lines.append(
            f"| {name} | {statistics.median(values):.2f} | {pct(values, 0.99):.2f} | {max(values):.2f} |"
        )
    lines += ["", END]
    return "\n".join(lines)


def write_section(text: str, start: str = START, end: str = END) -> None:
    """Replaces the section between ``start`` and ``end`` in docs/benchmarks.md (or appends it)."""
    doc = DOC.read_text()
    if start in doc and end in doc:
        head, rest = doc.split(start, 1)
        doc = head + text + rest.split(end, 1)[1]
    else:
        doc = doc.rstrip("\n") + "\n\n" + text + "\n"
    DOC.write_text(doc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench recovery", description=__doc__)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--no-write", action="store_true", help="print the section only")
    opts = parser.parse_args(argv)
    results: dict[str, Any] = asyncio.run(measure(opts.kills))
    text = section(results, opts.kills)
    print(text)
    if not opts.no_write:
        write_section(text)
    return 0
