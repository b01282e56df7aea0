"""Child processes of the agent benchmark: ``python -m bench.agent.procs server|pyworker``.

Each reads its configuration from the ``AW_NODE_CONFIG``-style JSON in ``AW_BENCH_CONFIG``, prints
``@@ready {...}`` once serving, and runs until SIGTERM/SIGINT or stdin closes. Keeping the server,
each agent and the clients in separate processes gives every agent one process of its own to be
measured (CPU, RSS), as in production.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import sys
import time
from typing import Any

from agent_worker import eventloop
from agent_worker.agent import Agent
from agent_worker.config import AblyConfig, HttpConfig, Secret, WorkerConfig
from agent_worker.logs import configure_logging
from agent_worker.server import EmbeddedServer, ServerConfig
from agent_worker.transport.ably import AblySettings
from agent_worker.worker.http import serve
from agent_worker.worker.service import GC_THRESHOLDS, Worker, tune_gc
from bench.agent import AGENT_CLIENT_ID
from bench.agent.script import bench_provider, emit


async def _until_stopped(on_line: Any = None) -> None:
    """Run until SIGTERM/SIGINT or stdin closes; each stdin line goes to ``on_line``."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def stdin_readable() -> None:
        data = os.read(sys.stdin.fileno(), 4096)
        if not data:
            stop.set()
            loop.remove_reader(sys.stdin.fileno())
            return
        if on_line is not None:
            for line in data.decode(errors="replace").splitlines():
                on_line(line.strip())

    loop.add_reader(sys.stdin.fileno(), stdin_readable)
    await stop.wait()


async def server_main(cfg: dict[str, Any]) -> None:
    """The embedded server; ``{"enforce": true}`` = Ably's rate limits (42911/42910). A ``stats``
    line on stdin prints ``@@event {"event": "stats", "refused": {code: count}}``."""
    # The history sessions are populated first and stay idle until their phase: no history budget
    # may release them meanwhile (server.hub: idle channels go past max_history_bytes).
    config = ServerConfig(
        host="127.0.0.1", port=0, enforce_rate_limits=bool(cfg.get("enforce")), max_history_bytes=1 << 40
    )
    if os.environ.get("AW_BENCH_SERVERLOG"):  # =prefix: each token's server read/handle/write times
        from bench.agent import serverlog  # noqa: PLC0415

        serverlog.install(os.environ["AW_BENCH_SERVERLOG"])
    async with EmbeddedServer(config) as server:
        if not os.environ.get("AW_BENCH_GC_DEFAULT"):
            tune_gc()  # as `agent-worker server` does once started
        if os.environ.get("AW_BENCH_GC"):
            _trace_server_gc()
        profile_to = os.environ.get("AW_BENCH_SERVER_PROFILE")  # =path: cProfile the server's run
        profiler = None
        if profile_to:
            import cProfile  # noqa: PLC0415

            # AW_BENCH_PROFILE_CPU=1 times CPU here too (wall time on a shared machine misleads)
            cpu = bool(os.environ.get("AW_BENCH_PROFILE_CPU"))
            profiler = cProfile.Profile(time.process_time) if cpu else cProfile.Profile()
            profiler.enable()
        emit("ready", {"port": server.port, "key": server.default_key, "pid": os.getpid()})

        def on_line(line: str) -> None:
            if line == "settle":
                # Before each variant: what the previous ones left is collected and frozen (as
                # tune_gc froze start-up), so no variant meets the collections of another's garbage
                # (a full collection of a grown heap, ~90 ms, had fallen in the second one's phase).
                import gc  # noqa: PLC0415

                gc.collect()
                if not os.environ.get("AW_BENCH_GC_DEFAULT"):
                    gc.freeze()
                emit("event", {"event": "settled"})
            if line == "stats":
                emit(
                    "event", {"event": "stats", "refused": {str(k): v for k, v in server.hub.refused.items()}}
                )

        try:
            await _until_stopped(on_line)
        finally:
            if profiler is not None and profile_to:
                profiler.disable()
                profiler.dump_stats(profile_to)


_GC_BUSY: dict[int, list[float]] = {}


def _trace_server_gc() -> None:
    """AW_BENCH_GC=1 in the server: its collections over 5 ms on stderr, with CLOCK_MONOTONIC µs
    (the tokens' clock), so a pause can be matched with the agent whose phase it fell in."""
    import gc  # noqa: PLC0415

    started: dict[str, float] = {}

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started["t"] = time.perf_counter()
            started["cpu"] = time.process_time()
            return
        pause = (time.perf_counter() - started.get("t", time.perf_counter())) * 1000
        if pause > 5:
            cpu = (time.process_time() - started.get("cpu", time.process_time())) * 1000
            sys.stderr.write(
                f"gc server gen{info['generation']} {pause:.1f} ms (CPU {cpu:.1f} ms) "
                f"collected={info['collected']} at {time.monotonic_ns() // 1000} us\n"
            )

    gc.callbacks.append(callback)


def _yield_after_send() -> None:
    """``AW_BENCH_YIELD=1`` (diagnostic, never a fix): the worker gives up its CPU after every frame
    it writes, so a process its write woke onto the same CPU (the embedded server) runs at once."""
    from ably.transport.websockettransport import WebSocketTransport  # noqa: PLC0415

    send = WebSocketTransport.send

    async def yielding_send(self: Any, message: dict[str, Any]) -> Any:
        result = await send(self, message)
        os.sched_yield()
        return result

    WebSocketTransport.send = yielding_send  # type: ignore[method-assign]


def _trace_gc(worker: Worker) -> None:
    """AW_BENCH_GC=1: report garbage-collector pauses over 5 ms on stderr (diagnosing latency tails)."""
    import gc  # noqa: PLC0415

    started: dict[str, float] = {}
    t0 = time.perf_counter()
    # While runs stream: per generation, collections, CPU ms in them (process time: a preempted
    # collection's wall time says more about the machine), the largest, and objects collected.
    busy = _GC_BUSY

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started["t"] = time.perf_counter()
            started["cpu"] = time.process_time()
            return
        if len(worker.active_runs) >= 50:
            cpu = (time.process_time() - started.get("cpu", time.process_time())) * 1000
            row = busy.setdefault(info["generation"], [0, 0.0, 0.0, 0])
            row[0] += 1
            row[1] += cpu
            row[2] = max(row[2], cpu)
            row[3] += info["collected"]
        pause = (time.perf_counter() - started.get("t", time.perf_counter())) * 1000
        if pause > 5:
            sys.stderr.write(
                f"gc gen{info['generation']} {pause:.1f} ms collected={info['collected']} "
                f"at +{time.perf_counter() - t0:.1f} s, {len(worker.active_runs)} runs active\n"
            )

    gc.callbacks.append(callback)


async def pyworker_main(cfg: dict[str, Any]) -> None:
    override = os.environ.get("AW_BENCH_PY_OVERRIDE")  # =JSON merged into the variant's settings
    if override:
        cfg = {**cfg, **json.loads(override)}
    shipped, shipped_ably = WorkerConfig(), AblyConfig()
    settings = AblySettings(
        endpoint=f"127.0.0.1:{cfg['port']}",
        key=Secret(cfg["key"]),
        tls=False,
        client_id=AGENT_CLIENT_ID,
        use_binary_protocol=cfg.get("protocol", "msgpack") != "json",
        # Unless the variant overrides them: what `agent-worker run` passes by default.
        max_messages_per_second=float(cfg.get("max_messages_per_second", shipped.max_messages_per_second)),
        burst=int(cfg.get("burst", shipped.burst)),
        connections=int(cfg.get("connections", shipped_ably.connections)),
        max_connections=int(cfg.get("max_connections", shipped_ably.max_connections)),
        append_rollup_window_ms=cfg.get("rollup"),
        echo_messages=bool(cfg.get("echo_messages", shipped_ably.echo_messages)),
    )
    if "spare_clients" in cfg:
        settings = dataclasses.replace(settings, spare_clients=int(cfg["spare_clients"]))
    warm = int(cfg.get("warm_connections", shipped_ably.warm_connections))
    settings = dataclasses.replace(settings, warm_connections=warm)
    worker = Worker(
        transport=settings,
        agent=Agent(bench_provider()),
        config=WorkerConfig(**cfg.get("worker", {})),
    )
    if os.environ.get("AW_BENCH_GC"):
        _trace_gc(worker)
    if os.environ.get("AW_BENCH_YIELD"):  # diagnostic only: os.sched_yield() after each frame written
        _yield_after_send()
    if os.environ.get("AW_BENCH_SENDLOG"):  # =prefix: when each token left (bench/agent/sendlog.py)
        from bench.agent import sendlog  # noqa: PLC0415

        sendlog.install(os.environ["AW_BENCH_SENDLOG"])
    trace_to = os.environ.get("AW_BENCH_TRACE")  # =path: the start-up timeline (bench/agent/trace.py)
    trace = None
    if trace_to:
        from bench.agent import trace as tracing  # noqa: PLC0415

        trace = tracing.install(worker, trace_to)
    await worker.start()
    if worker.transport is not None:  # a worker is started well before bursts: let it finish
        transport = worker.transport
        pool = transport.pool
        for _ in range(400):
            if transport._clients.ready >= transport._spares() and not pool._wants_warm():
                break
            await asyncio.sleep(0.05)
    if trace is not None:
        tracing.install_pool(worker, trace)
    runner = await serve(worker, HttpConfig(port=0), port=0)
    if not os.environ.get("AW_BENCH_GC_DEFAULT"):  # as `agent-worker run` does; =1 to compare without
        raw = os.environ.get("AW_BENCH_GC_THRESHOLDS")
        thresholds = tuple(int(x) for x in raw.split(",")) if raw else GC_THRESHOLDS
        tune_gc(thresholds)  # type: ignore[arg-type]
    host, port = runner.addresses[0][:2]
    profile_to = os.environ.get("AW_BENCH_PROFILE")  # =path: cProfile the worker's whole run there
    profiler = None
    if profile_to:
        import cProfile  # noqa: PLC0415

        # AW_BENCH_PROFILE_CPU=1: time CPU, not wall (a send that wakes the server reads as slow under load)
        cpu = bool(os.environ.get("AW_BENCH_PROFILE_CPU"))
        profiler = cProfile.Profile(time.process_time) if cpu else cProfile.Profile()
        profiler.enable()
    emit("ready", {"url": f"http://{host}:{port}/api/chat", "pid": os.getpid()})
    try:
        await _until_stopped()
    finally:
        if profiler is not None and profile_to:
            profiler.disable()
            profiler.dump_stats(profile_to)
        if os.environ.get("AW_BENCH_GC"):
            import gc  # noqa: PLC0415

            for gen, (n, total, worst, collected) in sorted(_GC_BUSY.items()):
                sys.stderr.write(
                    f"gc while >= 50 runs: gen{gen} {n:.0f}x, CPU {total:.1f} ms (max {worst:.2f} ms), "
                    f"collected {collected:.0f}\n"
                )
            stats = ", ".join(f"gen{i} {s['collections']}x" for i, s in enumerate(gc.get_stats()))
            sys.stderr.write(
                f"gc totals: {stats}; tracked objects {len(gc.get_objects())}, "
                f"frozen {gc.get_freeze_count()}, thresholds {gc.get_threshold()}\n"
            )
        if worker.transport is not None:
            pool = worker.transport.pool
            clients = worker.transport._clients
            emit(
                "event",
                {
                    "event": "pool",
                    "peak": pool.peak,
                    "opened": pool.opened,
                    "closed": pool.closed,
                    "spares_taken": clients.taken_spare,
                    "clients_built": clients.built,
                },
            )
        await runner.cleanup()
        await worker.close(drain_timeout_s=2)
        if trace is not None:
            trace.close()


def main() -> None:
    role = sys.argv[1]
    cfg = json.loads(os.environ.get("AW_BENCH_CONFIG", "{}"))
    configure_logging(level="warning", fmt="console", stream=sys.stderr)
    target = {"server": server_main, "pyworker": pyworker_main}[role]
    eventloop.run(target(cfg))  # uvloop, as `agent-worker run` / `agent-worker server` use


if __name__ == "__main__":
    main()
