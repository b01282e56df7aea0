"""Agent-runtime benchmark: this Python worker vs the official JS agent, side by side.

``python -m bench agent`` (or ``python -m bench.agent``) starts the embedded server in its own
process, then, for each agent variant, that agent in its own process — the official
@ably/ai-transport 0.8.0 agent (``tests/js/bench/agent.mjs``, the README's route handler) or this
worker (``bench/agent/procs.py``) — both fed the same scripted token stream
(``bench/agent/script.py``), and runs the same client workload against it
(``tests/js/bench/client.mjs``): provider→client latency at 1 and N concurrent streams, tokens/s
and tokens per agent CPU-second, memory per active run, cancel latency (``ai-cancel`` published →
provider stream closed) and the time to rebuild a 1,000-message session from history. It writes
the "Agent runtime" section of ``docs/benchmarks.md``. Loopback only; every phase is bounded in
count and time. Not a test: nothing asserts on timings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.node_support import JS_ROOT, node_binary, node_config, run_node_async

AGENT_CLIENT_ID = "agent-worker"
"""The worker's clientId. The history sessions are populated under it: the worker folds lifecycle
messages only from its own clientId, as if an earlier run of the same agent had built them."""

ROOT = Path(__file__).resolve().parents[2]

CLIENT = JS_ROOT / "bench" / "client.mjs"
JS_AGENT = JS_ROOT / "bench" / "agent.mjs"
DOC = ROOT / "docs" / "benchmarks.md"
START = "<!-- bench:agent:start -->"
END = "<!-- bench:agent:end -->"
COMMAND = ".venv/bin/python -m bench agent"

# Agent variants. "js" and "py" run like for like on a server without rate limits, with Ably's
# server-side append rollup turned off for both (appendRollupWindow=0): one append per token each
# (the worker's coalescing off), no presence, no push notifications (the JS agent has neither), the
# worker's outbound limiter lifted. "py-defaults" is the worker exactly as shipped (coalescing,
# limiter, presence, connection pool, the service's default 40 ms rollup) against a server enforcing
# Ably's limits. Every Python variant raises max_concurrent_runs (default 32) and
# max_pending_invocations (default 256: invocations whose input is still being looked up in history,
# all 500 of the big run's at once) so the N-stream phases can run.
VARIANTS: dict[str, dict[str, Any]] = {
    "js": {"kind": "js", "label": "official JS agent", "rollup": 0},
    "py": {
        "kind": "py",
        "label": "Python worker (like-for-like)",
        # 500 channels on one ably-python connection: attaches time out on this shared machine.
        "skip": ("latencyBig",),
        "max_messages_per_second": 1_000_000.0,
        "burst": 100_000,
        "max_connections": 1,
        "rollup": 0,
        "worker": {
            "coalesce_window_ms": 0.0,
            "presence": False,
            "notify": "never",
            "max_concurrent_runs": 1000,
            "max_pending_invocations": 1000,
        },
    },
    "py-defaults": {
        "kind": "py",
        "label": "Python worker (production defaults, enforced limits)",
        "server": "limits",
        "worker": {"max_concurrent_runs": 1000, "max_pending_invocations": 1000},
    },
}


def base_variant(key: str) -> str:
    """A run's key is its variant's name, or ``name#k`` for the k-th run of that variant in one bench
    run (``--variants=js,js``: the same agent twice, an order check)."""
    return key.split("#", 1)[0]


def variant_spec(key: str) -> dict[str, Any]:
    return VARIANTS[base_variant(key)]


def variant_label(key: str) -> str:
    label = str(variant_spec(key)["label"])
    return f"{label} (run {key.split('#', 1)[1]})" if "#" in key else label


def run_keys(variants: list[str]) -> list[str]:
    """``["js", "py", "js"]`` → ``["js", "py", "js#2"]``: a repeated variant gets a key of its own."""
    seen: dict[str, int] = {}
    keys = []
    for v in variants:
        seen[v] = seen.get(v, 0) + 1
        keys.append(v if seen[v] == 1 else f"{v}#{seen[v]}")
    return keys


@dataclass(frozen=True, slots=True)
class Plan:
    streams: int = 100
    big: int = 500
    turns: int = 500
    reps: int = 2
    cancels: int = 20
    protocol: str = "msgpack"
    only: tuple[str, ...] = ()
    """Run just these phases (plus ``warmup``); the doc is then not written."""
    skip: tuple[str, ...] = ()
    counterbalance: bool = True
    """The like-for-like N-stream phase in passes of its own, A B B A (:func:`counterbalanced`)."""
    quiet_retries: int = 0
    """Run the A B B A block again, up to this many times, while one of its passes had more than
    ``STEAL_DISTURBED_PCT`` steal; the rows report the block :func:`choose_block` picks."""

    def phases(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        every = {k: v for k, v in self._all_phases(history).items() if k not in self.skip}
        if not self.only:
            return every
        return {k: v for k, v in every.items() if k == "warmup" or k in self.only}

    def _all_phases(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "warmup": {"n": 3, "tokens": 20, "rate": 0},
            # memory right after warm-up, before bigger phases leave freed memory to be reused
            "memory": {"n": self.streams},
            "latency1": {"n": 1, "tokens": 200, "rate": 50},
            "latencyN": {"n": self.streams, "tokens": 60, "rate": 10, "timeoutMs": 180_000},
            "latencyBig": {"n": self.big, "tokens": 30, "rate": 10, "timeoutMs": 240_000, "partialOk": True},
            "throughput": {"n": 20, "tokens": 500},
            "cancel": {"n": self.cancels},
            "history": history,
        }


# --- child processes -------------------------------------------------------------------------------


def _pinned(argv: list[str]) -> list[str]:
    """``AW_BENCH_TASKSET=agent=0,server=1`` (diagnostic only): run the agent (either kind) or the
    embedded server under ``taskset -c CPUS``, to see what the scheduler's placement does."""
    spec = dict(
        part.split("=", 1) for part in os.environ.get("AW_BENCH_TASKSET", "").split(",") if "=" in part
    )
    last = argv[-1]
    role = "server" if last == "server" else "agent" if last in ("pyworker", str(JS_AGENT)) else ""
    return ["taskset", "-c", spec[role], *argv] if role in spec else argv


@dataclass
class Child:
    """A long-running child that prints ``@@ready {...}`` and ``@@event {...}`` lines."""

    argv: list[str]
    env: Mapping[str, str]
    proc: asyncio.subprocess.Process | None = None
    ready: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    stderr_tail: list[str] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self, limit_s: float = 30.0) -> dict[str, Any]:
        self.proc = await asyncio.create_subprocess_exec(
            *_pinned(self.argv),
            cwd=ROOT,
            env={**os.environ, **self.env},
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=16 * 1024 * 1024,
        )
        self._tasks = [asyncio.create_task(self._read_stdout()), asyncio.create_task(self._read_stderr())]
        try:
            async with asyncio.timeout(limit_s):
                while not self.ready:
                    if self.proc.returncode is not None:
                        break
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            pass
        if not self.ready:
            await self.stop()
            tail = "".join(self.stderr_tail[-40:])
            msg = f"{self.argv[-1]} did not become ready\n{tail}"
            raise RuntimeError(msg)
        return self.ready

    async def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            if line.startswith("@@ready "):
                self.ready = json.loads(line[8:])
            elif line.startswith("@@event "):
                self.events.append(json.loads(line[8:]))
            self._changed.set()
        self._changed.set()

    async def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        async for raw in self.proc.stderr:
            self.stderr_tail.append(raw.decode(errors="replace"))
            del self.stderr_tail[:-200]

    async def wait_events(self, ids: list[str], event: str, limit_s: float) -> list[dict[str, Any]]:
        def found() -> list[dict[str, Any]]:
            return [e for e in self.events if e.get("event") == event and e.get("id") in ids]

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit_s):
                while len(found()) < len(ids):
                    self._changed.clear()
                    await self._changed.wait()
        return found()

    async def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.terminate()
            try:
                async with asyncio.timeout(10):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_ticks() -> dict[str, int]:
    """The machine's CPU time so far in clock ticks (``/proc/stat``): busy, idle and steal (time the
    hypervisor ran something else on a virtual CPU that wanted to run)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return {"busy": user + nice + system + irq + softirq, "idle": idle + iowait, "steal": steal}


def speed_probe_ms() -> float:
    """A fixed bit of pure-Python work, best of 5 (ms): a slower machine (the host's other guests,
    clock changes) reads higher, whatever the agents did."""
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        x = 0
        for i in range(100_000):
            x += i * i
        best = min(best, time.perf_counter() - t0)
    return best * 1000


def start_agent(variant: str, port: int, key: str, protocol: str) -> Child:
    spec = variant_spec(variant)
    if spec["kind"] == "js":
        cfg_js: dict[str, Any] = {"host": "127.0.0.1", "port": port, "key": key, "protocol": protocol}
        if "rollup" in spec:
            cfg_js["rollup"] = spec["rollup"]
        return Child([node_binary(), str(JS_AGENT)], node_config(**cfg_js))
    # Only what the variant overrides; the rest are the shipped defaults.
    keys = ("max_messages_per_second", "burst", "connections", "max_connections", "rollup", "spare_clients")
    cfg = {"port": port, "key": key, "protocol": protocol, "worker": spec["worker"]}
    cfg.update({k: spec[k] for k in keys if k in spec})
    return Child(
        [sys.executable, "-m", "bench.agent.procs", "pyworker"], {"AW_BENCH_CONFIG": json.dumps(cfg)}
    )


# --- one run ---------------------------------------------------------------------------------------


async def populate(port: int, key: str, plan: Plan, names: list[str]) -> list[dict[str, Any]]:
    env = node_config(
        mode="populate",
        agentClientId=AGENT_CLIENT_ID,
        host="127.0.0.1",
        port=port,
        key=key,
        protocol=plan.protocol,
        sessions=names,
        turns=plan.turns,
        connections=4,
        timeoutMs=900_000,
    )
    result = await run_node_async(CLIENT, env=env, timeout=960)
    sessions: list[dict[str, Any]] = result["sessions"]
    return sessions


async def _server_command(server: Child, command: str, event: str, limit_s: float) -> dict[str, Any]:
    """Send ``command`` on the server's stdin and return the ``event`` line it answers with."""
    assert server.proc is not None and server.proc.stdin is not None
    before = sum(1 for e in server.events if e.get("event") == event)
    server.proc.stdin.write(command.encode() + b"\n")
    await server.proc.stdin.drain()
    async with asyncio.timeout(limit_s):
        while sum(1 for e in server.events if e.get("event") == event) <= before:
            server._changed.clear()
            await server._changed.wait()
    return [e for e in server.events if e.get("event") == event][-1]


async def server_stats(server: Child) -> dict[str, Any]:
    """The server's realtime refusals so far (``{code: count}``), asked for on its stdin."""
    refused: dict[str, Any] = (await _server_command(server, "stats", "stats", 10))["refused"]
    return refused


async def server_settle(server: Child) -> None:
    """The server collects (and freezes) what earlier variants left, before the next one starts."""
    await _server_command(server, "settle", "settled", 30)


async def run_variant(
    variant: str, server: Child, plan: Plan, history: list[dict[str, Any]]
) -> dict[str, Any]:
    port, key = int(server.ready["port"]), str(server.ready["key"])
    await server_settle(server)
    refused0 = await server_stats(server)
    load0 = os.getloadavg()
    probe0 = speed_probe_ms()
    agent = start_agent(variant, port, key, plan.protocol)
    ready = await agent.start()
    pid = int(ready["pid"])
    server_pid = int(server.ready["pid"])

    async def control(request: dict[str, Any]) -> Any:
        op = request.get("op")
        if op == "rss":
            return {"kb": rss_kb(pid)}
        if op == "cpu":  # the agent's, the embedded server's (it shares the cores), the machine's ticks
            return {
                "seconds": cpu_seconds(pid),
                "server": cpu_seconds(server_pid),
                "machine": machine_ticks(),
            }
        if op == "events":
            events = await agent.wait_events(
                list(request["ids"]), str(request["event"]), float(request.get("limit_s", 10))
            )
            return {"events": events}
        return {"error": f"unknown op {op!r}"}

    env = node_config(
        mode="run",
        variant=variant.replace("#", "-"),  # in the client's channel names
        host="127.0.0.1",
        port=port,
        key=key,
        protocol=plan.protocol,
        api=ready["url"],
        phases=plan.phases(history),
        # Under enforced limits the client's own connections must stay under 50 publishes/s too:
        # enough of them that the big run's simultaneous inputs fit (500 / 16 ≈ 31 each).
        connections=16 if _server_kind(variant) == "limits" else 4,
        timeline=bool(os.environ.get("AW_BENCH_TIMELINE")),
        timeoutMs=1_200_000,
    )
    try:
        result: dict[str, Any] = await run_node_async(CLIENT, env=env, timeout=1260, on_control=control)
    except Exception:
        print("".join(agent.stderr_tail[-30:]), file=sys.stderr)
        raise
    finally:
        await agent.stop()
    if os.environ.get("AW_BENCH_GC"):
        print("".join(line for line in agent.stderr_tail if line.startswith("gc ")), end="")
    result["agentErrors"] = [e for e in agent.events if e.get("event") == "error"]
    pools = [e for e in agent.events if e.get("event") == "pool"]
    result["peakConnections"] = pools[-1]["peak"] if pools else 1
    refused1 = await server_stats(server)
    result["refused"] = {
        code: n - refused0.get(code, 0) for code, n in refused1.items() if n - refused0.get(code, 0)
    }
    result["loadavg"] = [load0, os.getloadavg()]
    result["probeMs"] = [probe0, speed_probe_ms()]
    return result


# --- numbers ---------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _lat(phase: dict[str, Any]) -> dict[str, Any]:
    ms = [us / 1000 for us in phase["latenciesUs"]]
    steady = [us / 1000 for us in phase.get("steadyLatenciesUs", [])]
    due = [us / 1000 for us in phase.get("steadyDueLatenciesUs", [])]
    received = phase["received"]
    return {
        "p50": pct(steady, 50),
        "p99": pct(steady, 99),
        "dueP50": pct(due, 50),
        "dueP99": pct(due, 99),
        "steadyTokens": len(steady),
        "p50All": pct(ms, 50),
        "p99All": pct(ms, 99),
        "tokens": received,
        "expected": phase["n"] * phase["tokens"],
        "runsEnded": phase.get("ended", phase["n"]),
        "runs": phase["n"],
        "timedOut": bool(phase.get("timedOut")),
        "failedInvocations": phase.get("failedInvocations", 0),
        "cpuMsPer1k": phase["cpuSeconds"] * 1e6 / received if received else None,
        "serverCpuMsPer1k": (
            phase["serverCpuSeconds"] * 1e6 / received if received and "serverCpuSeconds" in phase else None
        ),
        "appendsPerToken": phase["appends"] / received if received else None,
        "passes": [_pass(h["latencyN"]) for h in phase.get("halves", [])],
        "dropped": [_pass(h["latencyN"]) for h in phase.get("dropped", [])],
        "stealPct": _steal_pct(phase),
    }


def _steal_pct(phase: dict[str, Any]) -> float | None:
    """The hypervisor's steal over a phase, in % of the machine's clock ticks (None: not recorded)."""
    ticks = phase.get("machineTicks")
    return 100 * ticks["steal"] / (sum(ticks.values()) or 1) if ticks else None


def _pass(phase: dict[str, Any]) -> dict[str, Any]:
    steady = [us / 1000 for us in phase.get("steadyLatenciesUs", [])]
    due = [us / 1000 for us in phase.get("steadyDueLatenciesUs", [])]
    steal = _steal_pct(phase)
    return {
        "p50": pct(steady, 50),
        "p99": pct(steady, 99),
        "dueP50": pct(due, 50),
        "dueP99": pct(due, 99),
        "steal": "n/a" if steal is None else f"{steal:.1f}%",
        "stealPct": steal,
    }


def brief(raw: dict[str, Any]) -> str:
    """One line per latency phase that ran (for ``--phases`` iterations; the doc needs every phase)."""
    out = []
    for name in ("latency1", "latencyN", "latencyBig"):
        if name in raw:
            s = _lat(raw[name])
            out.append(
                f"      {name}: steady p50 {_f(s['p50'], 2)} ms, p99 {_f(s['p99'], 2)} ms "
                f"(from due {_f(s['dueP50'], 2)} / {_f(s['dueP99'], 2)} ms) "
                f"({s['steadyTokens']} tokens); incl. burst p99 {_f(s['p99All'], 2)} ms; "
                f"CPU {_f(s['cpuMsPer1k'], 0)} ms/1k tokens (server {_f(s['serverCpuMsPer1k'], 0)}); "
                f"{s['tokens']}/{s['expected']} tokens"
            )
    for name in ("latencyN", "latencyBig"):
        if raw.get(name, {}).get("failedInvocations"):
            phase = raw[name]
            failed, why = phase["failedInvocations"], phase.get("failedReasons")
            out.append(f"      {name}: {failed} invocations failed: {why}")
    for i, half in enumerate(raw.get("latencyN", {}).get("halves", []), 1):
        s = _lat(half["latencyN"])
        out.append(
            f"        pass {i} of 2: steady p50 {_f(s['p50'], 2)} ms, p99 {_f(s['p99'], 2)} ms "
            f"(from due {_f(s['dueP50'], 2)} / {_f(s['dueP99'], 2)}); "
            f"CPU {_f(s['cpuMsPer1k'], 0)} ms/1k; first token p50 "
            f"{_f(_first_tokens(half['latencyN'])['p50'], 1)} ms; {_steal(half['latencyN'])}; "
            f"load {_loadavg(half.get('loadavg'))}"
        )
    if "latencyN" in raw:
        first = _first_tokens(raw["latencyN"])
        out.append(f"      first token p50 {_f(first['p50'], 1)} ms, p99 {_f(first['p99'], 1)} ms")
    out.append(
        f"      refused {raw.get('refused')}, peak connections {raw.get('peakConnections')}, "
        f"load {_loadavg(raw.get('loadavg'))}"
    )
    machine = raw.get("latencyN", {}).get("machineTicks")
    if machine:
        total = sum(machine.values()) or 1
        probe = raw.get("probeMs") or [None, None]
        out.append(
            f"      latencyN machine: busy {machine['busy'] / total:.0%}, "
            f"idle {machine['idle'] / total:.0%}, steal {machine['steal'] / total:.1%}; "
            f"speed probe {_f(probe[0], 2)} → {_f(probe[-1], 2)} ms"
        )
    if "throughput" in raw:
        thr = raw["throughput"]
        out.append(f"      throughput: {_f(thr['received'] / (thr['wallUs'] / 1e6), 0)} tokens/s")
    if raw.get("history"):
        samples = raw["history"]["samples"]
        out.append(
            "      history: POST → ai-run-start "
            + ", ".join(f"{s['runStartUs'] / 1000:.1f}" for s in samples)
            + " ms; prompt messages "
            + ", ".join(str(s["promptMessages"]) for s in samples)
        )
    return "\n".join(out)


def _steal(phase: dict[str, Any]) -> str:
    steal = _steal_pct(phase)
    return "steal n/a" if steal is None else f"steal {steal:.1f}%"


def _first_tokens(phase: dict[str, Any]) -> dict[str, float | None]:
    ms = [us / 1000 for us in phase.get("firstTokenUs", [])]
    return {"p50": pct(ms, 50), "p99": pct(ms, 99)}


def summarise(raw: dict[str, Any]) -> dict[str, Any]:
    lat = _lat
    thr = raw["throughput"]
    mem = raw["memory"]
    cancels = raw["cancel"]["samples"]
    closed = [s["closedUs"] / 1000 for s in cancels if s["closedUs"] is not None]
    run_end = [s["runEndUs"] / 1000 for s in cancels]
    hist = raw.get("history", {"samples": []})["samples"]
    big = raw.get("latencyBig")
    refused = raw.get("refused", {})
    return {
        "latency1": lat(raw["latency1"]),
        "latencyN": lat(raw["latencyN"]),
        "firstToken": _first_tokens(raw["latencyN"]),
        "latencyBig": lat(big) if big else None,
        "refused": sum(v for k, v in refused.items() if k in ("42910", "42911")),
        "peakConnections": raw.get("peakConnections", 1),
        "loadavg": raw.get("loadavg"),
        "throughput": {
            "tokensPerSec": thr["received"] / (thr["wallUs"] / 1e6),
            "tokensPerCpuSec": thr["received"] / thr["cpuSeconds"] if thr["cpuSeconds"] > 0 else None,
            "tokens": thr["received"],
            "expected": thr["n"] * thr["tokens"],
            "appendsPerToken": thr["appends"] / thr["received"] if thr["received"] else None,
        },
        "memory": {
            "perRunKb": (mem["activeKb"] - mem["baseKb"]) / mem["n"],
            "baseMb": mem["baseKb"] / 1024,
            "activeMb": mem["activeKb"] / 1024,
            "afterMb": mem["afterKb"] / 1024,
            "n": mem["n"],
        },
        "cancel": {
            "p50": pct(closed, 50),
            "p99": pct(closed, 99),
            "runEndP50": pct(run_end, 50),
            "n": len(closed),
            "reasons": sorted({s["reason"] for s in cancels}),
        },
        "history": {
            "runStartMs": statistics.median(s["runStartUs"] / 1000 for s in hist) if hist else None,
            "firstTokenMs": statistics.median(s["firstTokenUs"] / 1000 for s in hist) if hist else None,
            "promptMessages": sorted({s["promptMessages"] for s in hist}),
            "n": len(hist),
        },
    }


def machine() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    node = subprocess.run([node_binary(), "--version"], capture_output=True, text=True, check=True)
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "node": node.stdout.strip(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
    }


def _f(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _loadavg(pair: Any) -> str:
    if not pair:
        return "n/a"
    return " → ".join("/".join(f"{x:.1f}" for x in triple) for triple in pair)


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.2f}"


Row = tuple[str, str, dict[str, str], dict[str, float | None]]


def rows(results: dict[str, dict[str, Any]], big: int = 500) -> list[Row]:
    """(metric, better, {variant: formatted value}) for the comparison table."""
    getters: list[tuple[str, str, Any, int]] = [
        ("latency p50, 1 stream (ms)", "lower", lambda s: s["latency1"]["p50"], 2),
        ("latency p99, 1 stream (ms)", "lower", lambda s: s["latency1"]["p99"], 2),
        (
            "latency p50, 1 stream, from the token's due time (ms)",
            "lower",
            lambda s: s["latency1"].get("dueP50"),
            2,
        ),
        (
            "latency p99, 1 stream, from the token's due time (ms)",
            "lower",
            lambda s: s["latency1"].get("dueP99"),
            2,
        ),
        ("latency p50, N streams, steady (ms)", "lower", lambda s: s["latencyN"]["p50"], 2),
        ("latency p99, N streams, steady (ms)", "lower", lambda s: s["latencyN"]["p99"], 2),
        (
            "latency p50, N streams, steady, from the token's due time (ms)",
            "lower",
            lambda s: s["latencyN"].get("dueP50"),
            2,
        ),
        (
            "latency p99, N streams, steady, from the token's due time (ms)",
            "lower",
            lambda s: s["latencyN"].get("dueP99"),
            2,
        ),
        ("latency p99, N streams, incl. start-up burst (ms)", "lower", lambda s: s["latencyN"]["p99All"], 2),
        ("first token p50, N simultaneous starts (ms)", "lower", lambda s: s["firstToken"]["p50"], 1),
        ("first token p99, N simultaneous starts (ms)", "lower", lambda s: s["firstToken"]["p99"], 1),
        (
            f"latency p50, {big} streams, steady (ms)",
            "lower",
            lambda s: (s["latencyBig"] or {}).get("p50"),
            2,
        ),
        (
            f"latency p99, {big} streams, steady (ms)",
            "lower",
            lambda s: (s["latencyBig"] or {}).get("p99"),
            2,
        ),
        ("rate-limit refusals (NACK 42911/42910)", "lower", lambda s: s["refused"], 0),
        ("peak realtime connections of the agent", "—", lambda s: s["peakConnections"], 0),
        (
            "agent CPU per 1,000 paced tokens, N streams (ms)",
            "lower",
            lambda s: s["latencyN"]["cpuMsPer1k"],
            0,
        ),
        (
            "embedded server CPU per 1,000 paced tokens, N streams (ms)",
            "lower",
            lambda s: s["latencyN"]["serverCpuMsPer1k"],
            0,
        ),
        (
            "hypervisor steal, N-stream phase (% of the machine's CPU time)",
            "—",
            lambda s: s["latencyN"]["stealPct"],
            1,
        ),
        ("appends per token, N streams", "—", lambda s: s["latencyN"]["appendsPerToken"], 2),
        ("tokens/s, one agent process (unpaced)", "higher", lambda s: s["throughput"]["tokensPerSec"], 0),
        ("tokens per agent CPU-second (unpaced)", "higher", lambda s: s["throughput"]["tokensPerCpuSec"], 0),
        ("appends per token (unpaced)", "—", lambda s: s["throughput"]["appendsPerToken"], 3),
        ("history rebuild: POST → ai-run-start (ms)", "lower", lambda s: s["history"]["runStartMs"], 1),
        ("history rebuild: POST → first token (ms)", "lower", lambda s: s["history"]["firstTokenMs"], 1),
        ("cancel p50: ai-cancel → provider closed (ms)", "lower", lambda s: s["cancel"]["p50"], 2),
        ("cancel p99: ai-cancel → provider closed (ms)", "lower", lambda s: s["cancel"]["p99"], 2),
        ("cancel p50: ai-cancel → ai-run-end at client (ms)", "lower", lambda s: s["cancel"]["runEndP50"], 2),
        ("memory per active run (KiB RSS)", "lower", lambda s: s["memory"]["perRunKb"], 0),
        ("agent RSS idle → N active runs (MiB)", "lower", lambda s: s["memory"]["activeMb"], 0),
    ]
    out: list[Row] = []
    for label, better, get, digits in getters:
        raw = {name: get(summary) for name, summary in results.items()}
        out.append((label, better, {name: _f(v, digits) for name, v in raw.items()}, raw))
    return out


def render(results: dict[str, dict[str, Any]], plan: Plan, info: dict[str, str]) -> str:
    names = list(results)
    py_names = [n for n in names if n != "js"]
    header = "| metric | better | " + " | ".join(variant_label(n) for n in names)
    header += "".join(f" | {n} / js" for n in py_names if "js" in names) + " |"
    sep = "|---|---|" + "---:|" * len(names) + ("---:|" * len(py_names) if "js" in names else "")
    lines = [
        START,
        "## Agent runtime: Python worker vs official JS agent",
        "",
        "The same scripted model stream, the same client workload and the same embedded server, against",
        "(a) the official `@ably/ai-transport` 0.8.0 agent — the README's route handler verbatim",
        "(`createAgentSession` per request, `while (run.view.hasOlder()) await run.view.loadOlder()`,",
        "`run.start()`, `run.pipe(stream)`, `run.end()`, `session.end()`) in one Node process",
        "(`tests/js/bench/agent.mjs`) — and (b) this worker (`Worker` + its HTTP app, one Python process,",
        "`bench/agent/procs.py`). The server, the agent and the client each run in their own process on",
        "loopback. The model is scripted (`bench/agent/script.py` and its JS twin): each token carries",
        "the CLOCK_MONOTONIC time it left the model, and the client (raw ably-js subscriptions, one Node",
        "process, 4 connections) subtracts it from its receive time.",
        "",
        f"* Latency: 1 stream x 200 tokens at 50 tokens/s; N = {plan.streams} concurrent streams x 60",
        "  tokens at 10 tokens/s each, all invoked at once. *Steady*: tokens the model emitted after every",
        "  stream had delivered its first token (the N simultaneous invocations — attach, history read,",
        "  run-start — are over); *incl. start-up burst*: every token. The burst-time p99 varies a lot from",
        "  run to run for both agents (2 shared cores).",
        "* *From the token's due time*: the same tokens, timed from the moment the model's pacing timer",
        "  was due (the time just before its sleep plus the interval; each token carries both stamps)",
        "  instead of the moment its generator resumed. The model's timers fire in the agent's event loop,",
        "  in millisecond bursts: a token stamped when its task finally runs carries none of the wait",
        "  behind the tokens of its burst processed before it, so the resume-time rows hide the agent's",
        "  own queueing (a real model's tokens arrive on a socket whatever the agent's loop is doing).",
        "  These rows count that wait too, over the same tokens as the rows above them (unpaced: no due",
        "  time, the resume time stands in). Both agents' timers run on libuv's cached millisecond loop",
        "  clock, so a token can resume up to ~1 ms before its stamped due time: exact to about 1 ms, alike.",
        *_order_text(results, plan),
        f"* Big run: {plan.big} concurrent streams x 30 tokens at 10 tokens/s, all invoked at once: every",
        "  token must arrive, in order (sanity checks below); steady latency as above. The like-for-like",
        "  worker skips it: with its single connection, ably-python's channel attaches time out (`90007`)",
        "  before 500 channels are attached on this shared machine — the pool is what carries 500 streams.",
        "* CPU: agent process CPU time (utime + stime) during the N-stream phase, per 1,000 tokens; the",
        "  embedded server's process over the same window (it shares the cores with agent and client).",
        "* Steal: the share of the machine's CPU time (`/proc/stat`) that the hypervisor gave to other",
        "  guests while the N-stream phase ran. The steady latencies follow it closely, whichever agent:",
        "  over 90 passes on 2026-12-03 the p50 rose ~4% per 1% of steal (it explained 96% of their",
        "  variance), so a pass with more than ~1% steal measured the host as much as the agent.",
        "* Throughput: 20 concurrent streams x 500 unpaced tokens (the model yields as fast as the agent",
        "  pulls); tokens received per wall-second from the first POST to the last token, and per",
        "  CPU-second of the agent process. The JS agent publishes one append per token; the worker's",
        "  stream writer merges whatever deltas accumulated while it was busy (with coalescing off it",
        "  still merges deltas produced in the same event-loop turn), so an unpaced model collapses into",
        "  very few appends — the `appends per token` rows show how many messages each agent sent.",
        f"* History rebuild: sessions of {plan.turns * 2:,} messages ({plan.turns} user/assistant turns,",
        "  built beforehand by the official agent library); one more message is POSTed to a cold agent,",
        f"  median of {plan.reps} sessions (single samples vary by up to 2x on this shared machine).",
        "  The JS agent (its README's route handler) pages all history before `run.start()`; the worker",
        "  sends a fresh run's `ai-run-start` once the trigger's page is read and reads the older pages",
        "  after it, so the rebuild's cost shows in *POST → first token* for both, not in the run-start row.",
        "  The model call received "
        + ", ".join(f"{variant_label(n)}: {results[n]['history']['promptMessages']}" for n in names)
        + " prompt messages.",
        f"* Cancel: {plan.cancels} sequential runs (20 tokens/s), `ai-cancel` (by run-id) published after",
        "  the third token; latency to the moment the agent closed the model stream (the JS agent: its",
        "  `run.abortSignal` fired, which is when `streamText` aborts its fetch; the worker: the provider",
        "  stream's task was cancelled), and to `ai-run-end` arriving at the client.",
        f"* Memory: agent RSS with {plan.streams} runs streaming (1 token/s), minus RSS just before",
        "  they started (right after warm-up), divided by the number of runs; each run on its own session",
        "  (channel). RSS deltas depend on what the allocator / V8 heap had already reserved (V8 grows",
        "  its heap in steps), so read this row as an order of magnitude.",
        "",
        "Variants: *official JS agent* and *like-for-like* run on a server without rate limits, both with",
        "Ably's server-side append rollup off (transport parameter `appendRollupWindow=0`), so each sends",
        "and each client receives one append per token: the worker with coalescing off, presence off,",
        "push notifications off, its outbound rate limiter lifted and one connection (the JS agent has",
        "no presence, no push, no limiter and one connection). Both Python variants keep the worker's",
        "default for a loopback endpoint: it yields its CPU between a timer burst's appends, so the",
        "embedded server it woke reads each frame at once (`AblySettings.yield_between_appends`; off",
        "against Ably, where no local process is woken: docs/benchmarks.md, thirteenth round, w14).",
        "*production defaults, enforced limits* = the worker exactly as `agent-worker run` ships it",
        "(`[worker]` and `[ably]` defaults: 40 ms leading-edge coalescing per stream, at most 45",
        "messages per connection in any second with a burst of 30, presence on, a connection pool",
        "from 1 up to 32 connections placed by load, the",
        "service's default 40 ms rollup) against a second embedded server started with",
        "`--enforce-rate-limits` (Ably's 50 msg/s per connection, NACK 42911, and per channel, 42910;",
        "rolled-up appends count once). Its history phase is skipped (`n/a`): the 1,000-message sessions",
        "are built at a speed the limits would refuse. Every Python variant raises `max_concurrent_runs`",
        "from 32 and `max_pending_invocations` from 256 to 1000 so the N-stream phases can run. Ratios",
        "are Python / JS (for latency, time and",
        "memory lower is better; for tokens/s higher is better). *First token*: POST → first token at the",
        f"client, over the N = {plan.streams} conversations invoked at the same moment (each POST on a new",
        "connection with `node:http`: undici's `fetch` cost the one client process ~1.5 ms of CPU per call,",
        "which had put the 100th POST ~100 ms behind the first for both agents). *Refusals*: NACKs",
        "the server sent during the variant's run (a connection over its inbound limit gets 42911).",
        "",
        "GC: the worker process calls `agent_worker.worker.service.tune_gc()` after start-up, as",
        "`agent-worker run` does (`gc.freeze()`: the ~75k objects left by imports and start-up are never",
        "walked by a full collection again). Without it, full collections — driven by ably-python's",
        "per-message timer/cancel garbage — stopped the worker for 41-81 ms every ~3 s at N streams (the",
        "steady p99); with it they take 9-17 ms. The embedded server's process calls it too, as",
        "`agent-worker server` does, and collects and freezes what the earlier variants left before each",
        "variant starts (the server is shared: a full collection of its grown heap had fallen in a later",
        "variant's phase). `AW_BENCH_GC=1` prints the pauses over 5 ms, `AW_BENCH_GC_DEFAULT=1`",
        "runs the worker and the server without `tune_gc`, `--phases=latencyN` runs one phase.",
        "",
        f"Command: `{COMMAND}` (about 2-3 minutes; options go as `--name=value`, e.g.",
        "`python -m bench agent --quick --variants=js,py`; `python -m bench.agent --help` lists them).",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['os']}, Python {info['python']},",
        f"Node {info['node']}, {plan.protocol}, measured {info['date']}. Server, agent and client share",
        "the cores with other work on the machine, which moves absolute numbers (compare within one",
        "run: ratios are same-run). Load average (1/5/15 min) before → after each variant: "
        + "; ".join(f"{variant_label(n)}: {_loadavg(results[n].get('loadavg'))}" for n in names)
        + ".",
        "",
        header,
        sep,
    ]
    for label, better, values, raw_values in rows(results, plan.big):
        line = f"| {label} | {better} | " + " | ".join(values[n] for n in names)
        if "js" in names:
            line += "".join(f" | {_ratio(raw_values[n], raw_values['js'])}" for n in py_names)
        lines.append(line + " |")
    checks = []
    for n in names:
        s = results[n]
        one, many, big = s["latency1"], s["latencyN"], s["latencyBig"]
        big_text = "not run"
        if big:
            big_text = f"{big['tokens']}/{big['expected']} ({big['runsEnded']}/{big['runs']} runs ended"
            if big["failedInvocations"]:
                big_text += f", {big['failedInvocations']} invocations refused"
            big_text += " before the 240 s bound)" if big["timedOut"] else ")"
        checks.append(
            f"{variant_label(n)}: tokens delivered in order {one['tokens']}/{one['expected']}, "
            f"{many['tokens']}/{many['expected']}, {big_text}, "
            f"{s['throughput']['tokens']}/{s['throughput']['expected']}; cancelled runs ended "
            f"{'/'.join(s['cancel']['reasons'])}; history prompts {s['history']['promptMessages']} "
            f"messages (a whole branch: {plan.turns * 2 + 1})"
        )
    lines += [
        "",
        "Sanity checks (every token arrived, every cancel ended the run `cancelled`, every history "
        "prompt held the whole branch):",
        "",
    ]
    lines += [f"* {c}" for c in checks]
    lines += ["", END]
    return "\n".join(lines)


def _order_text(results: dict[str, dict[str, Any]], plan: Plan) -> list[str]:
    """The description of the like-for-like N-stream passes, with each pass's numbers in run order."""
    passes = {v: results[v]["latencyN"].get("passes") for v in LIKE_FOR_LIKE if v in results}
    if not all(passes.values()) or len(passes) != 2:
        return []
    first, second = (v for v in results if v in LIKE_FOR_LIKE)
    order = [(first, 0), (second, 0), (second, 1), (first, 1)]
    text = "; ".join(
        f"{variant_label(v)} {_f(passes[v][i]['p50'], 2)} / {_f(passes[v][i]['p99'], 2)} ms, "
        f"steal {passes[v][i]['steal']}"
        for v, i in order
    )
    disturbed = [
        f"{variant_label(v)} pass {i + 1}"
        for v, i in order
        if passes[v][i]["stealPct"] is not None and passes[v][i]["stealPct"] > STEAL_DISTURBED_PCT
    ]
    verdict = (
        f"  **Disturbed**: more than {STEAL_DISTURBED_PCT:g}% steal in {', '.join(disturbed)}; the",
        "  N-stream rows of these two agents and their ratio measure the host too (run again).",
    )
    dropped = {v: results[v]["latencyN"].get("dropped") or [] for v in (first, second)}
    blocks = len(dropped[first]) // 2
    gone = "; ".join(
        f"{variant_label(v)} {_f(dropped[v][2 * k + i]['p50'], 2)} ms, steal {dropped[v][2 * k + i]['steal']}"
        for k in range(blocks)
        for v, i in order
    )
    again = (
        (f"  Run again for steal (`--quiet-retries`), {blocks} other block(s), not in the rows: {gone}.",)
        if blocks
        else ()
    )
    return [
        f"* Order: the {variant_label(first)} and the {variant_label(second)} run the N-stream phase",
        "  twice each, in passes of their own (a fresh agent process, warm-up, the phase), in the order",
        "  A B B A before the variants' other phases; their N-stream rows (steady latency, first token,",
        "  CPU, appends) pool both passes (2 x N runs). Each pass is equally long and they follow each",
        "  other, so a drift of the shared machine during them (other work, the hypervisor's *steal* of",
        "  its virtual CPUs) weighs on both agents alike. (Run once each, JS first, the second had looked",
        "  worse off; the twelfth round found no effect of the order itself, but steal: docs/benchmarks.md,",
        "  the bench's order effect, twelfth round.) The passes in run",
        f"  order, steady p50 / p99: {text}.",
        *(verdict if disturbed else ()),
        *again,
    ]


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


def _server_kind(variant: str) -> str:
    return str(variant_spec(variant).get("server", "free"))


STEAL_DISTURBED_PCT = 1.0
"""Above this share of steal in a like-for-like N-stream pass the table calls the run disturbed:
its p50 rose ~4% per 1% of steal (docs/benchmarks.md, the bench's order effect, twelfth round)."""

LIKE_FOR_LIKE = ("js", "py")
"""The variants whose N-stream phase is counterbalanced (issue 11's like-for-like steady p50)."""


def counterbalanced(plan: Plan, variants: list[str]) -> list[str]:
    """The order of the like-for-like N-stream passes, A B B A (``[]``: none).

    When both like-for-like variants run the N-stream phase, each runs it twice, in passes of their
    own (a fresh agent process, warm-up, the phase), in the order A B B A, A being the one listed
    first; the rows pool both halves. The passes are consecutive and equally long, so a drift of the
    machine during them (its load, the hypervisor's steal) weighs the same on both variants."""
    if not plan.counterbalance or "latencyN" not in plan.phases([]):
        return []
    pair = [v for v in variants if v in LIKE_FOR_LIKE]
    if len(pair) != 2:
        return []
    return [pair[0], pair[1], pair[1], pair[0]]


def pool_halves(halves: list[dict[str, Any]]) -> dict[str, Any]:
    """One N-stream phase from its counterbalanced passes: the tokens, first tokens, CPU and counts
    of both; each pass's own result (loads, timeline) stays under ``halves``."""
    phases = [h["latencyN"] for h in halves]
    pooled: dict[str, Any] = {
        "n": sum(p["n"] for p in phases),
        "tokens": phases[0]["tokens"],
        "rate": phases[0]["rate"],
        "timedOut": any(p["timedOut"] for p in phases),
    }
    for key in ("latenciesUs", "steadyLatenciesUs", "steadyDueLatenciesUs", "firstTokenUs", "reasons"):
        pooled[key] = [x for p in phases for x in p.get(key, [])]
    for key in (
        "cpuSeconds",
        "serverCpuSeconds",
        "failedInvocations",
        "ended",
        "received",
        "appends",
        "wallUs",
    ):
        pooled[key] = sum(p.get(key, 0) for p in phases)
    pooled["failedReasons"] = sorted({r for p in phases for r in p.get("failedReasons", [])})
    if all("machineTicks" in p for p in phases):
        pooled["machineTicks"] = {
            k: sum(p["machineTicks"][k] for p in phases) for k in phases[0]["machineTicks"]
        }
    pooled["halves"] = halves
    return pooled


def merge_halves(
    full: dict[str, Any] | None, halves: list[dict[str, Any]], dropped: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """A variant's result: its full pass (``None`` if it had no phase besides the N-stream one) with
    the pooled N-stream phase, and the halves' refusals and errors added. ``dropped``: the passes
    of blocks run again for steal (``--quiet-retries``), kept apart under ``latencyN.dropped``."""
    out = dict(full) if full is not None else {k: v for k, v in halves[0].items() if k != "latencyN"}
    out["latencyN"] = pool_halves(halves)
    if dropped:
        out["latencyN"]["dropped"] = dropped
    refused: dict[str, int] = dict(full.get("refused", {})) if full is not None else {}
    for h in halves:
        for code, n in h.get("refused", {}).items():
            refused[code] = refused.get(code, 0) + n
    out["refused"] = refused
    out["agentErrors"] = [
        e for r in ([full] if full is not None else []) + halves for e in r.get("agentErrors", [])
    ]
    out["peakConnections"] = max(r.get("peakConnections", 1) for r in ([full] if full else []) + halves)
    return out


def _block_steal(block: dict[str, list[dict[str, Any]]]) -> float:
    """The most steal (%) any pass of an A B B A block had (0 if not recorded)."""
    return max((_steal_pct(h["latencyN"]) or 0.0 for passes in block.values() for h in passes), default=0.0)


def choose_block(blocks: list[dict[str, list[dict[str, Any]]]]) -> dict[str, list[dict[str, Any]]]:
    """The A B B A block the rows report: the first with no pass over the steal limit, else the one
    whose worst pass had the least steal. The criterion looks at both agents' passes alike."""
    for block in blocks:
        if _block_steal(block) <= STEAL_DISTURBED_PCT:
            return block
    return min(blocks, key=_block_steal)


async def run(plan: Plan, variants: list[str], dump: Path | None = None) -> dict[str, dict[str, Any]]:
    """One server per kind ("free", and "limits" = Ably's limits enforced) for the whole run."""
    servers: dict[str, Child] = {}
    raw: dict[str, dict[str, Any]] = {}
    # AW_BENCH_FRESH_SERVER=1: each pass meets a server process of its own, started for it (its
    # history sessions populated on it), instead of one per kind shared in pass order, so no
    # pass meets a server another has used (an order check; docs/benchmarks.md, k6's round).
    fresh = bool(os.environ.get("AW_BENCH_FRESH_SERVER"))
    abba = counterbalanced(plan, variants)
    halves: dict[str, list[dict[str, Any]]] = {v: [] for v in abba}
    dropped_halves: dict[str, list[dict[str, Any]]] = {}

    async def start_server(kind: str) -> None:
        cfg = json.dumps({"enforce": kind == "limits"})
        servers[kind] = Child([sys.executable, "-m", "bench.agent.procs", "server"], {"AW_BENCH_CONFIG": cfg})
        await servers[kind].start()

    try:
        for kind in sorted({_server_kind(v) for v in variants}):
            await start_server(kind)
        # The history phase needs sessions built beforehand, which a rate-limited server would refuse
        # at populate speed: it runs on the free server's variants only.
        with_history = [v for v in variants if _server_kind(v) == "free"]
        names = {
            v: [f"bench:hist:{v.replace('#', '-')}:{r}:{uuid.uuid4().hex[:6]}" for r in range(plan.reps)]
            for v in with_history
        }
        if plan.only and "history" not in plan.only:
            names = {v: [] for v in with_history}  # no history phase: nothing to populate
        elif with_history:
            print(
                f"  populating {plan.reps * len(with_history)} sessions of {plan.turns * 2} messages ...",
                flush=True,
            )
        made: list[dict[str, Any]] = []

        async def populate_for(these: list[str]) -> None:
            wanted = [n for v in these if v in with_history for n in names[v]]
            free = servers.get("free")
            if wanted and free is not None:
                made.extend(await populate(int(free.ready["port"]), str(free.ready["key"]), plan, wanted))

        if not fresh:
            await populate_for(with_history)
        # The passes: first the counterbalanced N-stream ones (A B B A), then each variant's others.
        passes: list[tuple[str, Plan, bool]] = []
        for variant in abba:
            skip = tuple(variant_spec(variant).get("skip", ()))
            passes.append((variant, dataclasses.replace(plan, only=("latencyN",), skip=skip), True))
        for variant in variants:
            skip = tuple(variant_spec(variant).get("skip", ()))
            if variant not in with_history:
                skip += ("history",)
            if variant in abba:
                skip += ("latencyN",)
            variant_plan = dataclasses.replace(plan, skip=skip)
            if set(variant_plan.phases([])) - {"warmup"}:
                passes.append((variant, variant_plan, False))
        block_passes = passes[: len(abba)]
        blocks: list[dict[str, list[dict[str, Any]]]] = [{v: [] for v in abba}] if abba else []
        i = 0
        while i < len(passes):
            variant, variant_plan, half = passes[i]
            if fresh:
                kind = _server_kind(variant)
                if i > 0:
                    await servers[kind].stop()
                    await start_server(kind)
                if not half:
                    await populate_for([variant])
            by_name = {m["session"]: m for m in made}
            if half:
                nth = len(blocks[-1][variant]) + 1
                again = f", block {len(blocks)}" if len(blocks) > 1 else ""
                print(f"  {variant_label(variant)}, N-stream phase, pass {nth} of 2{again} ...", flush=True)
            else:
                print(f"  {variant_label(variant)} ...", flush=True)
            history = [] if half else [by_name[n] for n in names.get(variant, [])]
            result = await run_variant(variant, servers[_server_kind(variant)], variant_plan, history)
            i += 1
            if half:
                blocks[-1][variant].append(result)
                if plan.only:
                    print(brief(result), flush=True)
                if sum(map(len, blocks[-1].values())) == len(abba):  # a block is complete
                    if _block_steal(blocks[-1]) > STEAL_DISTURBED_PCT and len(blocks) <= plan.quiet_retries:
                        print(f"  steal {_block_steal(blocks[-1]):.1f}%: the A B B A block again", flush=True)
                        blocks.append({v: [] for v in abba})
                        passes[i:i] = block_passes
                        continue
                    kept = choose_block(blocks)
                    discarded = [b for b in blocks if b is not kept]
                    halves.update(kept)
                    for v in dict.fromkeys(abba):
                        dropped = [h for b in discarded for h in b[v]]
                        if not any(p[0] == v and not p[2] for p in passes):
                            raw[v] = merge_halves(None, kept[v], dropped)
                        else:
                            dropped_halves[v] = dropped
            else:
                raw[variant] = (
                    merge_halves(result, halves[variant], dropped_halves.get(variant, []))
                    if variant in abba
                    else result
                )
            if dump is not None:  # what is measured so far survives a later pass's failure
                text = json.dumps({"plan": asdict(plan), "raw": raw, "blocks": blocks})
                await asyncio.to_thread(dump.write_text, text)
            if half:
                continue
            if plan.only:
                print(brief(raw[variant]), flush=True)
                continue
            summary = summarise(raw[variant])
            print(
                f"      latency p50 {_f(summary['latency1']['p50'], 2)} ms (1), "
                f"{_f(summary['latencyN']['p50'], 2)} ms ({plan.streams}); "
                f"first token p50 {_f(summary['firstToken']['p50'], 1)} ms; "
                f"{_f(summary['throughput']['tokensPerSec'], 0)} tokens/s; "
                f"cancel {_f(summary['cancel']['p50'], 2)} ms; "
                f"history {_f(summary['history']['runStartMs'], 1)} ms; "
                f"{_f(summary['memory']['perRunKb'], 0)} KiB/run; refused {summary['refused']}; "
                f"load {summary['loadavg']}",
                flush=True,
            )
        if plan.only:
            for variant in dict.fromkeys(abba):
                print(f"  {variant_label(variant)}, both N-stream passes pooled:", flush=True)
                print(brief(raw[variant]), flush=True)
    finally:
        for server in servers.values():
            await server.stop()
            if os.environ.get("AW_BENCH_GC"):
                print("".join(line for line in server.stderr_tail if line.startswith("gc server")), end="")
    return {v: raw[v] for v in variants if v in raw}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.agent", description=__doc__)
    parser.add_argument(
        "--variants", default="js,py,py-defaults", help=f"comma-separated: {', '.join(VARIANTS)}"
    )
    parser.add_argument("--streams", type=int, default=100, help="concurrent streams (latency, memory)")
    parser.add_argument("--big", type=int, default=500, help="concurrent streams of the big latency run")
    parser.add_argument("--turns", type=int, default=500, help="user/assistant turns per history session")
    parser.add_argument("--reps", type=int, default=2, help="history sessions per agent")
    parser.add_argument("--cancels", type=int, default=20, help="sequential cancel samples per agent")
    parser.add_argument("--protocol", default="msgpack", choices=["msgpack", "json"])
    parser.add_argument(
        "--quick", action="store_true", help="small run: 20 / 60 streams, 100 turns, 1 rep, 5 cancels"
    )
    parser.add_argument("--no-write", action="store_true", help="print the section, leave the doc alone")
    parser.add_argument(
        "--quiet-retries",
        type=int,
        default=0,
        help="run the like-for-like A B B A block again, up to this many times, while one of its passes "
        f"had more than {STEAL_DISTURBED_PCT:g}%% steal (the hypervisor's); the rows report the first quiet "
        "block, else the least disturbed, and the section lists the others",
    )
    parser.add_argument(
        "--no-counterbalance",
        action="store_true",
        help="run js's and py's N-stream phase once each, inside their variant's pass, in variant order "
        "(the bench before its twelfth round) instead of in passes of their own ordered A B B A",
    )
    parser.add_argument("--json", type=Path, help="also dump raw results to this file")
    parser.add_argument("--render", type=Path, help="no run: re-render the section from a --json dump")
    parser.add_argument(
        "--phases",
        default="",
        help="run only these phases (comma-separated: memory, latency1, latencyN, latencyBig, throughput, "
        "cancel, "
        "history; warm-up always runs) and print their numbers; the doc is not written",
    )
    args = parser.parse_args(argv)
    if args.render:
        dump = json.loads(args.render.read_text())
        plan = Plan(**dump["plan"])
        # The section needs every phase but latencyBig/history (which a variant may skip).
        needed = ("memory", "latency1", "latencyN", "throughput", "cancel")
        partial = {v: [p for p in needed if p not in r] for v, r in dump["raw"].items()}
        if any(partial.values()):
            lacking = "; ".join(f"{v}: {', '.join(ps)}" for v, ps in partial.items() if ps)
            print(
                f"{args.render} is a partial dump (a --phases run?), lacking {lacking}; "
                "--render needs a full run's --json dump",
                file=sys.stderr,
            )
            return 2
        section = render({v: summarise(r) for v, r in dump["raw"].items()}, plan, machine())
        if args.no_write:
            print(section)
        else:
            write_section(section)
            print(f"wrote the 'Agent runtime' section of {DOC.relative_to(ROOT)}")
        return 0
    plan = Plan(args.streams, args.big, args.turns, args.reps, args.cancels, args.protocol)
    if args.quick:
        plan = Plan(20, 60, 100, 1, 5, args.protocol)
    only = tuple(p.strip() for p in args.phases.split(",") if p.strip())
    known = ("memory", "latency1", "latencyN", "latencyBig", "throughput", "cancel", "history")
    if [p for p in only if p not in known]:
        print(f"unknown phase(s) in {args.phases!r}; known: {', '.join(known)}", file=sys.stderr)
        return 2
    plan = dataclasses.replace(
        plan, only=only, counterbalance=not args.no_counterbalance, quiet_retries=args.quiet_retries
    )
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        print(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    variants = run_keys(variants)
    print(f"agent-runtime benchmark: {', '.join(variants)}")
    raw = asyncio.run(run(plan, variants, args.json))
    if plan.only:
        if args.json:
            args.json.write_text(json.dumps({"plan": asdict(plan), "raw": raw}))
        return 0
    results = {v: summarise(r) for v, r in raw.items()}
    section = render(results, plan, machine())
    if args.json:
        args.json.write_text(json.dumps({"plan": asdict(plan), "raw": raw}))
    if args.no_write:
        print(section)
    else:
        write_section(section)
        print(f"wrote the 'Agent runtime' section of {DOC.relative_to(ROOT)}")
    return 0
