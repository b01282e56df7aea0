"""``agent-worker server``: prints endpoint and keys, serves SDKs, stops cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest
from ably.types.message import Message
from ably.util.exceptions import AblyException

from agent_worker.server import DEFAULT_DEV_KEY
from agent_worker.server.testing import RemoteServer, python_realtime, python_rest
from tests.server.server_support import collector, eventually

# The command registered on a fresh Typer app beside a no-op command, so the test does not depend
# on which other packages have registered their commands yet.
_RUNNER = """
import typer
from agent_worker.server.cli import register
app = typer.Typer()
register(app)
@app.command("noop")
def noop() -> None:
    pass
app()
"""


async def _start(*args: str) -> tuple[asyncio.subprocess.Process, dict[str, list[str]]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _RUNNER,
        "server",
        "--port",
        "0",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    facts: dict[str, list[str]] = {"endpoint": [], "key": [], "lines": []}
    while not (facts["endpoint"] and facts["key"] and facts.get("ably-python")):
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line, "server exited before printing its endpoint"
        facts["lines"].append(line)
        name, sep, value = line.partition(": ")
        if sep and name in ("endpoint", "key", "ably-python"):
            facts.setdefault(name, []).append(value.strip())
    return proc, facts


async def test_cli_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    """Two --key options are printed and accepted; SIGTERM exits 0; --data-dir keeps history."""
    keys = [
        "app.one:secret-one-long-enough-xxxxxxxxxxxxxxxx",
        "app.two:secret-two-long-enough-xxxxxxxxxxxxxxxx",
    ]
    proc, facts = await _start("--key", keys[0], "--key", keys[1], "--data-dir", str(tmp_path))
    try:
        assert facts["key"] == keys
        server = RemoteServer(facts["endpoint"][0], keys[1])  # tokens signed with the second key
        rt = python_realtime(server, client_id="cli")
        try:
            got, listener = collector()
            ch = rt.channels.get("cli")
            await ch.subscribe(listener)
            await ch.publish("n", "hello")
            await eventually(lambda: len(got) == 1)
        finally:
            await rt.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    proc, facts = await _start("--key", keys[0], "--data-dir", str(tmp_path))
    try:
        rest = python_rest(RemoteServer(facts["endpoint"][0], keys[0]))
        try:
            assert [m.data for m in (await rest.channels.get("cli").history()).items] == ["hello"]
        finally:
            await rest.close()
    finally:
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 30) == 0


async def test_cli_default_dev_key() -> None:
    """Without --key the server prints and accepts the default dev key."""
    proc, facts = await _start()
    try:
        assert facts["key"] == [DEFAULT_DEV_KEY]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0


async def test_cli_http_idle_timeout_option() -> None:
    """--http-idle-timeout-s closes a connection that never completes its request (3,630 s before)."""
    proc, facts = await _start("--http-idle-timeout-s", "0.2")
    try:
        host, _, port = facts["endpoint"][0].rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /ti")
        assert await asyncio.wait_for(reader.read(), 30) == b""
        writer.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0


async def test_cli_connection_cap_body_and_close_timeout_options() -> None:
    """--max-connections, --http-body-timeout-s, --http-write-timeout-s and --close-timeout-ms
    reach the server (they could be set only in ServerConfig before)."""
    proc, facts = await _start(
        "--max-connections",
        "2",
        "--http-body-timeout-s",
        "0.25",
        "--close-timeout-ms",
        "321",
        "--http-write-timeout-s",
        "7.5",
    )
    started = next(line for line in facts["lines"] if "server_started" in line)
    assert "close_timeout_ms=321" in started and "max_connections=2" in started, started
    assert "http_write_timeout_s=7.5" in started, started
    host, _, port = facts["endpoint"][0].rpartition(":")
    try:
        # Two held: the third is refused 503 / 50300 (connections are counted in accept order).
        held = [await asyncio.open_connection(host, int(port)) for _ in range(2)]
        third_r, third_w = await asyncio.open_connection(host, int(port))
        third_w.write(b"GET /time HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        refused = await asyncio.wait_for(third_r.read(), 30)
        assert refused.startswith(b"HTTP/1.1 503") and b'"code": 50300' in refused, refused
        for _, w in (*held, (third_r, third_w)):
            w.close()
        # A body that stops arriving is refused after the configured bound (named in the answer),
        # once the server has let go of the closed connections (until then: 503, try again).
        for _ in range(500):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(
                b"POST /keys/local.dev/requestToken HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"ttl":'
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            if not head.startswith(b"HTTP/1.1 503"):
                break
            writer.close()
            await asyncio.sleep(0.02)
        assert head.startswith(b"HTTP/1.1 408"), head
        length = int(head.lower().partition(b"content-length:")[2].split(b"\r\n")[0])
        assert b"within 0.25s" in await asyncio.wait_for(reader.readexactly(length), 30)
        writer.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0


async def _check_key_capability_and_rules(endpoint: str, full: str, narrow: str) -> None:
    """``narrow`` may only subscribe under ``team:``; appends need the ``conversations`` rule."""
    rt = python_realtime(RemoteServer(endpoint, narrow), client_id="narrow")
    try:
        with pytest.raises(AblyException) as err:
            await rt.channels.get("team:a").publish("n", "x")
        assert err.value.code == 40160
        await rt.channels.get("team:a").attach()
    finally:
        await rt.close()
    rt = python_realtime(RemoteServer(endpoint, full), client_id="full")
    try:
        plain = rt.channels.get("notes:a")
        serial = (await plain.publish("n", "te")).serials[0]
        with pytest.raises(AblyException) as err:
            await plain.append_message(Message(serial=serial, data="xt"))
        assert err.value.code == 93002
        chat = rt.channels.get("conversations:a")
        serial = (await chat.publish("n", "te")).serials[0]
        assert (await chat.append_message(Message(serial=serial, data="xt"))).version_serial
    finally:
        await rt.close()


FULL_KEY = "app.one:secret-one-long-enough-xxxxxxxxxxxxxxxx"
NARROW_KEY = "app.two:secret-two-long-enough-xxxxxxxxxxxxxxxx"


async def test_cli_key_capability_and_channel_rule_options() -> None:
    proc, facts = await _start(
        "--key",
        FULL_KEY,
        "--key",
        NARROW_KEY,
        "--key-capability",
        'app.two={"team:*":["subscribe"]}',
        "--channel-rule",
        "conversations=mutable",
    )
    try:
        assert facts["key"] == [FULL_KEY, f'{NARROW_KEY}  capability: {{"team:*":["subscribe"]}}']
        await _check_key_capability_and_rules(facts["endpoint"][0], FULL_KEY, NARROW_KEY)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0


async def test_cli_keys_and_rules_from_a_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AW_TEST_NARROW_KEY", NARROW_KEY)
    config = tmp_path / "server.toml"
    config.write_text(
        f"""
[[server.keys]]
key = "{FULL_KEY}"

[[server.keys]]
key_env = "AW_TEST_NARROW_KEY"
capability = {{ "team:*" = ["subscribe"] }}

[[server.channel_rules]]
namespace = "conversations"
mutable_messages = true
""",
        encoding="utf-8",
    )
    proc, facts = await _start("--config", str(config))
    try:
        assert facts["key"][0] == FULL_KEY and facts["key"][1].startswith(NARROW_KEY)
        await _check_key_capability_and_rules(facts["endpoint"][0], FULL_KEY, NARROW_KEY)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0


async def test_cli_refuses_a_capability_for_an_unknown_key() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _RUNNER,
        "server",
        "--port",
        "0",
        "--key-capability",
        'app.nope={"*":["subscribe"]}',
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert b"unknown key(s) app.nope" in out
