"""What one conversation's start costs the embedded server: ``python -m bench.server.start``.

In-process, no sockets (socket writers replaced by counters, as in ``bench.server.append``), enforced
rate limits and the default 40 ms append rollup, on fresh channels. Per start, what the worker sends
in a burst (captured from ``bench.agent.burstcpu``): its ATTACH; the first history page
(``GET /channels/{name}/messages?limit=100&direction=backwards&from_serial=...`` with a Bearer token,
msgpack, through ``RestApi.dispatch``); the ``ai-run-start`` and ``ai-step-start`` creates; the
message's opening batch with the stream's create (three creates in one frame); the first append;
the presence ENTER. With ``--client`` (the default), a subscriber connection in ``--client-format``
is attached to the channel first, as the bench's Node client is, and publishes the user's
``ai-input`` before the worker attaches; the worker's messages fan out to it. Each frame is encoded
as the client would send it and decoded as the WebSocket loop does.

Prints CPU microseconds per start (best of ``--reps`` slices) and per step (``--steps``: the
median slice's share per step, by ``time.process_time``). Measures the server's own Python, not
aiohttp's reading and writing or the kernel's. For an A/B under ``valgrind --tool=callgrind``, run
with ``--starts=N`` and ``--starts=0`` and divide the difference of the instruction counts by N.
Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import sys
import time
import uuid
from collections import defaultdict
from typing import Any

import msgpack
from aiohttp import web
from aiohttp.http import HttpVersion, RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from agent_worker.gcpause import tune_gc
from agent_worker.logs import configure_logging
from agent_worker.server import EmbeddedServer, ServerConfig
from agent_worker.server import constants as C
from agent_worker.server import hub as hub_module
from agent_worker.server.codec import JSON, MSGPACK, Format, decode_frame
from agent_worker.server.connection import RealtimeConnection
from bench.server.append import _CountingTransport

WORKER = "agent-worker"
CLIENT = "bench-client"


_GC = [0.0, 0.0, 0.0]  # CPU seconds in the collector during the counted starts, its start, count


def _gc_callback(phase: str, _info: dict[str, int]) -> None:
    if phase == "start":
        _GC[1] = time.process_time()
    else:
        _GC[0] += time.process_time() - _GC[1]
        _GC[2] += 1


def _uid() -> str:
    return str(uuid.uuid4())


def _transport_headers(run: str, inv: str, parent: str, **more: str) -> dict[str, str]:
    return {
        "run-id": run,
        "run-client-id": "user",
        "parent": parent,
        "invocation-id": inv,
        "input-client-id": "user",
        "input-codec-message-id": parent,
        **more,
    }


class _Start:
    """The frames of one start on ``channel`` (ids and serials filled in as the server mints them)."""

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.run, self.inv, self.parent, self.cmid = _uid(), _uid(), _uid(), _uid()
        self.step = f"{self.inv}-step-0"

    def input(self) -> dict[str, Any]:
        transport = {
            "role": "user",
            "codec-message-id": self.parent,
            "run-client-id": CLIENT,
            "event-id": _uid(),
            "stream": "false",
            "discrete": "true",
        }
        codec = {"kind": "user-message", "messageId": f"ui-{self.parent[:8]}", "partType": "text"}
        text = json.dumps({"bench": "stream", "id": "latencyN-0", "tokens": 60, "rate": 10})
        return {"name": "ai-input", "data": text, "extras": {"ai": {"transport": transport, "codec": codec}}}

    def run_start(self) -> dict[str, Any]:
        t = _transport_headers(self.run, self.inv, self.parent)
        return {"name": "ai-run-start", "id": f"{_uid()[:16]}:0", "extras": {"ai": {"transport": t}}}

    def step_start(self) -> dict[str, Any]:
        t = {
            "run-id": self.run,
            "step-id": self.step,
            "invocation-id": self.inv,
            "run-client-id": "user",
            "input-client-id": "user",
            "step-client-id": "user",
        }
        return {"name": "ai-step-start", "id": f"{_uid()[:16]}:0", "extras": {"ai": {"transport": t}}}

    def _output(self, step_serial: str, stream: bool, **more: str) -> dict[str, Any]:
        return _transport_headers(
            self.run,
            self.inv,
            self.parent,
            role="assistant",
            **{"codec-message-id": self.cmid},
            **{"step-id": self.step, "step-client-id": "user", "stream": "true" if stream else "false"},
            **more,
            **{"step-start-serial": step_serial},
        )

    def batch(self, step_serial: str) -> list[dict[str, Any]]:
        base = _uid()[:16]
        t = self._output(step_serial, stream=False)
        s = self._output(step_serial, stream=True, status="streaming", **{"stream-id": "txt-1"})
        return [
            {
                "name": "ai-output",
                "id": f"{base}:0",
                "extras": {"ai": {"transport": t, "codec": {"kind": "start", "messageId": self.cmid}}},
                "data": "",
            },
            {
                "name": "ai-output",
                "id": f"{base}:1",
                "extras": {"ai": {"transport": t, "codec": {"kind": "start-step"}}},
                "data": "",
            },
            {
                "name": "ai-output",
                "id": f"{base}:2",
                "extras": {"ai": {"transport": s, "codec": {"kind": "text", "id": "txt-1"}}},
                "data": "",
            },
        ]

    def append(self, step_serial: str, serial: str) -> dict[str, Any]:
        s = self._output(step_serial, stream=True, status="streaming", **{"stream-id": "txt-1"})
        return {
            "extras": {"ai": {"transport": s, "codec": {"kind": "text", "id": "txt-1"}}},
            "serial": serial,
            "action": 5,
            "data": "first ",
        }

    def presence(self) -> dict[str, Any]:
        data = json.dumps({"status": "streaming", "runId": self.run})
        return {"action": 2, "data": data, "encoding": "json", "clientId": WORKER}


def _encode(frame: dict[str, Any], fmt: Format) -> str | bytes:
    return msgpack.packb(frame) if fmt == MSGPACK else json.dumps(frame)


class _Harness:
    def __init__(self, server: EmbeddedServer, client_fmt: Format | None) -> None:
        self.server = server
        gateway = server._gateway
        assert gateway is not None
        self.gateway = gateway
        self.limit = server.config.frame_limit
        self.token = server.mint_token(client_id=WORKER)
        self.bearer = "Bearer " + base64.b64encode(self.token.encode()).decode()
        self.worker = self._connect(WORKER, MSGPACK, echo=False, token=self.token)
        self.client = self._connect(CLIENT, client_fmt, echo=True) if client_fmt is not None else None
        self.serials = {WORKER: 0, CLIENT: 0}
        self.steps: defaultdict[str, float] = defaultdict(float)
        self._stubs: tuple[Any, Any, Any] | None = None
        self.dry = False  # everything but the server's own work (for instruction counts)
        self.skip: set[str] = set()  # steps left out (an instruction count without one prices it)

    def _connect(
        self, client_id: str, fmt: Format, *, echo: bool, token: str | None = None
    ) -> RealtimeConnection:
        q = {"accessToken": token} if token else {"key": self.server.default_key, "clientId": client_id}
        principal = self.gateway.authenticate(q)
        conn = RealtimeConnection(self.gateway, principal, client_id, fmt, echo)
        conn.transport = _CountingTransport()  # type: ignore[assignment]
        conn.rollup_window_ms = 40
        self.gateway.connections[conn.id] = conn
        return conn

    async def _send(self, step: str, conn: RealtimeConnection, frame: dict[str, Any]) -> None:
        """Encode ``frame`` as its client would, then time (into ``step``) what the server does
        with it: decode, handle, and the loop turn that flushes its ACK."""
        if frame.get("action") in (C.MESSAGE, C.PRESENCE):
            who = WORKER if conn is self.worker else CLIENT
            frame["msgSerial"] = self.serials[who]
            self.serials[who] += 1
        raw = _encode(frame, conn.fmt)
        t0 = time.process_time()
        if not self.dry:
            conn.handle(decode_frame(raw, conn.fmt, self.limit), len(raw))
        await asyncio.sleep(0)
        self.steps[step] += time.process_time() - t0

    def _request(self, method: str, path: str, headers: CIMultiDict[str]) -> web.Request:
        """A ``web.Request`` as aiohttp's server builds one (``make_mocked_request``'s, with its mock
        protocol, writer and task made once: a ``Mock`` per request would be most of the cost)."""
        if self._stubs is None:
            proto = make_mocked_request("GET", "/")
            self._stubs = (proto._protocol, proto._payload_writer, proto._task)
        protocol, writer, task = self._stubs
        raw = tuple((k.encode(), v.encode()) for k, v in headers.items())
        message = RawRequestMessage(
            method,
            path,
            HttpVersion(1, 1),
            CIMultiDictProxy(headers),
            raw,
            False,
            None,
            False,
            False,
            URL(path),
        )
        loop = asyncio.get_running_loop()
        return web.Request(message, EMPTY_PAYLOAD, protocol, writer, task, loop)

    async def _history(self, channel: str, until: str) -> bytes:
        path = "/channels/" + channel.replace(":", "%3A") + "/messages"
        query = f"limit=100&direction=backwards&from_serial={until.replace('@', '%40')}"
        headers = CIMultiDict(
            {"X-Ably-Version": "5", "Accept": "application/x-msgpack", "Authorization": self.bearer}
        )
        request = self._request("GET", f"{path}?{query}", headers)
        rest = self.server._rest
        assert rest is not None
        t0 = time.process_time()
        if self.dry:
            return b""
        response = await rest.dispatch(request)
        self.steps["history GET"] += time.process_time() - t0
        assert isinstance(response, web.Response) and response.status == 200, response.status
        body = response.body
        assert isinstance(body, bytes)
        return body

    async def start(self, channel: str) -> None:
        s = _Start(channel)
        hub = self.server.hub
        worker, client, skip = self.worker, self.client, self.skip

        async def send(step: str, conn: RealtimeConnection, frame: dict[str, Any]) -> None:
            if step not in skip:
                await self._send(step, conn, frame)

        if client is not None:
            modes = C.MODE_SUBSCRIBE | C.MODE_PUBLISH | C.MODE_PRESENCE | C.MODE_PRESENCE_SUBSCRIBE
            await send("client attach", client, {"action": C.ATTACH, "channel": channel, "flags": modes})
            await send(
                "client input", client, {"action": C.MESSAGE, "channel": channel, "messages": [s.input()]}
            )
        params = {"agent": "ai-transport-python/0.1.0 vercel-ai-sdk-ui-message/0.8.0"}
        await send("attach", worker, {"action": C.ATTACH, "params": params, "channel": channel})
        log = hub.channel(channel).log
        if "history GET" not in skip:
            await self._history(channel, log.head)
        await send(
            "run-start", worker, {"action": C.MESSAGE, "channel": channel, "messages": [s.run_start()]}
        )
        await send(
            "step-start", worker, {"action": C.MESSAGE, "channel": channel, "messages": [s.step_start()]}
        )
        step_serial = log.order[-1] if log.order else "x"
        batch = {"action": C.MESSAGE, "channel": channel, "messages": s.batch(step_serial)}
        await send("batch of 3 creates", worker, batch)
        append = s.append(step_serial, log.order[-1] if log.order else "x")
        if "batch of 3 creates" not in skip:
            await send(
                "first append", worker, {"action": C.MESSAGE, "channel": channel, "messages": [append]}
            )
        presence = {"action": C.PRESENCE, "channel": channel, "presence": [s.presence()]}
        await send("presence enter", worker, presence)


async def run(
    starts: int,
    reps: int,
    client_fmt: Format | None,
    *,
    show_steps: bool = False,
    dry: bool = False,
    skip: str = "",
    hold_deferred: bool = False,
) -> float:
    # Every start on a fresh channel, kept attached (no DETACH to count): the channel caps raised.
    config = ServerConfig(
        host="127.0.0.1",
        port=0,
        enforce_rate_limits=True,
        max_channels_per_connection=1_000_000,
        max_channels=1_000_000,
        max_history_bytes=1 << 40,
    )
    async with EmbeddedServer(config) as server:
        tune_gc()  # as the bench's server process and `agent-worker server` do once started
        if hold_deferred:  # what a burst spends before its messages' deferred history encodes
            hub_module.PREENCODE_DELAY_S = 3600.0
        h = _Harness(server, client_fmt)
        # One warm-up start (imports, first-use caches), not counted.
        await h.start(f"conversations:warm-{uuid.uuid4().hex[:12]}")
        h.steps.clear()
        h.dry = dry
        h.skip = {x.strip() for x in skip.split(",") if x.strip()}
        if starts <= 0:
            return 0.0
        gc.callbacks.append(_gc_callback)
        per = max(1, starts // reps)
        slices: list[tuple[float, dict[str, float]]] = []
        done = 0
        while done < starts:
            n = min(per, starts - done)
            h.steps.clear()
            for _ in range(n):
                # A fresh channel per start; the server's rate limits are per connection and per
                # channel, so the harness's two connections get a fresh budget every ~0.1 s of CPU.
                h.worker._limiter.tokens = h.worker._limiter.rate
                if h.client is not None:
                    h.client._limiter.tokens = h.client._limiter.rate
                await h.start(f"conversations:burst-{uuid.uuid4().hex[:12]}")
            elapsed = sum(h.steps.values()) / n
            slices.append((elapsed, {k: v / n for k, v in h.steps.items()}))
            done += n
        gc.callbacks.remove(_gc_callback)
        slices.sort(key=lambda s: s[0])
        if show_steps:
            median = slices[len(slices) // 2][1]
            for k, v in median.items():
                print(f"  {k:24s} {v * 1e6:7.1f} us")
        return slices[0][0] * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.server.start", description=__doc__)
    parser.add_argument("--starts", type=int, default=3000)
    parser.add_argument("--reps", type=int, default=6)
    parser.add_argument("--client-format", choices=("json", "msgpack", "none"), default="msgpack")
    parser.add_argument("--steps", action="store_true", help="print the median slice's CPU per step")
    parser.add_argument(
        "--dry", action="store_true", help="build and encode every frame and request, hand none to the server"
    )
    parser.add_argument(
        "--skip",
        default="",
        help="steps to leave out, comma-separated (client attach, client input, attach, history GET, "
        "run-start, step-start, batch of 3 creates (with its append), presence enter)",
    )
    parser.add_argument(
        "--hold-deferred",
        action="store_true",
        help="leave the server's deferred history encodes (1 s after a publish) out of the count",
    )
    args = parser.parse_args(argv)
    fmt: Format | None = {"json": JSON, "msgpack": MSGPACK, "none": None}[args.client_format]
    configure_logging(level="warning", fmt="console", stream=sys.stderr)
    us = asyncio.run(
        run(
            args.starts,
            args.reps,
            fmt,
            show_steps=args.steps,
            dry=args.dry,
            skip=args.skip,
            hold_deferred=args.hold_deferred,
        )
    )
    print(f"collector: {_GC[0] * 1e6 / max(1, args.starts):.1f} us CPU per start, {_GC[2]:.0f} collections")
    print(f"{us:.1f} us CPU per start (client {args.client_format}, best of {args.reps})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
