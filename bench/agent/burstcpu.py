"""``python -m bench.agent.burstcpu``: the worker's CPU per start in a burst of simultaneous starts.

The bench's ``latencyN`` phase moves 2x with the machine's load and carries the steady streams on
the same loop; this measures only what a burst of starts costs the worker. The worker, as
``bench.agent.procs pyworker`` builds it (production defaults: pool, limiter, presence, coalescing;
uvloop; warning-level logs), runs in this process's main thread, the embedded server
(``--enforce-rate-limits``) in a child process, and the client's ``--n`` simultaneous POSTs come
from a second thread, their inputs published beforehand over REST. The model yields its first
token after ``--first-token-ms`` and holds the run open until every run has yielded one. Counted:
the main thread's CPU (``time.thread_time``: not the client thread's) from the first POST to the
``--n``-th first append's frame (``--until=append``, the default since the tenth round: what the
bench's first token waits for; ``--until=token``: to the model's ``--n``-th first token, as the
eighth and ninth rounds counted, which leaves out the step-start's ACK, the opening batch, the
create and the append), per start; each round on new sessions after a quiet 6 s (warm connections
and spare clients back). The first round is cold (discarded in the median). ``--profile=path``: a
``thread_time`` cProfile of the rounds (it slows small Python calls ~5x: read it for the call
tree, not the shares); ``--attribute``: the CPU per loop callback (task, socket read), exact, on
asyncio's own loop; ``--count-frames``: the worker's websocket frames in and out per start, by
action. Diagnostics only; nothing asserts on it. (b7's harness of the eighth round.)
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import dataclasses
import gc
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from agent_worker.agent import Agent
from agent_worker.config import AblyConfig, Secret, WorkerConfig
from agent_worker.protocol.wire import OutboundMessage
from agent_worker.providers.base import ModelRequest, StreamEvent
from agent_worker.providers.echo import ScriptedProvider
from agent_worker.transport.ably import AblySettings, Channel
from agent_worker.worker.service import Worker
from bench.agent import AGENT_CLIENT_ID
from bench.agent.inproc import start_harness, start_server


class _Gate:
    """Every run yields one token (after ``delay_s``), then waits here until the round's runs all
    have."""

    def __init__(self, target: int, delay_s: float = 0.0) -> None:
        self.target = target
        self.delay_s = delay_s
        self.count = 0
        self.called = 0
        """Model calls so far; at the round's median call ``on_median_call`` runs (``--split``)."""
        self.on_median_call: Callable[[], None] | None = None
        self.all_first = asyncio.Event()
        self.all_appended = asyncio.Event()
        self.release = asyncio.Event()


GATE = _Gate(0)


async def _gated_script(_request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
    GATE.called += 1
    if GATE.called == (GATE.target + 1) // 2 and GATE.on_median_call is not None:
        GATE.on_median_call()
    if GATE.delay_s:
        await asyncio.sleep(GATE.delay_s)
    yield "first "
    GATE.count += 1
    if GATE.count >= GATE.target:
        GATE.all_first.set()
    await GATE.release.wait()
    yield "second"


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _FrameCount:
    """The worker's realtime frames in and out by action, inside the rounds' windows (the SDK's
    transport class wrapped: every connection's frames)."""

    def __init__(self) -> None:
        from ably.transport.websockettransport import WebSocketTransport  # noqa: PLC0415

        self.counting = False
        self.out: collections.Counter[str] = collections.Counter()
        self.inbound: collections.Counter[str] = collections.Counter()
        send, decode = WebSocketTransport.send, WebSocketTransport.decode_raw_websocket_frame
        counter = self

        async def counted_send(transport: Any, message: dict[str, Any]) -> None:
            if counter.counting:
                counter.out[_frame_kind(message)] += 1
            await send(transport, message)

        def counted_decode(transport: Any, raw: Any) -> dict[str, Any]:
            msg: dict[str, Any] = decode(transport, raw)
            if counter.counting:
                counter.inbound[_frame_kind(msg)] += 1
            return msg

        WebSocketTransport.send = counted_send  # type: ignore[method-assign]
        WebSocketTransport.decode_raw_websocket_frame = counted_decode  # type: ignore[method-assign]

    def report(self, starts: int) -> None:
        for label, counts in (("out", self.out), ("in", self.inbound)):
            total = sum(counts.values())
            parts = ", ".join(f"{k} {v / starts:.2f}" for k, v in counts.most_common())
            print(f"FRAMES {label} per start {total / starts:.2f}: {parts}")


class _Attribution:
    """The main thread's CPU per loop callback, by what ran: a task's step counts for the task's
    coroutine (its qualified name and module), a socket's read for its protocol's class, any other
    callback for itself. Needs asyncio's own loop (``AGENT_WORKER_EVENT_LOOP=asyncio``: uvloop's
    handles are C), whose callbacks all pass through ``Handle._run``; exact per callback, where
    cProfile slows small Python calls ~5x and a sampling thread only gets the GIL where the loop
    releases it (``os.urandom``, socket writes)."""

    def __init__(self, detail: bool) -> None:
        self.counting = False
        self.phase = ""
        """``--split``: "before " until the round's median model call, then "after " (a key prefix)."""
        self.cpu: dict[str, float] = collections.defaultdict(float)
        self.calls: collections.Counter[str] = collections.Counter()
        self.detail = detail
        run = asyncio.events.Handle._run
        clock = time.thread_time
        counter = self
        main = threading.main_thread().ident

        def timed_run(handle: asyncio.Handle) -> None:
            if not counter.counting or threading.get_ident() != main:
                run(handle)
                return
            key = counter.phase + _callback_key(handle)
            t0 = clock()
            run(handle)
            if detail:
                key += _suspended_at(handle)
            counter.cpu[key] += clock() - t0
            counter.calls[key] += 1

        asyncio.events.Handle._run = timed_run  # type: ignore[method-assign,assignment]

    def report(self, starts: int, cpu_s: float) -> None:
        total = sum(self.cpu.values())
        print(
            f"ATTRIBUTION {total * 1000 / starts:.3f} ms/start in loop callbacks of"
            f" {cpu_s * 1000 / starts:.3f} ms/start worker CPU"
        )
        top = sorted(self.cpu.items(), key=lambda kv: -kv[1])[: 150 if self.detail else 60]
        for key, value in top:
            print(
                f"  {value * 1000 / starts:7.3f} ms/start {self.calls[key] / starts:6.2f} calls/start  {key}"
            )


def _callback_key(handle: asyncio.Handle) -> str:
    callback = handle._callback  # type: ignore[attr-defined]
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        coro = owner.get_coro()
        code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None)
        name = getattr(coro, "__qualname__", type(coro).__name__)
        where = code.co_filename.rsplit("/", 2) if code is not None else ["?"]
        key = f"task {'/'.join(where[-2:])}:{name}"
        frame = getattr(coro, "cr_frame", None)
        if name == "WebSocketTransport.on_protocol_message" and frame is not None:
            msg = frame.f_locals.get("msg")
            if isinstance(msg, dict):
                key += f" [{_frame_kind(msg)}]"
        return key
    protocol = getattr(owner, "_protocol", None)
    if protocol is not None:
        return f"read {type(protocol).__module__}.{type(protocol).__qualname__}"
    name = getattr(callback, "__qualname__", None) or type(callback).__name__
    module = getattr(callback, "__module__", None) or type(owner).__module__
    return f"call {module}.{name}"


def _suspended_at(handle: asyncio.Handle) -> str:
    """Where the task that ``handle`` stepped suspended (its innermost awaiting coroutine)."""
    owner = getattr(handle._callback, "__self__", None)  # type: ignore[attr-defined]
    if not isinstance(owner, asyncio.Task):
        return ""
    if owner.done():
        return " -> done"
    coro: Any = owner.get_coro()
    where = ""
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            where = f"{frame.f_code.co_name}:{frame.f_lineno}"
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return f" -> {where}"


def _frame_kind(msg: dict[str, Any]) -> str:
    from ably.transport.websockettransport import ProtocolMessageAction  # noqa: PLC0415

    action = msg.get("action")
    try:
        name = str(ProtocolMessageAction(action).name)
    except ValueError:
        name = str(action)
    if name == "MESSAGE":
        name += f"x{len(msg.get('messages') or [])}"
    elif name == "ACK":
        name += f"(count {msg.get('count', 1)})"
    return name


async def _main(args: argparse.Namespace) -> None:
    global GATE  # noqa: PLW0603 - the script reads the round's gate
    server, info = start_server(enforce=True)
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
    harness = await start_harness(worker, info)
    client = harness.client

    profiler = cProfile.Profile(time.thread_time) if args.profile else None
    per_start: list[float] = []
    first_append_p50: list[float] = []
    first_appends: dict[str, float] = {}
    start_append = Channel.start_append

    def traced_start_append(self: Channel, serial: str, msg: OutboundMessage) -> Any:
        if self.name not in first_appends:
            first_appends[self.name] = time.monotonic()
            if len(first_appends) >= GATE.target:
                GATE.all_appended.set()
        return start_append(self, serial, msg)

    Channel.start_append = traced_start_append  # type: ignore[method-assign]
    frames = _FrameCount() if args.count_frames else None
    attribution = _Attribution(args.attribute == "detail") if args.attribute else None
    total_cpu = 0.0
    done = 0
    for rnd in range(args.rounds):
        items = []
        for i in range(args.n):
            ask = {"bench": "stream", "id": f"{rnd}-{i}", "tokens": 1, "rate": 0}
            items.append(await harness.publish_ask("burst", ask))
        await asyncio.sleep(args.quiet)  # warm connections topped up, spare clients built
        gc.collect()
        GATE = _Gate(args.n, args.first_token_ms / 1000)
        if attribution is not None and args.split:
            attribution.phase = "before "
            split = attribution

            def median_called(split: _Attribution = split) -> None:
                split.phase = "after "

            GATE.on_median_call = median_called
        first_appends.clear()
        server_cpu = _cpu_s(server.pid)
        cpu, wall = time.thread_time(), time.perf_counter()
        started = time.monotonic()
        if profiler is not None:
            profiler.enable()
        if frames is not None:
            frames.counting = True
        if attribution is not None:
            attribution.counting = True
        futures = [client.call(harness.post(name, eid)) for name, eid in items]
        statuses = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        assert all(s == 200 for s in statuses), statuses
        await asyncio.wait_for(GATE.all_first.wait(), 120)
        if args.until == "append":
            await asyncio.wait_for(GATE.all_appended.wait(), 120)
        if profiler is not None:
            profiler.disable()
        if frames is not None:
            frames.counting = False
        if attribution is not None:
            attribution.counting = False
        cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
        server_cpu = _cpu_s(server.pid) - server_cpu
        GATE.release.set()
        done += args.n
        await worker.wait_for_runs(done, 120)
        per_start.append(cpu * 1000 / args.n)
        total_cpu += cpu
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
    if frames is not None:
        frames.report(args.n * args.rounds)
    if attribution is not None:
        attribution.report(args.n * args.rounds, total_cpu)
    await harness.close(worker, server)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.agent.burstcpu", description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100, help="simultaneous starts per round")
    ap.add_argument("--rounds", type=int, default=6, help="rounds (the first is cold)")
    ap.add_argument("--quiet", type=float, default=6.0, help="seconds between rounds")
    ap.add_argument("--profile", help="write a thread_time cProfile of the rounds here")
    ap.add_argument(
        "--until",
        choices=("append", "token"),
        default="append",
        help="the window ends at the last first append's frame (default) or the model's last first token",
    )
    ap.add_argument(
        "--attribute",
        choices=("task", "detail"),
        help="the worker's CPU by loop callback (task, socket read, callback); detail: by where each"
        " task step suspended too; asyncio's loop only",
    )
    ap.add_argument(
        "--count-frames",
        action="store_true",
        help="count the worker's websocket frames in and out (by action) inside the rounds' windows",
    )
    ap.add_argument(
        "--first-token-ms", type=float, default=0.0, help="the model's delay before its first token"
    )
    ap.add_argument(
        "--split",
        action="store_true",
        help="with --attribute: the CPU before the round's median model call apart from the CPU after it",
    )
    args = ap.parse_args(argv)
    from agent_worker import eventloop  # noqa: PLC0415
    from agent_worker.logs import configure_logging  # noqa: PLC0415

    configure_logging(level="warning", fmt="console", stream=sys.stderr)
    if args.attribute:
        asyncio.run(_main(args))  # Handle._run is asyncio's own loop's (uvloop's handles are C)
    else:
        eventloop.run(_main(args))


if __name__ == "__main__":
    main()
