"""``agent-worker run examples.custom_tool:agent``: a user-defined agent, served by import path as a
process, answers the official JS client (``@ably/ai-transport`` + the AI SDK's useChat)."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from agent_worker.server.testing import RemoteServer
from tests.conformance.conformance_support import CLIENT_CAPABILITY, SCENARIOS, Conductor
from tests.node_support import node_config, run_node_async
from tests.worker.test_worker_cli import read_banner

pytestmark = pytest.mark.node

ROOT = Path(__file__).resolve().parents[2]


async def test_agent_by_import_path_serves_the_official_client(tmp_path: Path) -> None:
    """The CLI imports the user's Agent (typed deps, a tool, its own model), applies the config file
    and flags, and the official client sees the tool call, its result and the reply stream in."""
    config = tmp_path / "worker.toml"
    config.write_text("[ably]\nembedded_port = 0\n[worker]\ncoalesce_window_ms = 0.0\ndrain_timeout_s = 1\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent_worker.cli",
        "run",
        "examples.custom_tool:agent",
        "--config",
        str(config),
        "--http",
        "127.0.0.1:0",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "AGENT_WORKER_PROVIDER": ""},
    )
    try:
        banner = await read_banner(proc)
        server = RemoteServer(banner["ably"], banner["key"])
        session = f"conversations:target-{uuid.uuid4().hex[:8]}"
        env = node_config(
            host=server.host,
            port=server.port,
            protocol="msgpack",
            session=session,
            api=banner["http"],
            tokens={"alice": server.mint_token(client_id="alice", capability=CLIENT_CAPABILITY, ttl_s=600)},
            texts=["Where is order 42?"],
        )
        result: dict[str, Any] = await run_node_async(
            SCENARIOS, "send", env=env, timeout=90, on_control=Conductor().handle
        )
    finally:
        if proc.returncode is None:
            proc.terminate()
            async with asyncio.timeout(30):
                await proc.wait()
    a = result["a"]
    user, assistant = a["view"]
    assert (user["role"], user["text"]) == ("user", "Where is order 42?")
    assert assistant["text"] == "Order status: shipped"
    [tool] = [p for p in assistant["parts"] if p["type"].startswith("tool-")]
    assert tool["type"] == "tool-order_status" and tool["state"] == "output-available"
    assert tool["input"] == {"order_id": "42"} and tool["output"] == "shipped"
    [run] = a["runs"]
    assert run["status"] == "complete" and run["clientId"] == "alice"
    assert proc.returncode == 0
