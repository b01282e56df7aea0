"""Real processes over loopback for crash and fleet tests: ``agent-worker server`` / ``run`` as
subprocesses (:func:`spawn`, :class:`Proc`), an ably-python device on a session that folds live
traffic into a conversation tree (:class:`Device`), and the official ``@ably/ai-transport`` client's
view of a session loaded from history (:func:`folded_history`, ``tests/js/client/fold.mjs``).
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from ably import AblyRealtime
from ably.types.message import Message

from agent_worker.protocol.headers import build_input_headers
from agent_worker.protocol.tree import ConversationTree
from agent_worker.protocol.vercel.encoder import encode_user_message
from agent_worker.server.testing import RemoteServer, python_realtime
from agent_worker.transport.ably import to_inbound
from tests.node_support import JS_ROOT, node_config, run_node_async

__all__ = ["FOLD", "Device", "Proc", "Server", "folded_history", "publish_prompt", "spawn", "start_server"]

FOLD = JS_ROOT / "client" / "fold.mjs"


class Server(RemoteServer):
    """An ``agent-worker server`` process's endpoint, and the key a worker uses."""

    def __init__(self, endpoint: str, key: str) -> None:
        super().__init__(endpoint, key)
        self.key = key


class Proc:
    """A CLI subprocess whose stdout lines are collected in the background."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._new = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.lines.append(line.decode(errors="replace"))
            self._new.set()
        self._new.set()

    async def find(self, pattern: str, timeout: float = 60) -> re.Match[str]:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            while True:
                for line in self.lines:
                    if m := re.search(pattern, line):
                        return m
                if self._reader.done():
                    msg = f"process exited before printing {pattern!r}:\n{''.join(self.lines)[-3000:]}"
                    raise AssertionError(msg)
                self._new.clear()
                await self._new.wait()

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()
        await self._reader


async def spawn(*args: str) -> Proc:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent_worker.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "AGENT_WORKER_PROVIDER": ""},
    )
    return Proc(proc)


async def start_server(port: int = 0, data_dir: Path | None = None) -> tuple[Proc, Server]:
    args = ["server", "--port", str(port)]
    if data_dir is not None:
        args += ["--data-dir", str(data_dir)]
    proc = await spawn(*args)
    endpoint = (await proc.find(r"^endpoint: (\S+)")).group(1)
    key = (await proc.find(r"^key: (\S+)")).group(1)
    return proc, Server(endpoint, key)


async def publish_prompt(channel: Any, text: str, client_id: str) -> str:
    """Publishes a user message (Vercel codec) as ``client_id`` would; returns its event id."""
    cmid, eid = str(uuid.uuid4()), str(uuid.uuid4())
    headers = build_input_headers(codec_message_id=cmid, event_id=eid, run_client_id=client_id)
    parts = encode_user_message(
        {"id": cmid, "role": "user", "parts": [{"type": "text", "text": text}]}, headers
    )
    await channel.publish([Message(name=m.name, data=m.data, extras=m.extras) for m in parts])
    return eid


class Device:
    """One ably-python device on the session, folding live traffic into a conversation tree."""

    def __init__(self, server: Server, session: str, client_id: str = "alice") -> None:
        self.session = session
        self.client_id = client_id
        self.client: AblyRealtime = python_realtime(server, client_id=client_id)
        self.channel = self.client.channels.get(session)
        self.tree = ConversationTree()
        self.streams: dict[str, tuple[str, str]] = {}
        """serial → (run-id, latest ``status`` header) of every stream message seen."""
        self.run_ends: dict[str, int] = {}
        """run-id → how many ``ai-run-end`` were seen for it."""
        self._arrived = asyncio.Event()

    async def attach(self) -> None:
        def on_message(msg: Message) -> None:
            inbound = to_inbound(msg)
            self.tree.apply(inbound)
            headers = inbound.transport_headers
            if headers.get("stream") == "true" and inbound.serial:
                self.streams[inbound.serial] = (headers.get("run-id", ""), headers.get("status", ""))
            if inbound.name == "ai-run-end":
                run_id = headers.get("run-id", "")
                self.run_ends[run_id] = self.run_ends.get(run_id, 0) + 1
            self._arrived.set()

        await self.channel.subscribe(on_message)

    async def prompt(self, http: str, text: str) -> str:
        eid = await publish_prompt(self.channel, text, self.client_id)
        async with (
            aiohttp.ClientSession() as session,
            session.post(http, json={"inputEventId": eid, "sessionName": self.session}) as resp,
        ):
            assert resp.status == 200, await resp.text()
            return str((await resp.json())["runId"])

    async def until(self, predicate: Callable[[], bool], what: str, timeout: float = 60) -> None:  # noqa: ASYNC109
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            msg = f"timed out waiting for {what}"
            raise AssertionError(msg) from None

    def status(self, run_id: str) -> str | None:
        """The run's status in this device's fold (``None``: not seen yet)."""
        run = self.tree.run(run_id)
        return None if run is None else run.status

    def streaming(self, run_id: str) -> bool:
        return any(rid == run_id and status == "streaming" for rid, status in self.streams.values())

    def text(self, run_id: str) -> str:
        run = self.tree.run(run_id)
        assert run is not None
        return "".join(
            str(part.get("text", ""))
            for m in run.messages
            for part in m.message.get("parts", [])
            if part.get("type") == "text"
        )


async def folded_history(server: Server, session: str) -> dict[str, Any]:
    """The official client's view of the whole session, loaded from history (a late joiner)."""
    token = server.mint_token(
        client_id="viewer", capability={"conversations:*": ["subscribe", "history"]}, ttl_s=600
    )
    env = node_config(host="127.0.0.1", port=server.port, session=session, token=token, mode="history")
    result: dict[str, Any] = await run_node_async(FOLD, env=env, timeout=90)
    return result
