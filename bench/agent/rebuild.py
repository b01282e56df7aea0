"""``python -m bench.agent.rebuild``: the worker's history rebuild of a 1,000-message session, alone.

What the ``history`` phase of ``python -m bench agent`` measures from the POST, without the HTTP app
and the model: a cold :class:`AgentSession` attaches, locates the trigger just published and pages
history until its branch is complete (``AgentSession.locate``), as the supervisor does before
``ai-run-start``. The embedded server runs in its own process and the sessions are built once by
the official JS agent library (as for the benchmark); each sample is a fresh worker process
(``--per-process`` rebuilds, the first one a warm-up), so its wall time and CPU time
(``time.process_time``) are the rebuild's own. ``--compare=DIR`` alternates processes running the
``agent_worker`` package found in ``DIR`` (say an export of ``main``: ``git archive main | tar -x -C
/tmp/base``) with this checkout's, in the same conditions. Diagnostics only; nothing asserts on it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bench.agent import AGENT_CLIENT_ID, Child, Plan, populate


async def _child(cfg: dict[str, Any]) -> dict[str, Any]:
    import gc  # noqa: PLC0415

    from ably import AblyRest  # noqa: PLC0415
    from ably.types.message import Message  # noqa: PLC0415

    import agent_worker  # noqa: PLC0415
    from agent_worker.config import Secret  # noqa: PLC0415
    from agent_worker.runtime.session import AgentSession  # noqa: PLC0415
    from agent_worker.transport.ably import AblySettings, AblyTransport  # noqa: PLC0415
    from agent_worker.worker.service import GC_THRESHOLDS, tune_gc  # noqa: PLC0415

    endpoint = f"127.0.0.1:{cfg['port']}"
    settings = AblySettings(
        endpoint=endpoint, key=Secret(cfg["key"]), tls=False, client_id=AGENT_CLIENT_ID, connections=1
    )
    user = AblyRest(
        key=cfg["key"], endpoint=endpoint + "/", tls=False, client_id="bench-user", use_token_auth=True
    )
    transport = AblyTransport(settings)
    await transport.connect()
    tune_gc(GC_THRESHOLDS)
    in_gc = [0.0, 0.0]  # time spent in the collector, when the current collection started

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            in_gc[1] = time.perf_counter()
        else:
            in_gc[0] += time.perf_counter() - in_gc[1]
            if os.environ.get("AW_REBUILD_GC_LOG"):
                took = (time.perf_counter() - in_gc[1]) * 1000
                sys.stderr.write(f"gc gen{info['generation']} {took:.1f} ms, {info['collected']} collected\n")

    gc.callbacks.append(on_gc)
    samples: list[dict[str, Any]] = []
    try:
        for name, parent in cfg["sessions"]:
            event_id = str(uuid.uuid4())
            transport_headers = {
                "role": "user",
                "codec-message-id": str(uuid.uuid4()),
                "run-client-id": "bench-user",
                "event-id": event_id,
                "stream": "false",
                "discrete": "true",
                "parent": parent,
            }
            codec = {"kind": "user-message", "messageId": f"ui-{event_id[:8]}", "partType": "text"}
            extras = {"ai": {"transport": transport_headers, "codec": codec}}
            await user.channels.get(name).publish(
                messages=[Message(name="ai-input", data="more", extras=extras)]
            )
            profiler = None
            if cfg.get("profile") and len(samples) == len(cfg["sessions"]) - 1:
                import cProfile  # noqa: PLC0415

                profiler = cProfile.Profile()
                profiler.enable()
            collections = sum(s["collections"] for s in gc.get_stats())
            gc_before = in_gc[0]
            wall, cpu = time.perf_counter(), time.process_time()
            session = AgentSession(
                await transport.open_channel(name),
                agent_client_id=AGENT_CLIENT_ID,
                history_page_size=int(cfg.get("page_size") or 100),
            )
            await session.connect()
            run = session.create_run(event_id)
            trigger = await session.locate(run)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(cfg["profile"])
            assert session.missing_ancestor(trigger.leaf_anchor) is None
            samples.append(
                {
                    "wall_ms": wall * 1000,
                    "cpu_ms": cpu * 1000,
                    "gc": sum(s["collections"] for s in gc.get_stats()) - collections,
                    "gc_ms": round((in_gc[0] - gc_before) * 1000, 1),
                    "nodes": len(session.tree.nodes()),
                }
            )
    finally:
        await transport.close()
        await user.close()
    return {"code": os.path.dirname(agent_worker.__file__), "samples": samples}


def child_main() -> None:
    cfg = json.loads(os.environ["AW_REBUILD_CONFIG"])
    if cfg.get("code"):
        sys.path.insert(0, cfg["code"])  # before agent_worker is first imported
    from agent_worker import eventloop  # noqa: PLC0415

    print("@@ready " + json.dumps(eventloop.run(_child(cfg))), flush=True)


async def _populated(args: argparse.Namespace) -> tuple[Child | None, dict[str, Any]]:
    """The server and its sessions: started and built now, or those of a ``--hold`` process."""
    if args.state:
        return None, json.loads(Path(args.state).read_text())  # noqa: ASYNC240 - once, at start
    server = Child([sys.executable, "-m", "bench.agent.procs", "server"], {"AW_BENCH_CONFIG": "{}"})
    ready = await server.start()
    port, key = int(ready["port"]), str(ready["key"])
    names = [f"rebuild:{uuid.uuid4().hex[:8]}" for _ in range(args.sessions)]
    print(f"populating {len(names)} sessions of {args.turns * 2} messages ...", flush=True)
    made = await populate(port, key, Plan(turns=args.turns), names)
    return server, {"port": port, "key": key, "sessions": [(s["session"], s["lastCmid"]) for s in made]}


async def main(args: argparse.Namespace) -> None:
    server, state = await _populated(args)
    try:
        if args.hold:
            Path(args.hold).write_text(json.dumps(state))  # noqa: ASYNC240 - once
            print(f"server and sessions held; state in {args.hold}", flush=True)
            await asyncio.Event().wait()
        port, key, sessions = state["port"], state["key"], state["sessions"]
        codes: list[tuple[str, str | None, int]] = [("this", None, args.page_size)]
        if args.compare:
            codes.append(("compare", args.compare, args.page_size))
        if args.compare_page_size:
            codes.append((f"first{args.compare_page_size}", None, args.compare_page_size))
        results: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in codes}
        for rep in range(args.reps):
            for label, code, page_size in codes if rep % 2 == 0 else codes[::-1]:
                # Each process rebuilds --per-process sessions: a warm-up, then the samples.
                picked = [
                    sessions[(rep * args.per_process + i) % len(sessions)] for i in range(args.per_process)
                ]
                cfg = {
                    "port": port,
                    "key": key,
                    "code": code,
                    "sessions": picked,
                    "profile": args.profile,
                    "page_size": page_size,
                }
                child = Child(
                    [sys.executable, "-m", "bench.agent.rebuild", "child"],
                    {"AW_REBUILD_CONFIG": json.dumps(cfg)},
                )
                out = await child.start(limit_s=120)
                await child.stop()
                got = out["samples"][1:]
                results[label].extend(got)
                pairs = " ".join(f"{s['wall_ms']:6.1f}/{s['cpu_ms']:5.1f}" for s in got)
                print(
                    f"  {label:8} {pairs}  (wall/cpu ms; collections, ms in GC: "
                    f"{[(s['gc'], s['gc_ms']) for s in got]}; {out['code']})",
                    flush=True,
                )
        for label, samples in results.items():
            wall = [s["wall_ms"] for s in samples]
            cpu = [s["cpu_ms"] for s in samples]
            print(
                f"{label:8} wall median {statistics.median(wall):6.1f} min {min(wall):6.1f}  "
                f"cpu median {statistics.median(cpu):6.1f} min {min(cpu):6.1f}  "
                f"GC median {statistics.median(s['gc_ms'] for s in samples):5.1f} ms  (n={len(samples)})"
            )
    finally:
        if server is not None:
            await server.stop()


def run() -> None:
    if sys.argv[1:2] == ["child"]:
        child_main()
        return
    parser = argparse.ArgumentParser(prog="python -m bench.agent.rebuild", description=__doc__)
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--turns", type=int, default=500)
    parser.add_argument("--reps", type=int, default=6)
    parser.add_argument("--per-process", type=int, default=3)
    parser.add_argument("--hold", default=None, help="populate, write the state there and keep serving")
    parser.add_argument("--state", default=None, help="the state file of a --hold process")
    parser.add_argument("--profile", default=None, help="cProfile each process's last rebuild there")
    parser.add_argument("--page-size", type=int, default=100, help="the first history page's size")
    parser.add_argument("--compare-page-size", type=int, default=None, help="alternate with this first page")
    parser.add_argument("--compare", default=None, help="a directory holding another agent_worker package")
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    run()
