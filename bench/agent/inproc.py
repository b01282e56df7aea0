"""Shared parts of the in-process CPU harnesses (``bench.agent.burstcpu``, ``bench.agent.tokencpu``):
the embedded server in a child process, and the POSTs' own loop in a thread so that their CPU is not
counted as the worker's."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

import aiohttp

__all__ = ["Client", "start_server"]

T = TypeVar("T")


def start_server(*, enforce: bool) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """The bench's embedded server (``bench.agent.procs server``), with Ably's limits or without."""
    env = dict(os.environ, AW_BENCH_CONFIG=json.dumps({"enforce": enforce}))
    argv = [sys.executable, "-m", "bench.agent.procs", "server"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("@@ready"):
            ready: dict[str, Any] = json.loads(line.split(" ", 1)[1])
            return proc, ready
    msg = "the embedded server did not start"
    raise SystemExit(msg)


class Client(threading.Thread):
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
