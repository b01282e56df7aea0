"""``python -m bench.agent.foldcpu``: the CPU of decoding and folding a 1,000-message session's
history pages, two code trees interleaved in one process.

On a shared machine two processes run in different conditions (another helper's test suite starts,
a core is taken away), so an A/B of a ~100 ms rebuild needs many samples. Here both trees run in
the same process, alternating sample by sample, so whatever load there is falls on both alike:
``--compare=DIR`` copies the ``agent_worker`` package found in ``DIR`` under another package name
(its own imports renamed) and imports both. Each sample is what ``AgentSession._load_page`` does for
every page of one session — the msgpack bodies decoded (``transport/inbound.py``) and folded into a
cold session, yielding between fold slices, with the worker's GC thresholds — from page bodies read
once from a ``python -m bench.agent.rebuild --hold=FILE`` server (``--state=FILE``). No network,
no attach: the rebuild's CPU only. Diagnostics only; nothing asserts on it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import importlib
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin

from bench.agent import AGENT_CLIENT_ID

_NEXT = re.compile(r'<([^>]*)>\s*;\s*rel="?next"?')


def read_pages(state: dict[str, Any], first: int = 100, later: int = 1000) -> list[bytes]:
    """The msgpack history bodies of the state's first session, newest page first, as the worker
    reads them (a first page of ``first``, then pages of ``later``)."""
    name = state["sessions"][0][0]
    headers = {
        "Accept": "application/x-msgpack",
        "X-Ably-Version": "5",
        "Authorization": "Basic " + base64.b64encode(state["key"].encode()).decode(),
    }
    base = f"http://127.0.0.1:{state['port']}/channels/{quote(name, safe='')}/messages"
    url: str | None = f"{base}?limit={first}&direction=backwards"
    bodies: list[bytes] = []
    while url is not None:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers)) as resp:
            bodies.append(resp.read())
            found = _NEXT.search(resp.headers.get("Link") or "")
        url = urljoin(url, found.group(1)).replace(f"limit={first}&", f"limit={later}&") if found else None
    return bodies


def _renamed_copy(code: str, name: str, into: Path) -> None:
    """``code``'s ``agent_worker`` package as package ``name`` under ``into``."""
    target = into / name
    shutil.copytree(Path(code) / "agent_worker", target, ignore=shutil.ignore_patterns("__pycache__"))
    word = re.compile(r"\bagent_worker\b")
    for path in target.rglob("*.py"):
        path.write_text(word.sub(name, path.read_text()))


class _Pages:
    """A channel stand-in whose history is the given bodies, decoded by the tree's own reader."""

    attach_serial = None

    def __init__(self, name: str, bodies: list[bytes], decode: Any) -> None:
        self.name = name
        self._bodies = bodies
        self._decode = decode

    async def history_pages(self, *, page_size: int, from_serial: str | None) -> AsyncIterator[list[Any]]:
        for body in self._bodies:
            await asyncio.sleep(0)
            yield self._decode(body)


async def _sample(
    package: str, bodies: list[bytes], in_gc: list[float], offset: int = 0
) -> tuple[float, float]:
    session_mod = importlib.import_module(f"{package}.runtime.session")
    inbound = importlib.import_module(f"{package}.transport.inbound")
    thresholds = importlib.import_module(f"{package}.worker.service").GC_THRESHOLDS
    gc.collect()
    gc.set_threshold(*thresholds)
    # ``offset`` tracked objects first: where in the young generation's cycle the rebuild starts (in a
    # worker that point is arbitrary; after gc.collect() every sample would hit the same pages).
    pad: list[list[None]] = [[] for _ in range(offset)]
    session = session_mod.AgentSession(
        _Pages("bench", bodies, inbound.history_messages), agent_client_id=AGENT_CLIENT_ID
    )
    gc_before, cpu = in_gc[0], time.process_time()
    while await session._load_page():
        pass
    took = (time.process_time() - cpu) * 1000, (in_gc[0] - gc_before) * 1000
    del pad
    return took


async def main(args: argparse.Namespace) -> None:
    bodies = read_pages(json.loads(Path(args.state).read_text()))  # noqa: ASYNC240 - once, at start
    print(f"{len(bodies)} pages, {sum(map(len, bodies))} bytes", flush=True)
    packages = ["agent_worker"]
    with tempfile.TemporaryDirectory() as tmp:
        if args.compare:
            _renamed_copy(args.compare, "aw_compare", Path(tmp))
            sys.path.insert(0, tmp)
            packages.append("aw_compare")
        in_gc = [0.0, 0.0]

        def on_gc(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                in_gc[1] = time.perf_counter()
            else:
                in_gc[0] += time.perf_counter() - in_gc[1]

        gc.callbacks.append(on_gc)
        results: dict[str, list[tuple[float, float]]] = {p: [] for p in packages}
        thresholds0 = importlib.import_module("agent_worker.gcpause").GC_THRESHOLDS[0]
        for rep in range(args.reps + 1):
            for package in packages if rep % 2 else packages[::-1]:
                offset = (rep * 3331) % thresholds0 if args.spread_gc else 0  # same for both of a pair
                got = await _sample(package, bodies, in_gc, offset)
                if rep:  # the first round warms both up
                    results[package].append(got)
    for package, samples in results.items():
        cpu = [s[0] for s in samples]
        in_collector = [s[1] for s in samples]
        label = "this" if package == "agent_worker" else "compare"
        print(
            f"{label:8} cpu median {statistics.median(cpu):6.1f} min {min(cpu):6.1f}  "
            f"GC median {statistics.median(in_collector):5.1f} min {min(in_collector):5.1f} ms"
            f"  (n={len(cpu)})"
        )


def run() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.agent.foldcpu", description=__doc__)
    parser.add_argument("--state", required=True, help="the state file of a rebuild --hold process")
    parser.add_argument("--compare", default=None, help="a directory holding another agent_worker package")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument(
        "--spread-gc",
        action="store_true",
        help="start each pair's rebuild at another point of the young collection's cycle",
    )
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    run()
