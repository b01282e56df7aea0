"""``python -m bench.agent.burstcpu``: the worker's CPU per start in a burst of simultaneous starts.

The bench's ``latencyN`` phase moves 2x with the machine's load and carries the steady streams on
the same loop; this measures only what a burst of starts costs the worker. The worker, as
``bench.agent.procs pyworker`` builds it (production defaults: pool, limiter, presence, coalescing;
uvloop; warning-level logs), runs in this process's main thread, the embedded server
(``--enforce-rate-limits``) in a child process, and the client's ``--n`` simultaneous POSTs come
from a second thread, their inputs published beforehand over REST. The model yields its first
token at once and holds the run open until every run has yielded one. Counted: the main thread's
CPU (``time.thread_time``: not the client thread's) from the first POST to the ``--n``-th first
token, per start; each round on new sessions after a quiet 6 s (warm connections and spare clients
back). The first round is cold (discarded in the median). ``--profile=path``: a ``thread_time``
cProfile of the rounds. Diagnostics only; nothing asserts on it. (b7's harness of the eighth round.)
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import gc
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

import aiohttp
from ably import AblyRest
from ably.types.message import Message

from agent_worker.agent import Agent
from agent_worker.config import AblyConfig, HttpConfig, Secret, WorkerConfig
from agent_worker.protocol.headers import build_input_headers
from agent_worker.protocol.vercel.encoder import encode_user_message
from agent_worker.protocol.wire import OutboundMessage
from agent_worker.providers.base import ModelRequest, StreamEvent
from agent_worker.providers.echo import ScriptedProvider
from agent_worker.transport.ably import AblySettings, Channel
from agent_worker.worker.http import serve
from agent_worker.worker.service import GC_THRESHOLDS, Worker, tune_gc
from bench.agent import AGENT_CLIENT_ID

T = TypeVar("T")


class _Gate:
    """Every run yields one token (after ``delay_s``), then waits here until the round's runs all
    have."""

    def __init__(self, target: int, delay_s: float = 0.0) -> None:
        self.target = target
        self.delay_s = delay_s
        self.count = 0
        self.all_first = asyncio.Event()
        self.release = asyncio.Event()


GATE = _Gate(0)


async def _gated_script(_request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
    if GATE.delay_s:
        await asyncio.sleep(GATE.delay_s)
    yield "first "
    GATE.count += 1
    if GATE.count >= GATE.target:
        GATE.all_first.set()
    await GATE.release.wait()
    yield "second"


def _start_server() -> tuple[subprocess.Popen[str], dict[str, Any]]:
    env = dict(os.environ, AW_BENCH_CONFIG=json.dumps({"enforce": True}))
    argv = [sys.executable, "-m", "bench.agent.procs", "server"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("@@ready"):
            ready: dict[str, Any] = json.loads(line.split(" ", 1)[1])
            return proc, ready
    msg = "the embedded server did not start"
    raise SystemExit(msg)


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Client(threading.Thread):
    """The POSTs' own event loop and HTTP session, in a thread (its CPU is not the worker's)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.loop = asyncio.new_event_loop()
        self.started_up = threading.Event()
        self.session: aiohttp.ClientSession | None = None

    def run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def make() -> aiohttp.ClientSession:
            return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

        self.session = self.loop.run_until_complete(make())
        self.started_up.set()
        self.loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)


async def _main(args: argparse.Namespace) -> None:
    global GATE  # noqa: PLW0603 - the script reads the round's gate
    server, info = _start_server()
    shipped, shipped_ably = WorkerConfig(), AblyConfig()
    settings = AblySettings(
        endpoint=f"127.0.0.1:{info['port']}",
        key=Secret(info["key"]),
        tls=False,
        client_id=AGENT_CLIENT_ID,
        use_binary_protocol=True,
        max_messages_per_second=shipped.max_messages_per_second,
        burst=shipped.burst,
        connections=shipped_ably.connections,
        max_connections=shipped_ably.max_connections,
        echo_messages=shipped_ably.echo_messages,
    )
    settings = dataclasses.replace(settings, warm_connections=shipped_ably.warm_connections)
    worker = Worker(
        transport=settings,
        agent=Agent(ScriptedProvider(_gated_script, name="gated")),
        config=WorkerConfig(max_concurrent_runs=1000, max_pending_invocations=1000),
    )
    await worker.start()
    runner = await serve(worker, HttpConfig(port=0), port=0)
    tune_gc(GC_THRESHOLDS)
    host, port = runner.addresses[0][:2]
    url = f"http://{host}:{port}/api/chat"
    rest = AblyRest(
        key=info["key"], rest_host="127.0.0.1", port=info["port"], tls=False, client_id="user",
        use_token_auth=True, use_binary_protocol=True,
    )  # fmt: skip
    client = _Client()
    client.start()
    client.started_up.wait()

    async def post(name: str, event_id: str) -> int:
        assert client.session is not None
        async with client.session.post(url, json={"sessionName": name, "inputEventId": event_id}) as r:
            await r.read()
            return r.status

    profiler = cProfile.Profile(time.thread_time) if args.profile else None
    per_start: list[float] = []
    first_append_p50: list[float] = []
    first_appends: dict[str, float] = {}
    start_append = Channel.start_append

    def traced_start_append(self: Channel, serial: str, msg: OutboundMessage) -> Any:
        first_appends.setdefault(self.name, time.monotonic())
        return start_append(self, serial, msg)

    Channel.start_append = traced_start_append  # type: ignore[method-assign]
    done = 0
    for rnd in range(args.rounds):
        items = []
        for i in range(args.n):
            name = f"conversations:burst-{uuid.uuid4().hex[:12]}"
            cmid, eid = str(uuid.uuid4()), str(uuid.uuid4())
            headers = build_input_headers(
                codec_message_id=cmid, event_id=eid, run_client_id="user", parent=None
            )
            text = json.dumps({"bench": "stream", "id": f"{rnd}-{i}", "tokens": 1, "rate": 0})
            wires = encode_user_message(
                {"id": cmid, "role": "user", "parts": [{"type": "text", "text": text}]}, headers
            )
            await rest.channels.get(name).publish(
                [Message(name=m.name, data=m.data, extras=m.extras) for m in wires]
            )
            items.append((name, eid))
        await asyncio.sleep(args.quiet)  # warm connections topped up, spare clients built
        gc.collect()
        GATE = _Gate(args.n, args.first_token_ms / 1000)
        first_appends.clear()
        server_cpu = _cpu_s(server.pid)
        cpu, wall = time.thread_time(), time.perf_counter()
        started = time.monotonic()
        if profiler is not None:
            profiler.enable()
        futures = [client.call(post(name, eid)) for name, eid in items]
        statuses = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        assert all(s == 200 for s in statuses), statuses
        await asyncio.wait_for(GATE.all_first.wait(), 120)
        if profiler is not None:
            profiler.disable()
        cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
        server_cpu = _cpu_s(server.pid) - server_cpu
        GATE.release.set()
        done += args.n
        await worker.wait_for_runs(done, 120)
        per_start.append(cpu * 1000 / args.n)
        appends = sorted(first_appends.values())
        append_p50 = (appends[len(appends) // 2] - started) * 1000 if appends else float("nan")
        first_append_p50.append(append_p50)
        load = os.getloadavg()[0]
        print(
            f"round {rnd}: worker CPU {cpu * 1000:.0f} ms = {cpu * 1000 / args.n:.2f} ms/start, server"
            f" {server_cpu * 1000 / args.n:.2f} ms/start, wall {wall * 1000:.0f} ms, first append p50"
            f" {append_p50:.0f} ms after the first POST, failed"
            f" {worker.runs_failed}, load {load:.2f}",
            flush=True,
        )
    kept = sorted(per_start[1:] or per_start)
    appended = sorted(first_append_p50[1:] or first_append_p50)
    print(
        f"RESULT ms/start median {kept[len(kept) // 2]:.2f} min {kept[0]:.2f}"
        f" all {[round(x, 2) for x in per_start]}; first append p50 (ms) median"
        f" {appended[len(appended) // 2]:.0f} all {[round(x) for x in first_append_p50]}"
    )
    if profiler is not None:
        profiler.dump_stats(args.profile)
    assert client.session is not None
    client.call(client.session.close()).result()
    client.loop.call_soon_threadsafe(client.loop.stop)
    await runner.cleanup()
    await worker.close(drain_timeout_s=2)
    assert server.stdin is not None
    server.stdin.close()
    server.wait(10)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.agent.burstcpu", description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100, help="simultaneous starts per round")
    ap.add_argument("--rounds", type=int, default=6, help="rounds (the first is cold)")
    ap.add_argument("--quiet", type=float, default=6.0, help="seconds between rounds")
    ap.add_argument("--profile", help="write a thread_time cProfile of the rounds here")
    ap.add_argument(
        "--first-token-ms", type=float, default=0.0, help="the model's delay before its first token"
    )
    args = ap.parse_args(argv)
    from agent_worker import eventloop  # noqa: PLC0415
    from agent_worker.logs import configure_logging  # noqa: PLC0415

    configure_logging(level="warning", fmt="console", stream=sys.stderr)
    eventloop.run(_main(args))


if __name__ == "__main__":
    main()
