"""Fuzz: malformed WebSocket frames and HTTP requests never crash the server or hurt other clients.

The server runs on its own event loop in a background thread so Hypothesis can drive plain
synchronous clients (``websockets.sync``, ``httpx``) example by example.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect
from websockets.sync.connection import Connection

from agent_worker.server import EmbeddedServer, ServerConfig
from agent_worker.server.testing import python_realtime, python_rest

FUZZ_SETTINGS = settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


class ThreadedServer:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server = EmbeddedServer(ServerConfig(max_message_size=4096, presence_leave_delay_ms=50))

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def __enter__(self) -> EmbeddedServer:
        self.thread.start()
        self.run(self.server.start())
        return self.server

    def __exit__(self, *exc: object) -> None:
        self.run(self.server.stop())
        # aiohttp finishes a connection's lingering read (a refused body's rest) in its own task:
        # let every such task end before the loop stops, or it is destroyed while pending.
        self.run(self._finish_tasks())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    @staticmethod
    async def _finish_tasks() -> None:
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[EmbeddedServer]:
    with ThreadedServer() as server:
        yield server


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
protocol_like = st.fixed_dictionaries(
    {"action": st.one_of(st.integers(-3, 25), st.text(max_size=3), st.none())},
    optional={
        "channel": st.one_of(st.sampled_from(["fuzz", "", "[x", ":bad", "a\nb"]), json_values),
        "msgSerial": st.one_of(st.integers(-2, 5), json_values),
        "messages": st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "name": json_values,
                        "data": json_values,
                        "encoding": st.sampled_from(["base64", "json", "utf-8/base64", "bogus"])
                        | json_values,
                        "action": st.integers(-1, 7) | json_values,
                        "serial": st.text(max_size=40) | json_values,
                        "extras": json_values,
                        "clientId": json_values,
                    },
                ),
                max_size=3,
            ),
            json_values,
        ),
        "presence": st.lists(st.fixed_dictionaries({"action": st.integers(-1, 6) | json_values}), max_size=2)
        | json_values,
        "flags": st.integers(-(2**31), 2**40) | json_values,
        "channelSerial": st.text(max_size=40) | json_values,
        "params": json_values,
        "auth": json_values,
        "id": json_values,
    },
)
frames = st.one_of(
    st.binary(max_size=64).map(lambda b: ("bytes", b)),
    st.text(max_size=64).map(lambda t: ("text", t)),
    json_values.map(lambda v: ("json", v)),
    protocol_like.map(lambda v: ("json", v)),
    protocol_like.map(lambda v: ("msgpack", v)),
)


def _send(ws: ClientConnection, frame: tuple[str, Any]) -> None:
    kind, value = frame
    if kind in {"bytes", "text"}:
        ws.send(value)
    elif kind == "json":
        ws.send(json.dumps(value))
    else:
        ws.send(msgpack.packb(value, use_bin_type=True))


def _drain(ws: Connection) -> list[Any]:
    out: list[Any] = []
    try:
        while True:
            raw = ws.recv(timeout=0.15)
            out.append(json.loads(raw) if isinstance(raw, str) else msgpack.unpackb(raw, raw=False))
    except (TimeoutError, ConnectionClosed):
        return out


def _open(server: EmbeddedServer, fmt: str = "json") -> ClientConnection:
    q = f"key={server.default_key}&clientId=fuzzer" + ("&format=msgpack" if fmt == "msgpack" else "")
    ws = connect(f"ws://{server.endpoint}/?{q}", open_timeout=10)
    first = ws.recv(timeout=10)
    hello = json.loads(first) if isinstance(first, str) else msgpack.unpackb(first, raw=False)
    assert hello["action"] == 4
    return ws


@FUZZ_SETTINGS
@given(batch=st.lists(frames, min_size=1, max_size=3), fmt=st.sampled_from(["json", "msgpack"]))
def test_malformed_frames(fuzz_server: EmbeddedServer, batch: list[tuple[str, Any]], fmt: str) -> None:
    """Any frame sequence gets Ably-shaped answers (ERROR/NACK with integer codes) or is ignored."""
    ws = _open(fuzz_server, fmt)
    try:
        for frame in batch:
            try:
                _send(ws, frame)
            except ConnectionClosed:
                break
        for reply in _drain(ws):
            assert isinstance(reply, dict) and isinstance(reply.get("action"), int)
            if reply["action"] in (2, 9):
                assert isinstance(reply["error"]["code"], int) and reply["error"]["code"] != 50000
    finally:
        ws.close()


paths = st.one_of(
    st.sampled_from(
        [
            "/time",
            "/stats",
            "/channels/fuzz",
            "/channels/fuzz/messages",
            "/channels/fuzz/messages/00000000000001-000@x:000",
            "/channels/fuzz/messages/00000000000001-000@x:000/versions",
            "/channels/fuzz/presence",
            "/channels/fuzz/presence/history",
            "/keys/local.dev/requestToken",
            "/keys/../requestToken",
            "/channels/%ZZ/messages",
            "/channels/%5Bx/messages",
        ]
    ),
    st.lists(st.text(alphabet="abc/%:+.-?=&", max_size=6), max_size=4).map(lambda p: "/" + "/".join(p)),
)
queries = st.dictionaries(
    st.sampled_from(
        ["limit", "direction", "start", "end", "from_serial", "cursor", "fromSerial", "clientId"]
    ),
    st.text(max_size=10),
    max_size=3,
)


requests = st.fixed_dictionaries(
    {
        "method": st.sampled_from(["GET", "POST", "PATCH", "PUT", "DELETE"]),
        "path": paths,
        "query": queries,
        "body": st.one_of(st.binary(max_size=80), json_values.map(lambda v: json.dumps(v).encode())),
        "content_type": st.sampled_from(["application/json", "application/x-msgpack", "text/plain", ""]),
        "auth": st.sampled_from(["bearer", "basic", "garbage", "none"]),
    }
)


@FUZZ_SETTINGS
@given(req=requests)
def test_malformed_http(fuzz_server: EmbeddedServer, req: dict[str, Any]) -> None:
    """Any request gets a non-5xx answer; errors are Ably error bodies with the X-Ably headers."""
    method, path, query, body = req["method"], req["path"], req["query"], req["body"]
    content_type, auth = req["content_type"], req["auth"]
    headers = {"Content-Type": content_type} if content_type else {}
    if auth == "bearer":
        headers["Authorization"] = f"Bearer {fuzz_server.mint_token('fuzzer')}"
    elif auth == "basic":
        headers["Authorization"] = "Basic " + base64.b64encode(fuzz_server.default_key.encode()).decode()
    elif auth == "garbage":
        headers["Authorization"] = "Bearer !!!"
    # http.client sends the path verbatim, so odd paths reach the server unnormalised.
    conn = http.client.HTTPConnection(fuzz_server.host, fuzz_server.port, timeout=10)
    try:
        target = path + ("?" + urlencode(query) if query else "")
        conn.request(method, target, body=body, headers=headers)
        resp = conn.getresponse()
        payload = resp.read()
    finally:
        conn.close()
    assert resp.status < 500, payload
    if resp.status >= 400:
        assert resp.getheader("Content-Type") == "application/json"
        error = json.loads(payload)["error"]
        assert str(error["code"]) == resp.getheader("X-Ably-Errorcode")


async def _healthy_round_trip(server: EmbeddedServer) -> None:
    rt = python_realtime(server, client_id="healthy")
    rest = python_rest(server, client_id="healthy")
    try:
        got: list[Any] = []

        def listener(m: Any) -> None:
            got.append(m)

        ch = rt.channels.get("healthy")
        await ch.subscribe(listener)
        result = await ch.publish("n", "still alive")
        for _ in range(200):
            if got:
                break
            await asyncio.sleep(0.02)
        assert [m.data for m in got] == ["still alive"]
        assert (await rest.channels.get("healthy").history()).items[0].serial == result.serials[0]
    finally:
        await rt.close()
        await rest.close()


def test_server_still_serves_after_fuzzing(fuzz_server: EmbeddedServer) -> None:
    """After (and alongside) the fuzzing, a bystander socket and a fresh SDK client work normally."""
    bystander = _open(fuzz_server)
    try:
        bystander.send(json.dumps({"action": 10, "channel": "bystander"}))
        assert json.loads(bystander.recv(timeout=10))["action"] == 11
        # Hammer the server on other sockets while the bystander stays connected.
        for junk in (b"\xc1", "{", json.dumps({"action": 99}), json.dumps([1, 2])):
            with connect(f"ws://{fuzz_server.endpoint}/?key={fuzz_server.default_key}") as bad:
                bad.recv(timeout=10)
                bad.send(junk)
                _drain(bad)
        bystander.send(
            json.dumps({"action": 15, "channel": "bystander", "msgSerial": 0, "messages": [{"data": 1}]})
        )
        replies = [json.loads(bystander.recv(timeout=10)) for _ in range(2)]
        replies = [r for r in replies if r["action"] != 0] or replies
        assert {r["action"] for r in replies} <= {15, 1, 0}
    finally:
        bystander.close()
    asyncio.run(_healthy_round_trip(fuzz_server))


DEEP_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _nested_text(depth: int, opener: str) -> str:
    closer = "]" if opener == "[" else "}"
    inner = '"x"'
    if opener == "{":
        return '{"k":' * depth + inner + closer * depth
    return opener * depth + inner + closer * depth


@DEEP_SETTINGS
@given(
    depth=st.integers(30, 5000), opener=st.sampled_from(["[", "{"]), where=st.sampled_from(["data", "extras"])
)
def test_deeply_nested_frames(fuzz_server: EmbeddedServer, depth: int, opener: str, where: str) -> None:
    """Any nesting depth in a publish gets an ACK (shallow) or an ERROR/NACK with a 4xxxx code, never
    50000 and never a stall."""
    ws = _open(fuzz_server)
    try:
        frame = {"action": 15, "channel": "fuzz", "msgSerial": 0, "messages": [{"name": "n", where: "SLOT"}]}
        ws.send(json.dumps(frame).replace('"SLOT"', _nested_text(depth, opener)))
        for reply in _drain(ws):
            if reply["action"] in (2, 9):
                assert 40000 <= reply["error"]["code"] < 50000, reply
    finally:
        ws.close()


@DEEP_SETTINGS
@given(
    depth=st.integers(30, 5000),
    path=st.sampled_from(["/channels/fuzz/messages", "/keys/local.dev/requestToken"]),
)
def test_deeply_nested_bodies(fuzz_server: EmbeddedServer, depth: int, path: str) -> None:
    conn = http.client.HTTPConnection(fuzz_server.host, fuzz_server.port, timeout=10)
    try:
        body = '{"name":"n","data":' + _nested_text(depth, "[") + "}"
        headers = {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {fuzz_server.mint_token('fuzzer')}",
        }
        conn.request("POST", path, body=body.encode(), headers=headers)
        resp = conn.getresponse()
        resp.read()
    finally:
        conn.close()
    assert resp.status < 500


def test_slow_readers_and_slow_writers_do_not_stall_a_bystander(fuzz_server: EmbeddedServer) -> None:
    """A socket that never reads while a channel floods it, and an HTTP client dribbling its body one
    byte at a time: a bystander's heartbeat round trips keep completing (measured, printed)."""
    import socket  # noqa: PLC0415
    import time  # noqa: PLC0415

    slow = _open(fuzz_server)
    slow.send(json.dumps({"action": 10, "channel": "flood"}))
    dribble = socket.create_connection((fuzz_server.host, fuzz_server.port), timeout=10)
    dribble.sendall(
        b"POST /keys/local.dev/requestToken HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100000\r\n\r\n"
    )
    bystander = _open(fuzz_server)
    publisher = _open(fuzz_server)
    rtts = []
    try:
        for i in range(30):
            publisher.send(
                json.dumps(
                    {"action": 15, "channel": "flood", "msgSerial": i, "messages": [{"data": "z" * 3000}]}
                )
            )
            dribble.sendall(b"[")
            started = time.perf_counter()
            bystander.send(json.dumps({"action": 0, "id": f"p{i}"}))
            while True:
                reply = json.loads(bystander.recv(timeout=30))
                if reply.get("id") == f"p{i}":
                    break
            rtts.append(time.perf_counter() - started)
        rtts.sort()
        p50, worst = rtts[15] * 1000, rtts[-1] * 1000
        print(f"bystander rtt with a slow reader and a slow writer: p50 {p50:.1f} ms max {worst:.1f} ms")
    finally:
        for ws in (slow, bystander, publisher):
            ws.close()
        dribble.close()
