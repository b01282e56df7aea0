"""``agent-worker run`` as a process: offline default (embedded server), a reply, SIGTERM drain."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import uuid
from pathlib import Path

import aiohttp
import pytest
from ably import AblyRealtime
from ably.types.message import Message

from agent_worker.agent import Agent
from agent_worker.config import load_config
from agent_worker.errors import ConfigError
from agent_worker.protocol.headers import build_input_headers
from agent_worker.protocol.tree import ConversationTree
from agent_worker.protocol.vercel.encoder import encode_user_message
from agent_worker.server import DEFAULT_DEV_KEY
from agent_worker.transport.ably import to_inbound
from tests.temporal_support import TemporalDevServer, task_queue, temporal_server

__all__ = ["temporal_server"]

CONFIG = """
[ably]
embedded_port = 0
[worker]
drain_timeout_s = 0.3
log_format = "json"
[provider]
name = "echo"
[providers.echo]
tokens_per_second = 8
[tools]
enabled = []
[prompts]
system = ""
"""


async def read_banner(proc: asyncio.subprocess.Process) -> dict[str, str]:
    found: dict[str, str] = {}
    assert proc.stdout is not None
    async with asyncio.timeout(30):
        while "end" not in found:
            line = (await proc.stdout.readline()).decode()
            if not line:
                msg = "worker exited before printing its banner"
                raise AssertionError(msg)
            if m := re.search(r"embedded Ably server: (\S+)\s+key: (\S+)", line):
                found["ably"], found["key"] = m.group(1), m.group(2)
            if m := re.search(r"channel rules: (.*)", line):
                found["rules"] = m.group(1)
            if m := re.search(r"POST (http://\S+)", line):
                found["http"] = m.group(1)
            if m := re.search(r"engine: (\S+)", line):
                found["engine"] = m.group(1)
            if "stop with Ctrl-C" in line:
                found["end"] = line
    return found


@pytest.mark.parametrize("engine", ["local", "temporal"])
async def test_run_offline_reply_then_sigterm_drains(
    tmp_path: Path, engine: str, request: pytest.FixtureRequest
) -> None:
    """With no Ably configured the worker starts the embedded server, prints endpoint and key,
    answers an invocation, and on SIGTERM ends its in-flight run with ai-run-end before exiting 0 —
    running its runs here (local) or as Temporal workflows (``--engine temporal``, a dev server)."""
    config = tmp_path / "worker.toml"
    config.write_text(CONFIG)
    flags: list[str] = []
    if engine == "temporal":
        server: TemporalDevServer = request.getfixturevalue("temporal_server")
        flags = ["--engine", "temporal", "--temporal-address", server.address]
        flags += ["--temporal-task-queue", task_queue("cli")]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent_worker.cli",
        "run",
        "--config",
        str(config),
        "--http",
        "127.0.0.1:0",
        *flags,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "AGENT_WORKER_PROVIDER": ""},
    )
    client = None
    try:
        banner = await read_banner(proc)
        assert banner.get("engine", "local") == engine
        assert banner["key"] == DEFAULT_DEV_KEY
        # Sessions default to "*": the embedded server enables mutable messages everywhere, and says so.
        assert banner["rules"].startswith("every channel: mutable messages")
        client = AblyRealtime(
            key=banner["key"],
            endpoint=f"{banner['ably']}/",
            tls=False,
            use_token_auth=True,
            client_id="user-abc",
            default_token_params={"client_id": "user-abc"},
        )
        channel = client.channels.get("conversations:cli")
        tree = ConversationTree()
        names: list[str] = []
        arrived = asyncio.Event()

        def on_message(msg: Message) -> None:
            inbound = to_inbound(msg)
            tree.apply(inbound)
            names.append(inbound.name or "")
            arrived.set()

        await channel.subscribe(on_message)

        async def send(text: str) -> str:
            cmid, eid = str(uuid.uuid4()), str(uuid.uuid4())
            headers = build_input_headers(codec_message_id=cmid, event_id=eid, run_client_id="user-abc")
            parts = encode_user_message(
                {"id": cmid, "role": "user", "parts": [{"type": "text", "text": text}]}, headers
            )
            await channel.publish([Message(name=m.name, data=m.data, extras=m.extras) for m in parts])
            async with (
                aiohttp.ClientSession() as http,
                http.post(
                    banner["http"], json={"inputEventId": eid, "sessionName": "conversations:cli"}
                ) as resp,
            ):
                assert resp.status == 200
                return str((await resp.json())["runId"])

        async def wait(predicate: object) -> None:
            async with asyncio.timeout(20):
                while not predicate():  # type: ignore[operator]
                    arrived.clear()
                    await arrived.wait()

        first = await send("hi there")
        await wait(lambda: (n := tree.run(first)) is not None and n.status == "complete")

        second = await send("a long message that will not finish before the drain timeout ends")
        await wait(lambda: (n := tree.run(second)) is not None and n.messages)
        proc.send_signal(signal.SIGTERM)
        await wait(lambda: tree.run(second).status == "cancelled")  # type: ignore[union-attr]
        async with asyncio.timeout(30):
            assert await proc.wait() == 0
    finally:
        if client is not None:
            await client.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_config_rejects_unknown_keys(tmp_path: Path) -> None:
    """A misspelt key fails at startup with the allowed keys named."""
    config = tmp_path / "bad.toml"
    config.write_text("[worker]\nmax_concurent_runs = 3\n")
    try:
        load_config(config)
    except ConfigError as exc:
        assert "'max_concurent_runs' in [worker]" in exc.message and "max_concurrent_runs" in exc.message
    else:
        msg = "expected a ConfigError"
        raise AssertionError(msg)


def test_example_config_loads() -> None:
    """config.example.toml is valid as shipped (every section, including the provider's)."""
    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "config.example.toml")
    assert cfg.http.path == "/api/chat" and cfg.worker.cancel_policy == "owner"
    assert Agent.from_config(root / "config.example.toml").provider_name == "echo"


def test_secrets_stay_out_of_repr(tmp_path: Path) -> None:
    """Keys and bearer tokens from a config file never appear in reprs."""
    config = tmp_path / "s.toml"
    config.write_text('[ably]\nkey = "app.key:supersecret"\n[http]\nbearer_token = "tok-123"\n')
    cfg = load_config(config)
    text = repr(cfg)
    assert "supersecret" not in text and "tok-123" not in text
    assert cfg.ably.resolved_key() is not None and cfg.ably.resolved_key().get() == "app.key:supersecret"  # type: ignore[union-attr]
