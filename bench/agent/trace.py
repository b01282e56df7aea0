"""``AW_BENCH_TRACE=path``: a start-up timeline of the benchmark's worker, one JSON line per event.

Diagnostics only (what the first-token time of N simultaneous starts is made of): per session, when
its POST arrived, when it was placed on a connection (and whether that opened one), when its channel
was attached, when its run was located (history read) and took a slot, and when each of its first
publishes (run-start, step-start, the stream's create) and presence messages went out; per
connection, when it started and finished opening; every rate-limiter wait. Times are
CLOCK_MONOTONIC microseconds, the clock the client stamps tokens with. It wraps the worker's objects
in the benchmark process only; nothing here runs in production. ``python -m bench.agent.trace path``
summarises a trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import json
import os
import statistics
import sys
import time
import types
from collections import defaultdict
from collections.abc import Callable
from typing import Any, TextIO

import structlog

from agent_worker.transport import ably as ably_transport
from agent_worker.transport.ratelimit import RateLimiter
from agent_worker.worker.service import Worker

__all__ = ["install", "summarise"]


def _now() -> int:
    return time.monotonic_ns() // 1000


def _cpu() -> int:
    return int(time.process_time() * 1e6)


def install(worker: Worker, path: str) -> TextIO:
    """Wrap ``worker``'s start-up path (before :meth:`Worker.start`) to write events to ``path``."""
    out = open(path, "w", buffering=1 << 16)  # noqa: SIM115 - closed by the caller

    def emit(event: str, **fields: Any) -> None:  # "c": the process's CPU time (µs) at the event
        out.write(json.dumps({"us": _now(), "c": _cpu(), "e": event, **fields}) + "\n")

    invoke = worker.invoke
    sessions: dict[str, str] = {}  # "latencyN-7" (the script's id) -> the session's name

    from bench.agent import script  # noqa: PLC0415

    script_emit = script.emit

    def traced_emit(tag: str, payload: dict[str, Any]) -> None:  # the model's call: "model"
        script_emit(tag, payload)
        if payload.get("event") == "prompt" and payload.get("id") in sessions:
            emit("model", s=sessions[payload["id"]])

    script.emit = traced_emit
    profile_to = os.environ.get("AW_BENCH_TRACE_PROFILE")  # =path: cProfile 1.5 s from the N-stream POSTs
    profiling: list[Any] = []

    # =path: py-spy (on PATH) samples the worker for AW_BENCH_TRACE_SPY_S (1) s, raw stacks
    spy_to = os.environ.get("AW_BENCH_TRACE_SPY")

    def maybe_profile(name: object) -> None:
        if spy_to and not profiling and ":latencyN:" in str(name):
            import subprocess  # noqa: PLC0415

            seconds = os.environ.get("AW_BENCH_TRACE_SPY_S", "1")
            argv = ["py-spy", "record", "--pid", str(os.getpid()), "--duration", seconds, "--rate", "1000"]
            profiling.append(subprocess.Popen([*argv, "--nonblocking", "--format", "raw", "-o", spy_to]))
            return
        if not profile_to or profiling or ":latencyN:" not in str(name):
            return
        import cProfile  # noqa: PLC0415

        # AW_BENCH_PROFILE_CPU=1: time CPU, not wall (as for AW_BENCH_PROFILE)
        cpu = bool(os.environ.get("AW_BENCH_PROFILE_CPU"))
        profiler = cProfile.Profile(time.process_time) if cpu else cProfile.Profile()
        profiling.append(profiler)
        profiler.enable()

        def stop() -> None:
            profiler.disable()
            profiler.dump_stats(profile_to)

        # AW_BENCH_TRACE_PROFILE_S: how long (s) to profile (a burst on a loaded machine lasts longer)
        asyncio.get_running_loop().call_later(float(os.environ.get("AW_BENCH_TRACE_PROFILE_S", "1.5")), stop)

    gate = worker._gate
    invoking: contextvars.ContextVar[object] = contextvars.ContextVar("traced_invoke", default=None)
    if gate is not None:  # [worker] start_concurrency: when each start got its place ("gated")
        gate_acquire = gate.acquire

        async def traced_gate_acquire() -> Any:
            lease = await gate_acquire()
            emit("gated", s=invoking.get())
            return lease

        gate.acquire = traced_gate_acquire  # type: ignore[method-assign]

    @functools.wraps(invoke)
    async def traced_invoke(session_name: object, input_event_id: object, **kw: Any) -> Any:
        emit("post", s=session_name)
        invoking.set(session_name)
        head, _, index = str(session_name).rpartition(":")
        sessions[f"{head.rpartition(':')[2]}-{index}"] = str(session_name)
        maybe_profile(session_name)
        try:
            return await invoke(session_name, input_event_id, **kw)
        finally:
            emit("invoked", s=session_name)

    worker.invoke = traced_invoke  # type: ignore[method-assign]

    # The HTTP side before the invocation: when the worker accepted each POST's connection
    # ("http_accept", counted, no session yet) and when the /api/chat handler was entered ("http").
    from aiohttp import web_protocol  # noqa: PLC0415

    from agent_worker.worker import http as worker_http  # noqa: PLC0415

    connection_made = web_protocol.RequestHandler.connection_made

    def traced_connection_made(self: Any, transport: Any) -> None:
        emit("http_accept")
        connection_made(self, transport)

    web_protocol.RequestHandler.connection_made = traced_connection_made  # type: ignore[method-assign]
    http_invoke = worker_http.invoke

    @functools.wraps(http_invoke)
    async def traced_http_invoke(request: Any) -> Any:
        emit("http")
        return await http_invoke(request)

    worker_http.invoke = traced_http_invoke  # type: ignore[assignment]

    located = worker.run_located

    async def traced_located(run: Any, trigger: Any) -> None:
        emit("located", s=run.session.name)
        await located(run, trigger)
        emit("slotted", s=run.session.name)

    worker.run_located = traced_located  # type: ignore[method-assign]

    new_session = worker._new_session

    def traced_new_session(channel: Any) -> Any:
        session = new_session(channel)
        connect = session.connect

        async def traced_connect() -> None:
            emit("attach_start", s=session.name)
            await connect()
            emit("attached", s=session.name)

        session.connect = traced_connect  # type: ignore[method-assign]
        load_page = session._load_page

        async def traced_load_page() -> bool:  # a history page: read (decoded) and folded
            loaded = await load_page()
            emit("page_folded", s=session.name, nodes=len(session._tree._nodes))
            return loaded

        session._load_page = traced_load_page  # type: ignore[method-assign]
        return session

    worker._new_session = traced_new_session  # type: ignore[method-assign]

    limiter_acquire = RateLimiter.acquire

    kinds = {  # the function that took the token -> what it sends
        "start": "run-start", "_open_step": "step-start", "_send_held": "opening batch",
        "_create_behind_held": "create", "_publish": "create", "_finish": "finish",
        "_flush_buffers": "append", "_submit": "closing append", "presence_enter": "presence",
        "presence_update": "presence", "update": "update",
    }  # fmt: skip

    def kind() -> str:
        frame: types.FrameType | None = sys._getframe(2)
        for _ in range(12):
            if frame is None:
                break
            found = kinds.get(frame.f_code.co_name)
            if found is not None:
                return found
            frame = frame.f_back
        return "?"

    async def traced_acquire(self: RateLimiter, *, defer: bool = False) -> None:
        sends = kind()
        t0 = _now()
        await (limiter_acquire(self, defer=True) if defer else limiter_acquire(self))
        waited = _now() - t0
        if waited > 1000:
            task = asyncio.current_task()
            what = getattr(task.get_coro(), "__qualname__", "?") if task is not None else "?"
            # The run's session, when the waiting task runs in its context (structlog binds it).
            session = structlog.contextvars.get_contextvars().get("session")
            emit(
                "limiter_wait",
                limiter=id(self),
                us_waited=waited,
                what=what,
                ws=session,
                defer=defer,
                sends=sends,
            )

    RateLimiter.acquire = traced_acquire  # type: ignore[method-assign]

    channel_cls = ably_transport.Channel
    publish_batch = channel_cls.publish_batch

    async def traced_publish(self: Any, msgs: Any, **kw: Any) -> Any:
        names = [m.name for m in msgs]
        emit("publish", s=self.name, names=names)
        try:
            return await publish_batch(self, msgs, **kw)
        finally:
            emit("published", s=self.name, names=names)

    channel_cls.publish_batch = traced_publish  # type: ignore[method-assign]
    start_publish: Any = getattr(channel_cls, "start_publish", None)

    def traced_start_publish(self: Any, msg: Any) -> Any:
        emit("publish", s=self.name, names=[msg.name])
        task = start_publish(self, msg)
        task.add_done_callback(lambda _t: emit("published", s=self.name, names=[msg.name]))
        return task

    if start_publish is not None:  # pipelined run-starts
        channel_cls.start_publish = traced_start_publish  # type: ignore[method-assign]
    send_batch: Any = getattr(channel_cls, "send_batch", None)

    async def traced_send_batch(self: Any, msgs: Any) -> Any:
        names = [m.name for m in msgs]
        emit("publish", s=self.name, names=names)
        try:
            return await send_batch(self, msgs)
        finally:
            emit("published", s=self.name, names=names)

    if send_batch is not None:  # opening batches whose rate tokens the writer took
        channel_cls.send_batch = traced_send_batch  # type: ignore[method-assign]
    start_append = channel_cls.start_append

    def traced_start_append(self: Any, serial: str, msg: Any) -> Any:
        data = msg.data if isinstance(msg.data, str) else ""
        if data.startswith("1:"):  # the script's first token: "1:<us it left the model>:<due>;"
            with contextlib.suppress(ValueError):
                stamp = int(data[2:].split(";", 1)[0].split(":", 1)[0])
                out.write(json.dumps({"us": stamp, "e": "token1", "s": self.name}) + "\n")
        emit("append", s=self.name)
        return start_append(self, serial, msg)

    channel_cls.start_append = traced_start_append  # type: ignore[method-assign]

    for op in ("presence_enter", "presence_update"):
        original = getattr(channel_cls, op)

        def make(original: Any, op: str) -> Any:
            async def traced(self: Any, data: Any) -> None:
                emit(op, s=self.name)
                await original(self, data)
                emit(f"{op}_done", s=self.name)

            return traced

        setattr(channel_cls, op, make(original, op))

    emit("installed")
    return out


def install_pool(worker: Worker, emit_to: TextIO) -> None:
    """After :meth:`Worker.start`: trace placement and connection opening."""

    def emit(event: str, **fields: Any) -> None:
        emit_to.write(json.dumps({"us": _now(), "e": event, **fields}) + "\n")

    assert worker.transport is not None
    pool = worker.transport.pool
    connect = pool._connect
    counter = iter(range(1_000_000))

    async def traced_connect() -> Any:
        n = next(counter)
        emit("conn_open", n=n)
        try:
            return await connect()
        finally:
            emit("conn_opened", n=n)

    pool._connect = traced_connect

    async def lag_monitor() -> None:
        loop = asyncio.get_running_loop()
        cpu_at = loop.time()
        while True:
            t0 = loop.time()
            await asyncio.sleep(0.01)
            lag = loop.time() - t0 - 0.01
            if lag > 0.005:
                emit("loop_lag", us_lag=int(lag * 1e6))
            if t0 - cpu_at >= 0.1:  # the process's CPU time, every ~100 ms
                cpu_at = t0
                emit("cpu", us_cpu=int(time.process_time() * 1e6))

    worker._trace_lag = asyncio.get_running_loop().create_task(lag_monitor())  # type: ignore[attr-defined]
    import gc  # noqa: PLC0415

    gc_start: list[float] = [0.0]

    def gc_callback(phase: str, info: dict[str, int]) -> None:  # every collection: its CPU time
        if phase == "start":
            gc_start[0] = time.process_time()
        else:
            took = int((time.process_time() - gc_start[0]) * 1e6)
            emit("gc", gen=info["generation"], us_cpu=took, collected=info["collected"])

    gc.callbacks.append(gc_callback)
    rest = worker.transport._rest
    assert rest is not None
    request = rest.request

    async def traced_request(method: str, path: str, *args: Any, **kw: Any) -> Any:
        t0 = _now()
        try:
            return await request(method, path, *args, **kw)
        finally:
            emit("rest", path=path, us_took=_now() - t0)

    rest.request = traced_request  # type: ignore[method-assign]
    request_token = rest.auth.request_token

    async def traced_token(*args: Any, **kw: Any) -> Any:  # the REST client's own token requests
        emit("token_request")
        return await request_token(*args, **kw)

    rest.auth.request_token = traced_token  # type: ignore[method-assign]
    reader = worker.transport.history_reader
    page = reader.page

    async def traced_page(path_qs: str) -> Any:
        t0 = _now()
        try:
            return await page(path_qs)
        finally:
            emit("rest", path=path_qs.partition("?")[0], us_took=_now() - t0)

    reader.page = traced_page  # type: ignore[method-assign]
    clients = worker.transport._clients
    take = clients.take

    async def traced_take() -> Any:
        before = clients.taken_spare
        client = await take()
        emit("client_taken", spare=clients.taken_spare > before)
        return client

    clients.take = traced_take  # type: ignore[method-assign]
    assign = pool._assign

    def traced_assign(name: str, conn: Any, now: float) -> Any:
        emit("placed", s=name, conn=pool.connections.index(conn))
        return assign(name, conn, now)

    pool._assign = traced_assign  # type: ignore[method-assign]


def _pcts(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)

    def p(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]

    return f"p50 {p(50):7.1f}  p90 {p(90):7.1f}  max {ordered[-1]:7.1f}  (n={len(values)})"


def _firsts(
    events: list[dict[str, Any]], prefix: str, value: Callable[[dict[str, Any]], Any], *, joined: bool
) -> Any:
    """Per session whose name has ``prefix``: each event kind's first ``value`` (a publish keyed by
    its first message's name, or by all of them ``joined``)."""
    first: dict[str, dict[str, Any]] = defaultdict(dict)
    for ev in events:
        s = ev.get("s")
        if not isinstance(s, str) or prefix not in s:
            continue
        key = ev["e"]
        if key in ("publish", "published"):
            key = f"{key}:{'+'.join(ev['names']) if joined else ev['names'][0]}"
        first[s].setdefault(key, value(ev))
    return first


def summarise(path: str, prefix: str = "bench:") -> str:
    """Per-step milliseconds after each session's POST, over the sessions whose name has ``prefix``."""
    events = [json.loads(line) for line in open(path)]  # noqa: SIM115
    first: dict[str, dict[str, int]] = _firsts(events, prefix, lambda ev: ev["us"], joined=False)
    lines = []
    steps = [
        "gated", "placed", "attach_start", "attached", "invoked", "located", "slotted", "model",
        "presence_enter", "presence_enter_done", "publish:ai-run-start", "published:ai-run-start",
        "published:ai-step-start", "published:ai-output", "token1", "append",
    ]  # fmt: skip
    names = sorted({k for d in first.values() for k in d})
    for step in steps + [n for n in names if n not in steps and n != "post"]:
        deltas = [(d[step] - d["post"]) / 1000 for d in first.values() if "post" in d and step in d]
        lines.append(f"  {step:28s} {_pcts(deltas)}")
    opens = {ev["n"]: ev["us"] for ev in events if ev["e"] == "conn_open"}
    durations = [(ev["us"] - opens[ev["n"]]) / 1000 for ev in events if ev["e"] == "conn_opened"]
    lines.append(f"  connection open (ms)         {_pcts(durations)}")
    posts = [d["post"] for d in first.values() if "post" in d]
    if posts and opens:
        t0 = min(posts)
        grow = sorted((us - t0) / 1000 for us in opens.values() if us >= t0)
        at = [round(g) for g in grow]
        lines.append(f"  connections opened after the first POST: {len(grow)}, at ms {at}")
    taken = [ev["spare"] for ev in events if ev["e"] == "client_taken"]
    lines.append(f"  clients for new connections: {sum(taken)} spares, {len(taken) - sum(taken)} built then")
    rests = [ev["us_took"] / 1000 for ev in events if ev["e"] == "rest" and prefix.strip(":") in ev["path"]]
    lines.append(f"  REST request (ms)            {_pcts(rests)}")
    posts_all = [ev["us"] for ev in events if ev["e"] == "post" and prefix in str(ev.get("s"))]
    if posts_all:
        t0 = min(posts_all)
        lags = [(ev["us"] - t0, ev["us_lag"]) for ev in events if ev["e"] == "loop_lag" and ev["us"] >= t0]
        window = [lag / 1000 for at, lag in lags if at < 1_500_000]
        lines.append(f"  worker loop lag > 5 ms in the first 1.5 s: {len(window)}x, {sum(window):.0f} ms")
        tokens = [ev for ev in events if ev["e"] == "token_request" and ev["us"] >= t0]
        lines.append(f"  REST client token requests after the first POST: {len(tokens)}")
        gcs = [ev for ev in events if ev["e"] == "gc" and 0 <= ev["us"] - t0 < 1_000_000]
        gc_ms = sum(ev["us_cpu"] for ev in gcs) / 1000
        gens = [ev["gen"] for ev in gcs]
        lines.append(f"  GC in the first 1 s: {len(gcs)} collections (gen {gens}), {gc_ms:.0f} ms CPU")
        cpus = [(ev["us"] - t0, ev["us_cpu"]) for ev in events if ev["e"] == "cpu"]
        before = [c for at, c in cpus if at < 0]
        within = [c for at, c in cpus if 0 <= at < 1_000_000]
        if before and within:
            cpu_ms = (within[-1] - before[-1]) / 1000
            lines.append(f"  worker CPU in the first 1 s after the first POST: {cpu_ms:.0f} ms")
        # CPU time is what a loaded machine does not inflate the way it does wall time.
        stamped = [ev for ev in events if "c" in ev and prefix in str(ev.get("s"))]
        posts_c = [ev["c"] for ev in stamped if ev["e"] == "post"]
        appends: dict[str, int] = {}
        for ev in stamped:
            if ev["e"] == "append":
                appends.setdefault(ev["s"], ev["c"])
        if posts_c and appends:
            burst_ms = (max(appends.values()) - min(posts_c)) / 1000
            lines.append(
                f"  worker CPU from the first POST to the last first append: {burst_ms:.0f} ms"
                f" ({burst_ms / len(appends):.2f} ms per start, n={len(appends)})"
            )
    waits = [ev["us_waited"] / 1000 for ev in events if ev["e"] == "limiter_wait"]
    lines.append(f"  limiter waits (ms)           {_pcts(waits)}  total {sum(waits):.0f} ms")
    if waits:
        lines.append(f"  mean wait {statistics.mean(waits):.1f} ms")
    return "\n".join(lines)


def history(path: str, marker: str = ":hist:") -> str:
    """Per history-phase session: POST → located in wall and worker CPU ms, the collector's CPU in
    between, and each page's fold (``+wall/cpu`` ms after the POST, tree nodes so far)."""
    events = [json.loads(line) for line in open(path)]  # noqa: SIM115
    lines = []
    for post in (ev for ev in events if ev["e"] == "post" and marker in str(ev.get("s"))):
        name, t0, c0 = post["s"], post["us"], post.get("c", 0)
        mine = [ev for ev in events if ev["us"] >= t0]
        located = next((ev for ev in mine if ev["e"] == "located" and ev.get("s") == name), None)
        if located is None:
            continue
        t1 = located["us"]
        gcs = [ev for ev in mine if ev["e"] == "gc" and ev["us"] <= t1]
        pages = [
            f"+{(ev['us'] - t0) / 1000:.0f}/{(ev['c'] - c0) / 1000:.0f} ({ev['nodes']})"
            for ev in mine
            if ev["e"] == "page_folded" and ev.get("s") == name and ev["us"] <= t1
        ]
        cpu_ms = (located.get("c", 0) - c0) / 1000
        lines.append(
            f"  {name}: located +{(t1 - t0) / 1000:.1f} ms wall, {cpu_ms:.1f} ms CPU; "
            f"GC {len(gcs)}x {sum(ev['us_cpu'] for ev in gcs) / 1000:.1f} ms CPU "
            f"(gen {[ev['gen'] for ev in gcs]}); pages folded at wall/CPU ms: {', '.join(pages)}"
        )
    return "\n".join(lines)


def burst(path: str, prefix: str = ":latencyN:") -> str:
    """The burst on one clock: each step's time after the burst's *first* POST (not the session's
    own), so the order in which starts are served shows (p10 / p50 / p90 over the sessions), with
    the worker's CPU spent by then (``c``); then the gaps after the model's first token and the
    rate-limiter waits each session took before its first append."""
    events = [json.loads(line) for line in open(path)]  # noqa: SIM115
    per: dict[str, dict[str, tuple[int, int | None]]] = _firsts(
        events, prefix, lambda ev: (ev["us"], ev.get("c")), joined=True
    )
    posts = [d["post"] for d in per.values() if "post" in d]
    if not posts:
        return "no session with a POST"
    t0, c0 = min(posts)
    c0 = c0 or 0

    def q(values: list[float], p: float) -> float:
        ordered = sorted(values)
        return ordered[int((len(ordered) - 1) * p)] if ordered else float("nan")

    lines = ["  step (ms after the first POST)   p10    p50    p90  | worker CPU by then (p50)"]
    steps = [
        "post", "gated", "attached", "located", "model", "published:ai-run-start",
        "published:ai-output+ai-output", "token1", "publish:ai-output", "published:ai-output", "append",
    ]  # fmt: skip
    for step in steps:
        at = [(d[step][0] - t0) / 1000 for d in per.values() if step in d]
        cpu = [(c - c0) / 1000 for d in per.values() if step in d and (c := d[step][1]) is not None]
        if at:
            cpu_p50 = f"{q(cpu, 0.5):6.0f}" if cpu else "     -"
            spread = f"{q(at, 0.1):6.0f} {q(at, 0.5):6.0f} {q(at, 0.9):6.0f}"
            lines.append(f"  {step:30s} {spread}  | {cpu_p50}  (n={len(at)})")
    waits: dict[str, float] = defaultdict(float)
    for ev in events:
        s = ev.get("ws")
        if ev["e"] != "limiter_wait" or not isinstance(s, str) or "append" not in per.get(s, {}):
            continue
        if ev["us"] <= per[s]["append"][0]:
            waits[s] += ev["us_waited"] / 1000
    for a, b in (("token1", "publish:ai-output"), ("publish:ai-output", "published:ai-output"),
                 ("published:ai-output", "append"), ("token1", "append")):  # fmt: skip
        gaps = [(d[b][0] - d[a][0]) / 1000 for d in per.values() if a in d and b in d]
        if gaps:
            lines.append(
                f"  {a} -> {b}: p10 {q(gaps, 0.1):.1f}  p50 {q(gaps, 0.5):.1f}  p90 {q(gaps, 0.9):.1f} ms"
            )
    last = max((d["append"][0] for d in per.values() if "append" in d), default=t0)
    by_task: dict[str, list[float]] = defaultdict(list)
    for ev in events:  # every limiter wait from the first POST to the last first append, by task
        if ev["e"] == "limiter_wait" and t0 <= ev["us"] <= last:
            what = ev.get("sends") or ev.get("what", "?")  # what it sent, else its task
            by_task[f"{what}{' (deferrable)' if ev.get('defer') else ''}"].append(ev["us_waited"] / 1000)
    for what, ms in sorted(by_task.items(), key=lambda kv: -len(kv[1])):
        lines.append(
            f"  limiter waits in the burst, {what}: {len(ms)}, p50 {q(ms, 0.5):.0f}, p90 {q(ms, 0.9):.0f} ms"
        )
    before = [waits.get(s, 0.0) for s, d in per.items() if "append" in d]
    lines.append(
        f"  rate-limiter waits before a session's first append: p50 {q(before, 0.5):.0f},"
        f" p90 {q(before, 0.9):.0f} ms"
        f" (sessions waiting: {sum(1 for w in before if w > 0)} of {len(before)})"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[2:3] == ["--history"]:
        print(history(sys.argv[1]))
    elif sys.argv[2:3] == ["--burst"]:
        print(burst(sys.argv[1], *(sys.argv[3:4])))
    else:
        print(summarise(sys.argv[1], *(sys.argv[2:3])))
