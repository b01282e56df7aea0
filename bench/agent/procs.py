"""Child processes of the agent benchmark: ``python -m bench.agent.procs server|pyworker``.

Each reads its configuration from the ``AW_NODE_CONFIG``-style JSON in ``AW_BENCH_CONFIG``, prints
``@@ready {...}`` once serving, and runs until SIGTERM/SIGINT or stdin closes. Keeping the server,
each agent and the clients in separate processes gives every agent one process of its own to be
measured (CPU, RSS), as in production.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import Any

from agent_worker.config import HttpConfig, Secret, WorkerConfig
from agent_worker.logs import configure_logging
from agent_worker.runtime.loop import AgentSpec
from agent_worker.server import EmbeddedServer, ServerConfig
from agent_worker.transport.ably import AblySettings
from agent_worker.worker.http import serve
from agent_worker.worker.service import Worker
from bench.agent.script import bench_provider, emit


async def _until_stopped() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def stdin_closed() -> None:
        if not os.read(sys.stdin.fileno(), 4096):
            stop.set()
            loop.remove_reader(sys.stdin.fileno())

    loop.add_reader(sys.stdin.fileno(), stdin_closed)
    await stop.wait()


async def server_main(cfg: dict[str, Any]) -> None:
    async with EmbeddedServer(ServerConfig(host="127.0.0.1", port=0)) as server:
        emit("ready", {"port": server.port, "key": server.default_key, "pid": os.getpid()})
        await _until_stopped()


def _trace_gc() -> None:
    """AW_BENCH_GC=1: report garbage-collector pauses over 5 ms on stderr (diagnosing latency tails)."""
    import gc  # noqa: PLC0415
    import time  # noqa: PLC0415

    started: dict[str, float] = {}

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started["t"] = time.perf_counter()
            return
        pause = (time.perf_counter() - started.get("t", time.perf_counter())) * 1000
        if pause > 5:
            sys.stderr.write(f"gc gen{info['generation']} {pause:.1f} ms collected={info['collected']}\n")

    gc.callbacks.append(callback)


async def pyworker_main(cfg: dict[str, Any]) -> None:
    if os.environ.get("AW_BENCH_GC"):
        _trace_gc()
    settings = AblySettings(
        endpoint=f"127.0.0.1:{cfg['port']}",
        key=Secret(cfg["key"]),
        tls=False,
        client_id="agent-worker",
        use_binary_protocol=cfg.get("protocol", "msgpack") != "json",
        max_messages_per_second=float(cfg.get("max_messages_per_second", 45.0)),
        burst=int(cfg.get("burst", 10)),
        connections=int(cfg.get("connections", 1)),
    )
    worker = Worker(
        transport=settings,
        agent=AgentSpec(provider=bench_provider()),
        config=WorkerConfig(**cfg.get("worker", {})),
    )
    await worker.start()
    runner = await serve(worker, HttpConfig(port=0), port=0)
    if os.environ.get("AW_BENCH_GC_FREEZE"):  # experiment: keep start-up objects out of full collections
        import gc  # noqa: PLC0415

        gc.collect()
        gc.freeze()
    host, port = runner.addresses[0][:2]
    emit("ready", {"url": f"http://{host}:{port}/api/chat", "pid": os.getpid()})
    try:
        await _until_stopped()
    finally:
        await runner.cleanup()
        await worker.close(drain_timeout_s=2)


def main() -> None:
    role = sys.argv[1]
    cfg = json.loads(os.environ.get("AW_BENCH_CONFIG", "{}"))
    configure_logging(level="warning", fmt="console", stream=sys.stderr)
    target = {"server": server_main, "pyworker": pyworker_main}[role]
    asyncio.run(target(cfg))


if __name__ == "__main__":
    main()
