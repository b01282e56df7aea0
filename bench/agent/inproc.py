"""Shared parts of the in-process CPU harnesses (``bench.agent.burstcpu``, ``bench.agent.tokencpu``):
the embedded server in a child process, and the POSTs' own loop in a thread so that their CPU is not
counted as the worker's."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

import aiohttp
from ably import AblyRest
from ably.types.message import Message
from aiohttp import web

from agent_worker.config import HttpConfig
from agent_worker.protocol.headers import build_input_headers
from agent_worker.protocol.vercel.encoder import encode_user_message
from agent_worker.worker.http import serve
from agent_worker.worker.service import GC_THRESHOLDS, Worker, tune_gc

__all__ = ["Client", "Harness", "start_harness", "start_server"]

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


@dataclasses.dataclass
class Harness:
    """A started worker behind its HTTP app, a REST client that publishes the users' inputs, and
    the POSTs' thread."""

    url: str
    rest: AblyRest
    client: Client
    runner: web.AppRunner

    async def publish_ask(self, prefix: str, ask: dict[str, Any]) -> tuple[str, str]:
        """Publish a bench ask as a user's input on a new session; its (session, input event id)."""
        name = f"conversations:{prefix}-{uuid.uuid4().hex[:12]}"
        cmid, eid = str(uuid.uuid4()), str(uuid.uuid4())
        headers = build_input_headers(codec_message_id=cmid, event_id=eid, run_client_id="user", parent=None)
        wires = encode_user_message(
            {"id": cmid, "role": "user", "parts": [{"type": "text", "text": json.dumps(ask)}]}, headers
        )
        await self.rest.channels.get(name).publish(
            [Message(name=m.name, data=m.data, extras=m.extras) for m in wires]
        )
        return name, eid

    async def close(self, worker: Worker, server: subprocess.Popen[str]) -> None:
        """Stop the POSTs' thread, the HTTP app, ``worker`` and the embedded ``server``."""
        session = self.client.session
        assert session is not None
        self.client.call(session.close()).result()
        self.client.loop.call_soon_threadsafe(self.client.loop.stop)
        await self.runner.cleanup()
        await worker.close(drain_timeout_s=2)
        assert server.stdin is not None
        server.stdin.close()
        server.wait(10)

    async def post(self, name: str, event_id: str) -> int:
        """The invocation's POST (run it in the client's loop: ``client.call(harness.post(...))``)."""
        session = self.client.session
        assert session is not None
        async with session.post(self.url, json={"sessionName": name, "inputEventId": event_id}) as r:
            await r.read()
            return r.status


async def start_harness(worker: Worker, info: dict[str, Any]) -> Harness:
    """Start ``worker`` and its HTTP app on a free port, tune the collector as ``agent-worker run``
    does, and start the POSTs' thread."""
    await worker.start()
    runner = await serve(worker, HttpConfig(port=0), port=0)
    tune_gc(GC_THRESHOLDS)
    host, port = runner.addresses[0][:2]
    rest = AblyRest(
        key=info["key"], rest_host="127.0.0.1", port=info["port"], tls=False, client_id="user",
        use_token_auth=True, use_binary_protocol=True,
    )  # fmt: skip
    client = Client()
    client.start()
    client.started_up.wait()
    return Harness(f"http://{host}:{port}/api/chat", rest, client, runner)
