"""The benchmark's worker process: ``python -m bench.otel.worker absent|off|on``.

``absent`` blocks the ``opentelemetry`` import (as if the extra were not installed); ``off`` has the
API installed but no provider (the default for a user who installed the extra and set nothing);
``on`` configures both signals through the ``OTEL_*`` variables, exactly as ``agent-worker run``
does, with the console exporters writing to /dev/null (so the cost measured is the instrumentation,
span/metric processing and JSON encoding, not a terminal).
"""

from __future__ import annotations

import sys

if len(sys.argv) > 1 and sys.argv[1] == "absent":
    sys.modules["opentelemetry"] = None  # type: ignore[assignment]

import asyncio
import contextlib
import json
import os

from agent_worker.agent import Agent
from agent_worker.config import HttpConfig, Secret, WorkerConfig
from agent_worker.logs import configure_logging
from agent_worker.telemetry import configure_from_env, enabled
from agent_worker.transport.ably import AblySettings
from agent_worker.worker.http import serve
from agent_worker.worker.service import Worker, tune_gc
from bench.agent.procs import _until_stopped
from bench.agent.script import bench_provider, emit


async def main(mode: str, cfg: dict[str, object]) -> None:
    otel = None
    if mode == "on":
        devnull = open(os.devnull, "w")  # noqa: SIM115, ASYNC230 - start-up; lives as long as the process
        with contextlib.redirect_stdout(devnull):  # the console exporters bind sys.stdout when built
            otel = configure_from_env()
        assert otel is not None and enabled()
    settings = AblySettings(
        endpoint=f"127.0.0.1:{cfg['port']}",
        key=Secret(str(cfg["key"])),
        tls=False,
        client_id="agent-worker",
        max_messages_per_second=1_000_000.0,
        burst=100_000,
    )
    worker = Worker(
        transport=settings,
        agent=Agent(bench_provider()),
        config=WorkerConfig(coalesce_window_ms=0.0, presence=False, max_concurrent_runs=1000),
    )
    await worker.start()
    runner = await serve(worker, HttpConfig(port=0), port=0)
    tune_gc()
    host, port = runner.addresses[0][:2]
    emit("ready", {"url": f"http://{host}:{port}/api/chat", "pid": os.getpid(), "otel": enabled()})
    try:
        await _until_stopped()
    finally:
        await runner.cleanup()
        await worker.close(drain_timeout_s=2)
        if otel is not None:
            otel.shutdown()


if __name__ == "__main__":
    configure_logging(level="warning", fmt="console", stream=sys.stderr)
    asyncio.run(main(sys.argv[1], json.loads(os.environ["AW_BENCH_CONFIG"])))
