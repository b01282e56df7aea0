"""Decode caps: deep nesting and huge bodies are refused with Ably's codes on every path, without
stalling anyone else (a bystander's heartbeat round trip is measured during each attack)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import subprocess
import sys
import time
from typing import Any

import aiohttp
import msgpack
import pytest
import structlog

from agent_worker.errors import ProtocolError
from agent_worker.limits import (
    MAX_DEPTH,
    check_depth,
    loads_json,
    loads_msgpack,
    may_nest_json,
    may_nest_msgpack,
)
from agent_worker.logs import configure_logging, get_logger
from agent_worker.server import EmbeddedServer, ServerConfig
from tests.server.server_support import ACK, ERROR, HEARTBEAT, NACK, RawClient


def nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


def deep_json(depth: int) -> str:
    # Built as text: json.dumps itself would recurse too deep past ~1000.
    return "[" * depth + '"x"' + "]" * depth


async def bystander_rtt(client: RawClient, n: int) -> float:
    """One HEARTBEAT-with-id round trip (the server echoes it); seconds."""
    started = time.perf_counter()
    await client.send({"action": HEARTBEAT, "id": f"rtt-{n}"})
    while True:
        frame = await client.recv(within=30)
        assert frame is not None, "bystander lost its connection"
        if frame["action"] == HEARTBEAT and frame.get("id") == f"rtt-{n}":
            return time.perf_counter() - started


def test_check_depth_is_iterative() -> None:
    check_depth(nested(MAX_DEPTH - 1))
    with pytest.raises(Exception, match="deeper than") as info:
        check_depth(nested(100_000))
    assert info.value.code == 40000  # type: ignore[attr-defined]


def test_check_depth_boundary_over_mixed_containers() -> None:
    """Exactly MAX_DEPTH levels pass and one more is refused, whichever containers nest (dict,
    list, tuple) and however wide the levels above are."""

    def mixed(depth: int) -> Any:
        value: Any = "leaf"
        for i in range(depth):
            value = ({"k": value, "s": "x"}, [1, value], (value,))[i % 3]
        return {"wide": list(range(50)), "side": {"a": 1}, "deep": value} if depth else value

    check_depth(mixed(MAX_DEPTH - 1))  # the wrapper dict adds one level
    check_depth("scalar")
    check_depth({"only": [{"shallow": i} for i in range(1000)]})
    for depth in (MAX_DEPTH, MAX_DEPTH + 5):
        with pytest.raises(Exception, match="deeper than"):
            check_depth(mixed(depth))


def _refused(decode: Any, raw: Any) -> bool:
    try:
        decode(raw)
    except ProtocolError as exc:
        assert exc.code == 40000, exc
        return True
    return False


def _walk_refuses(obj: Any) -> bool:
    try:
        check_depth(obj)
    except ProtocolError:
        return True
    return False


def _random_value(rng: random.Random, depth: int) -> Any:
    """A value nested exactly ``depth`` levels along one branch, with siblings of every kind: text
    whose UTF-8 bytes fall in msgpack's container-header range (``\u0080``-``\u009f``, ``€``),
    brackets inside strings, ints, ``null``, booleans (ext values: the test below)."""
    leaves: list[Any] = ["€" * rng.randint(0, 40), "[{" * rng.randint(0, 40), "\x85\x9c"]
    leaves += [7, 300, -1, None, True]
    value: Any = rng.choice(leaves)
    for _ in range(depth):
        siblings = [rng.choice(leaves) for _ in range(rng.randint(0, 3))]
        if rng.random() < 0.5:
            value = {"k": value, **{f"s{i}": v for i, v in enumerate(siblings)}}
        else:
            value = [*siblings, value]
    return value


def test_the_fast_depth_bound_refuses_exactly_what_the_walk_refuses() -> None:
    """Decoding skips the depth walk when the input's bytes bound the nesting (see limits.py); over
    values nested around MAX_DEPTH, with every kind of sibling, each format refuses exactly the
    values the walk refuses, and the bound is never below the nesting it stands for."""
    rng = random.Random(11)
    for depth in [*range(MAX_DEPTH - 3, MAX_DEPTH + 4), 0, 1, 5, 100]:
        for _ in range(15):
            value = _random_value(rng, depth)
            packed = msgpack.packb(value, use_bin_type=True)
            text = json.dumps(value, ensure_ascii=rng.random() < 0.5)
            walk = _walk_refuses(msgpack.unpackb(packed, raw=False, strict_map_key=False))
            assert walk == (depth > MAX_DEPTH)
            assert _refused(loads_msgpack, packed) == walk
            assert _refused(loads_json, text) == walk
            assert _refused(loads_json, text.encode()) == walk
            assert _refused(loads_json, text.encode("utf-16")) == walk
            if walk:
                assert may_nest_msgpack(packed) and may_nest_json(text)


def test_the_fast_depth_bound_at_the_limit() -> None:
    """MAX_DEPTH openers and nothing else: not walked, and within the limit; one more (a list, or a
    msgpack ext value, which decodes to a tuple) is walked and refused."""
    at_limit = nested(MAX_DEPTH)
    assert not may_nest_msgpack(msgpack.packb(at_limit)) and not may_nest_json(json.dumps(at_limit))
    assert loads_msgpack(msgpack.packb(at_limit)) == at_limit
    assert loads_json(json.dumps(at_limit)) == at_limit
    assert _refused(loads_msgpack, msgpack.packb(nested(MAX_DEPTH + 1)))
    assert _refused(loads_json, json.dumps(nested(MAX_DEPTH + 1)))
    ext = msgpack.packb(_nest_around(msgpack.ExtType(5, b"x"), MAX_DEPTH))
    assert may_nest_msgpack(ext) and _refused(loads_msgpack, ext)
    # A shallow frame whose text is all header-range bytes is walked, and accepted.
    shallow = msgpack.packb({"data": "\u0085" * 500}, use_bin_type=True)
    assert may_nest_msgpack(shallow) and not _refused(loads_msgpack, shallow)


def _nest_around(value: Any, depth: int) -> Any:
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
async def test_a_frame_one_level_too_deep_is_refused_and_one_at_the_limit_published(fmt: str) -> None:
    """Over the socket: the frame (1) -> messages (2) -> message (3) -> data nested to MAX_DEPTH is
    published; one level more is ERROR 40000, as before the fast bound."""
    async with EmbeddedServer(ServerConfig()) as server:
        client = await RawClient.connect(server, fmt=fmt, clientId="c")
        try:
            frame: dict[str, Any] = {"action": 15, "channel": "deep", "msgSerial": 0}
            frame["messages"] = [{"name": "n", "data": nested(MAX_DEPTH - 3)}]
            await client.send_raw(json.dumps(frame) if fmt == "json" else msgpack.packb(frame))
            assert (await client.expect(ACK))["msgSerial"] == 0
            frame["msgSerial"] = 1
            frame["messages"] = [{"name": "n", "data": nested(MAX_DEPTH - 2)}]
            await client.send_raw(json.dumps(frame) if fmt == "json" else msgpack.packb(frame))
            reply = await client.expect(ERROR)
            assert reply["error"]["code"] == 40000, reply
            assert "deeper than 64" in reply["error"]["message"]
            assert await client.closed()
        finally:
            await client.close()


@pytest.mark.parametrize(
    ("fmt", "depth"),
    [("json", 965), ("json", 10_000), ("msgpack", 1000), ("msgpack", 200), ("json", 200)],
)
async def test_deep_frames_answer_40000_and_bystander_keeps_going(fmt: str, depth: int) -> None:
    """A publish whose data nests ~1000 deep (2 KB) used to spin the loop forever; now it is an
    ERROR 40000 at once, the attacker's socket closes, and a bystander is served throughout."""
    async with EmbeddedServer(ServerConfig()) as server:
        bystander = await RawClient.connect(server, clientId="bystander")
        attacker = await RawClient.connect(server, fmt=fmt, clientId="mallory")
        try:
            frame = {
                "action": 15,
                "channel": "mine",
                "msgSerial": 0,
                "messages": [{"name": "n", "data": "D"}],
            }
            if fmt == "json":
                await attacker.send_raw(json.dumps(frame).replace('"D"', deep_json(depth)))
            else:
                await attacker.send_raw(_deep_msgpack(frame, depth))
            rtts = [await bystander_rtt(bystander, i) for i in range(3)]
            reply = await attacker.expect(ERROR)
            assert reply["error"]["code"] == 40000, reply
            assert await attacker.closed()
            print(f"deep {fmt} {depth}: bystander rtt max {max(rtts) * 1000:.1f} ms")
            await bystander.publish("ok", [{"name": "n", "data": "fine"}])
            assert (await bystander.expect(ACK))["msgSerial"] == 0
        finally:
            await attacker.close()
            await bystander.close()


def _deep_msgpack(frame: dict[str, Any], depth: int) -> bytes:
    """msgpack.packb refuses depth > 511; write the nested fixarrays by hand."""
    placeholder: bytes = msgpack.packb("\x00PLACEHOLDER", use_bin_type=True)
    frame["messages"][0]["data"] = "\x00PLACEHOLDER"
    body: bytes = msgpack.packb(frame, use_bin_type=True)
    deep = b"\x91" * depth + b"\xa1x"
    return body.replace(placeholder, deep)


async def test_oversized_frame_is_40009() -> None:
    async with EmbeddedServer(ServerConfig(max_message_size=1024, max_frame_size=4096)) as server:
        c = await RawClient.connect(server)
        try:
            await c.publish("big", [{"name": "n", "data": "x" * 6000}])
            assert (await c.expect(ERROR))["error"]["code"] == 40009
        finally:
            await c.close()


async def test_rest_deep_bodies_are_400_not_5xx() -> None:
    """REST publish and requestToken with deep JSON / msgpack: 400 with an Ably error, fast."""
    async with EmbeddedServer(ServerConfig()) as server:
        token = server.mint_token("mallory")
        base = f"http://{server.endpoint}"
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        async with aiohttp.ClientSession() as http:
            for body, ctype in (
                (deep_json(965).encode(), "application/json"),
                (deep_json(20_000).encode(), "application/json"),
                (b"\x91" * 5000 + b"\xa1x", "application/x-msgpack"),
                ('{"name":"n","data":' + deep_json(300) + "}", "application/json"),
            ):
                for path in ("/channels/mine/messages", "/keys/local.dev/requestToken"):
                    async with http.post(
                        base + path, data=body, headers={**headers, "Content-Type": ctype}
                    ) as r:
                        assert 400 <= r.status < 500, (path, r.status)
                        err = (await r.json())["error"]
                        assert err["code"] in (40000, 40001), err


async def test_huge_bodies_are_refused_before_reading() -> None:
    """9 MB to requestToken (unauthenticated) answered 500 after 8-9 s; now 413/40009, with a
    Content-Length or chunked, and a bystander's round trip keeps flowing."""
    async with EmbeddedServer(ServerConfig()) as server:
        bystander = await RawClient.connect(server, clientId="bystander")
        url = f"http://{server.endpoint}/keys/anything/requestToken"
        try:
            async with aiohttp.ClientSession() as http:
                big = b"[" * (9 << 20)
                async with http.post(url, data=big, headers={"Content-Type": "application/json"}) as r:
                    assert r.status == 413
                    assert (await r.json())["error"]["code"] == 40009
                    assert r.headers["X-Ably-Errorcode"] == "40009"

                async def chunks() -> Any:
                    for _ in range(40):
                        yield b"[" * (256 << 10)

                async with http.post(url, data=chunks(), headers={"Content-Type": "application/json"}) as r:
                    assert r.status == 413
                rtt = await bystander_rtt(bystander, 0)
                print(f"huge body: bystander rtt {rtt * 1000:.1f} ms")
        finally:
            await bystander.close()


async def test_deep_presence_and_nack_paths() -> None:
    """Deep data in a PRESENCE frame is refused the same way (the whole frame is capped)."""
    async with EmbeddedServer(ServerConfig()) as server:
        c = await RawClient.connect(server, clientId="p")
        try:
            await c.attach("room")
            frame = {
                "action": 14,
                "channel": "room",
                "msgSerial": 0,
                "presence": [{"action": 2, "data": "D"}],
            }
            await c.send_raw(json.dumps(frame).replace('"D"', deep_json(500)))
            reply = await c.recv()
            assert reply is not None and reply["action"] in (ERROR, NACK)
            assert reply["error"]["code"] == 40000
        finally:
            await c.close()


def test_console_logging_renders_plain_tracebacks_without_locals() -> None:
    """The console renderer used to print every frame's locals (rich); a deep recursion holding
    client data then took minutes. Now tracebacks are plain: no locals, bounded size."""
    buf = io.StringIO()
    secret_local = "LOCAL-VALUE-" + "z" * 50

    def recurse(n: int, payload: Any) -> None:
        marker = secret_local  # noqa: F841 - a local that must not be rendered
        recurse(n + 1, payload)

    try:
        configure_logging("console", "info", stream=buf)
        log = get_logger("agent_worker.test")
        try:
            recurse(0, nested(900))
        except RecursionError:
            started = time.perf_counter()
            log.exception("handler_failed")
            elapsed = time.perf_counter() - started
    finally:
        structlog.reset_defaults()
    out = buf.getvalue()
    assert "RecursionError" in out
    assert "LOCAL-VALUE" not in out and "payload" in out  # the source line, not the value
    assert len(out) < 200_000
    print(f"rendering a RecursionError: {elapsed * 1000:.1f} ms, {len(out)} chars")


def test_server_cli_configures_logging(tmp_path: Any) -> None:
    """`agent-worker server` configures logging itself (JSON lines with --log-format json)."""
    exe = os.path.join(os.path.dirname(sys.executable), "agent-worker")
    proc = subprocess.Popen(
        [exe, "server", "--port", "0", "--log-format", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        event = json.loads(line)
        assert event["event"] == "server_started" and event["level"] == "info"
    finally:
        proc.terminate()
        proc.wait(30)


async def test_bystander_round_trip_during_deep_flood() -> None:
    """20 attackers in a row, each sending a deep frame: the bystander's round trips all complete
    (measured and printed, not asserted on time)."""
    async with EmbeddedServer(ServerConfig()) as server:
        bystander = await RawClient.connect(server, clientId="bystander")
        rtts: list[float] = []
        try:
            for i in range(20):
                attacker = await RawClient.connect(server, clientId=f"m{i}")
                frame = {"action": 15, "channel": "x", "msgSerial": 0, "messages": [{"data": "D"}]}
                await attacker.send_raw(json.dumps(frame).replace('"D"', deep_json(965)))
                rtts.append(await bystander_rtt(bystander, i))
                assert (await attacker.expect(ERROR))["error"]["code"] == 40000
                await attacker.close()
            rtts.sort()
            p50, worst = rtts[10] * 1000, rtts[-1] * 1000
            print(f"bystander rtt during 20 deep frames: p50 {p50:.1f} ms max {worst:.1f} ms")
        finally:
            await bystander.close()
        await asyncio.sleep(0)
