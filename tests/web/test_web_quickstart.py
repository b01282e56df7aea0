"""The README path with a browser: `agent-worker run` with its defaults serves the page at `/` (web
client and dev token endpoint on with the embedded server), and a browser tab and a terminal
`agent-worker chat` device on one session see the same conversation."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pexpect
import pytest
from playwright.async_api import Browser, expect

from tests.web.web_support import messages, ready, send, snapshot

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

EXE = str(Path(sys.executable).with_name("agent-worker"))
BANNER_ABLY = re.compile(r"embedded Ably server: (\S+)\s+key: (\S+)")
BANNER_WEB = re.compile(r"web client: (http://\S+)/\?clientId=alice")
SESSION = "conversations:demo"


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """`agent-worker run --provider echo` on ephemeral ports; yields (ably endpoint, key, web base)."""
    config = tmp_path / "worker.toml"
    config.write_text("[ably]\nembedded_port = 0\n")  # nothing about web or tokens: the defaults
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("ABLY_KEY", None)
    proc = pexpect.spawn(
        EXE,
        ["run", "--config", str(config), "--http", "127.0.0.1:0", "--provider", "echo"],
        env=env,
        encoding="utf-8",
        timeout=30,
    )
    try:
        proc.expect(BANNER_ABLY)
        endpoint, key = proc.match.group(1), proc.match.group(2)
        proc.expect(BANNER_WEB)
        yield endpoint, key, proc.match.group(1)
    finally:
        proc.sendintr()
        proc.expect(pexpect.EOF, timeout=30)
        proc.close(force=True)


async def test_a_browser_tab_and_a_terminal_device_share_a_session(
    browser: Browser, worker: tuple[str, str, str]
) -> None:
    endpoint, key, base = worker
    async with aiohttp.ClientSession() as http, http.get(f"{base}/") as resp:  # what `make run` serves
        assert resp.status == 200 and b'<div id="root">' in await resp.read()

    context = await browser.new_context(viewport={"width": 1000, "height": 640})
    try:
        alice = await context.new_page()
        await alice.goto(f"{base}/?clientId=alice")  # the default session: conversations:demo
        await ready(alice)
        env = {**os.environ, "NO_COLOR": "1", "ABLY_KEY": key}
        bob = pexpect.spawn(
            EXE,
            [
                "chat",
                SESSION,
                "--client-id",
                "bob",
                "--ably-endpoint",
                endpoint,
                "--agent-url",
                f"{base}/api/chat",
            ],
            env=env,
            encoding="utf-8",
            timeout=30,
            dimensions=(40, 200),
        )
        try:
            await asyncio.to_thread(bob.expect, "type a message")
            await send(alice, "hello from the browser")
            await asyncio.to_thread(bob.expect, "alice> hello from the browser")
            await asyncio.to_thread(bob.expect, "assistant> hello from the browser")

            bob.sendline("hello from the terminal")
            await expect(alice.get_by_test_id("message")).to_have_count(4)
            await expect(alice.get_by_test_id("run-status").last).to_have_attribute("data-status", "complete")
            assert await messages(alice) == [
                ("user", "alice", "hello from the browser"),
                ("assistant", "agent-worker", "hello from the browser"),
                ("user", "bob", "hello from the terminal"),
                ("assistant", "agent-worker", "hello from the terminal"),
            ]
            presence = alice.get_by_test_id("presence")
            await expect(presence.locator("[data-client-id=bob]")).to_have_attribute("data-device", "chat")
            await snapshot(alice, "terminal-and-browser", "alice")
            bob.sendline("/quit")
            await asyncio.to_thread(bob.expect, pexpect.EOF)
        finally:
            bob.close(force=True)
    finally:
        await context.close()
