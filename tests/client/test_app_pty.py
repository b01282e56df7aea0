"""`agent-worker chat` as a real process in a pseudo-terminal, against the in-process server.

The agent is the scripted double (no worker), so each test decides exactly when tokens arrive; the
chat process is driven like a person would: typing lines, /commands, Ctrl-C.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pexpect
import pytest

from agent_worker.server import EmbeddedServer
from tests.client.agent_double import ScriptedAgent

CHANNEL = "conversations:pty"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def agent_worker_bin() -> str:
    found = Path(sys.executable).with_name("agent-worker")
    if found.exists():
        return str(found)
    which = shutil.which("agent-worker")
    assert which is not None, "agent-worker is not installed in the test environment"
    return which


class Terminal:
    """A `chat` process in a pty; ``expect`` runs without blocking the test's event loop."""

    def __init__(self, child: pexpect.spawn) -> None:
        self.child = child

    async def expect(self, pattern: str, timeout: float = 15) -> str:  # noqa: ASYNC109
        await self.child.expect(pattern, timeout=timeout, async_=True)
        return str(self.child.before) + str(self.child.after)

    def line(self, text: str) -> None:
        self.child.sendline(text)

    def output(self) -> str:
        return ANSI.sub("", self.child.before or "")


ChatFactory = Callable[..., Any]


@pytest.fixture
async def chat(ably_server: EmbeddedServer) -> AsyncIterator[ChatFactory]:
    spawned: list[pexpect.spawn] = []

    async def open_chat(client_id: str, *extra: str) -> Terminal:
        env = {**os.environ, "NO_COLOR": "1", "ABLY_KEY": ably_server.default_key}
        args = [
            "chat",
            CHANNEL,
            "--client-id",
            client_id,
            "--ably-endpoint",
            ably_server.endpoint,
            "--agent-url",
            "none",
            *extra,
        ]
        child = pexpect.spawn(
            agent_worker_bin(), args, env=env, encoding="utf-8", timeout=20, dimensions=(40, 200)
        )
        spawned.append(child)
        term = Terminal(child)
        await term.expect("type a message")
        return term

    yield open_chat
    for child in spawned:
        if child.isalive():
            child.sendline("/quit")
            try:
                await child.expect(pexpect.EOF, timeout=10, async_=True)
            except pexpect.TIMEOUT:
                child.terminate(force=True)
        child.close()


async def test_prompt_reply_stop_and_quit(ably_server: EmbeddedServer, chat: ChatFactory) -> None:
    """Type a prompt, watch the streamed reply, /who, Ctrl-C cancels, Ctrl-C again quits."""
    async with ScriptedAgent(ably_server, CHANNEL) as agent:
        alice = await chat("alice")
        bob = await chat("bob")
        alice.line("tell me a story")
        await bob.expect("alice> tell me a story")
        (trigger,) = await agent.wait_inputs(1)
        assert trigger.data == "tell me a story"
        run = await agent.open_run(trigger)
        await run.begin_text()
        await run.delta("Once upon")
        await alice.expect("assistant> Once upon")
        await bob.expect("assistant> Once upon")
        await run.delta(" a time")
        await bob.expect(" a time")

        bob.line("/who")
        await bob.expect(r"present: ([^\r\n]*)")
        assert "alice" in bob.child.match.group(1) and "bob" in bob.child.match.group(1)

        alice.child.sendintr()  # Ctrl-C: cancel the active (own) run
        await alice.expect("cancel requested")
        (cancel,) = await agent.wait_cancels(1)
        target = trigger.transport_headers["codec-message-id"]
        assert cancel.transport_headers["input-codec-message-id"] == target
        assert cancel.client_id == "alice"
        await run.cancel_streams()
        await run.end("cancelled")
        await alice.expect("⊘ cancelled")
        await bob.expect("⊘ cancelled")

        alice.child.sendintr()  # nothing runs now: Ctrl-C quits
        await alice.child.expect(pexpect.EOF, timeout=15, async_=True)
        alice.child.close()
        assert alice.child.exitstatus == 0


async def test_edit_and_regenerate_from_the_terminal(ably_server: EmbeddedServer, chat: ChatFactory) -> None:
    """/edit N and /regenerate publish the right inputs; the terminal follows the new branch."""
    async with ScriptedAgent(ably_server, CHANNEL) as agent:
        alice = await chat("alice")
        alice.line("what is 2+2")
        await alice.expect("#1 alice> what is 2\\+2")
        (prompt,) = await agent.wait_inputs(1)
        await (await agent.open_run(prompt)).reply("5")
        await alice.expect("assistant> 5")

        alice.line("/regenerate")
        regen = (await agent.wait_inputs(2))[-1]
        assert regen.codec_headers["kind"] == "regenerate"
        await (await agent.open_run(regen)).reply("4")
        await alice.expect("assistant> 4")

        alice.line("/edit 1 what is 3+3")
        await alice.expect("#1 alice> what is 3\\+3")
        edit = (await agent.wait_inputs(3))[-1]
        assert edit.transport_headers["fork-of"] == prompt.transport_headers["codec-message-id"]
        await (await agent.open_run(edit)).reply("6")
        await alice.expect("assistant> 6")

        alice.line("/edit 9 nope")
        await alice.expect("no message #9")
        alice.line("/bogus")
        await alice.expect("unknown command")
