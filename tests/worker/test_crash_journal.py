"""Local mode survives its own crash: SIGKILL of ``agent-worker run`` or of the Ably server mid-stream.

Real processes over loopback: ``agent-worker server`` (the embedded server as its own process),
``agent-worker run`` with a crash journal (``--state-dir``), ably-python as one device and the
official ``@ably/ai-transport`` client (``tests/js/client/fold.mjs``) as a late joiner.
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
import pytest
from ably import AblyRealtime
from ably.types.message import Message

from agent_worker.protocol.headers import build_input_headers
from agent_worker.protocol.tree import ConversationTree
from agent_worker.protocol.vercel.encoder import encode_user_message
from agent_worker.runtime.journal import ERROR_WORKER_RESTARTED
from agent_worker.server.testing import RemoteServer, python_realtime
from agent_worker.transport.ably import to_inbound
from tests.node_support import JS_ROOT, node_config, run_node_async

FOLD = JS_ROOT / "client" / "fold.mjs"
SESSION = "conversations:crash"
LONG = " ".join(f"word{i}" for i in range(200))  # the echo provider streams it for ~25 s
CONFIG = """
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


async def start_worker(tmp_path: Path, server: Server, state_dir: Path) -> tuple[Proc, str]:
    config = tmp_path / "worker.toml"
    config.write_text(CONFIG)
    proc = await spawn(
        "run",
        "--config",
        str(config),
        "--ably-endpoint",
        server.endpoint,
        "--key",
        server.key,
        "--http",
        "127.0.0.1:0",
        "--state-dir",
        str(state_dir),
    )
    http = (await proc.find(r"POST (http://\S+)")).group(1)
    await proc.find(r"crash journal: " + re.escape(str(state_dir)))
    return proc, http


class Device:
    """One ably-python device on the session, folding live traffic into a conversation tree."""

    def __init__(self, server: Server) -> None:
        self.client: AblyRealtime = python_realtime(server, client_id="alice")
        self.channel = self.client.channels.get(SESSION)
        self.tree = ConversationTree()
        self.streams: dict[str, tuple[str, str]] = {}
        """serial → (run-id, latest ``status`` header) of every stream message seen."""
        self._arrived = asyncio.Event()

    async def attach(self) -> None:
        def on_message(msg: Message) -> None:
            inbound = to_inbound(msg)
            self.tree.apply(inbound)
            headers = inbound.transport_headers
            if headers.get("stream") == "true" and inbound.serial:
                self.streams[inbound.serial] = (headers.get("run-id", ""), headers.get("status", ""))
            self._arrived.set()

        await self.channel.subscribe(on_message)

    async def prompt(self, http: str, text: str) -> str:
        cmid, eid = str(uuid.uuid4()), str(uuid.uuid4())
        headers = build_input_headers(codec_message_id=cmid, event_id=eid, run_client_id="alice")
        parts = encode_user_message(
            {"id": cmid, "role": "user", "parts": [{"type": "text", "text": text}]}, headers
        )
        await self.channel.publish([Message(name=m.name, data=m.data, extras=m.extras) for m in parts])
        async with (
            aiohttp.ClientSession() as session,
            session.post(http, json={"inputEventId": eid, "sessionName": SESSION}) as resp,
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


async def folded_history(server: Server, port: int) -> dict[str, Any]:
    """The official client's view of the whole session, loaded from history (a late joiner)."""
    token = server.mint_token(
        client_id="viewer", capability={"conversations:*": ["subscribe", "history"]}, ttl_s=600
    )
    env = node_config(host="127.0.0.1", port=port, session=SESSION, token=token, mode="history")
    result: dict[str, Any] = await run_node_async(FOLD, env=env, timeout=90)
    return result


@pytest.mark.node
@pytest.mark.timeout(300)
async def test_sigkill_worker_mid_stream_restart_closes_the_run(tmp_path: Path) -> None:
    """A SIGKILLed worker leaves its run streaming; its successor (same --state-dir) ends it —
    closing append ``cancelled``, ``ai-run-end`` error "worker restarted" — before it serves; a
    second worker on that state dir refuses to start; a new prompt in the session works."""
    server_proc, server = await start_server()
    port = int(server.endpoint.rsplit(":", 1)[1])
    state = tmp_path / "state"
    worker, http = await start_worker(tmp_path, server, state)
    device = Device(server)
    procs = [server_proc, worker]
    try:
        await device.attach()
        run_id = await device.prompt(http, LONG)
        await device.until(
            lambda: device.streaming(run_id) and len(device.text(run_id)) > 20, "streamed text"
        )
        await worker.kill()
        partial = device.text(run_id)
        run = device.tree.run(run_id)
        assert run is not None and run.status == "active" and device.streaming(run_id), "killed mid-stream"

        successor, http = await start_worker(tmp_path, server, state)
        procs.append(successor)
        # The banner comes after recovery: the run-end is already ACKed by the server.
        await device.until(lambda: device.tree.run(run_id).status != "active", "the run to end")  # type: ignore[union-attr]
        run = device.tree.run(run_id)
        assert run is not None and run.status == "error"
        assert run.error is not None and run.error.code == ERROR_WORKER_RESTARTED
        assert "restarted" in (run.error.message or "")
        await device.until(lambda: not device.streaming(run_id), "the stream to close")
        assert device.text(run_id).startswith(partial), "the partial reply is kept"

        config = str(tmp_path / "worker.toml")
        rival = await spawn(
            "run", "--config", config, "--ably-endpoint", server.endpoint, "--key", server.key,
            "--http", "127.0.0.1:0", "--state-dir", str(state),
        )  # fmt: skip
        procs.append(rival)
        await rival.find(r"another agent-worker process \(pid \d+\) is using the state dir")
        assert await asyncio.wait_for(rival.proc.wait(), 60) == 1

        again = await device.prompt(http, "still there?")
        await device.until(
            lambda: (r := device.tree.run(again)) is not None and r.status == "complete", "reply"
        )
        assert device.text(again) == "still there?"

        result = await folded_history(server, port)
        statuses = {r["runId"]: r["status"] for r in result["runs"]}
        assert statuses[again] == "complete"
        assert statuses[run_id] not in ("active", "streaming")
        assert "active" not in statuses.values()
    finally:
        await device.client.close()
        for p in reversed(procs):
            await p.kill()


@pytest.mark.node
@pytest.mark.timeout(300)
async def test_sigkill_server_mid_stream_worker_reconnects_and_no_run_stays_open(tmp_path: Path) -> None:
    """The Ably server (``--data-dir``) is SIGKILLed mid-stream and restarted on its port: the worker
    reconnects by itself, the interrupted run ends (closed by the run or by the journal's sweep),
    and the worker answers the next prompt."""
    data = tmp_path / "data"
    server_proc, server = await start_server(data_dir=data)
    port = int(server.endpoint.rsplit(":", 1)[1])
    worker, http = await start_worker(tmp_path, server, tmp_path / "state")
    device = Device(server)
    procs = [server_proc, worker]
    try:
        await device.attach()
        run_id = await device.prompt(http, LONG)
        await device.until(
            lambda: device.streaming(run_id) and len(device.text(run_id)) > 20, "streamed text"
        )
        await server_proc.kill()
        await device.client.close()
        server_proc, _ = await start_server(port=port, data_dir=data)
        procs.append(server_proc)

        viewer = Device(server)
        try:
            await viewer.attach()

            async def statuses() -> dict[str, str]:
                result = await folded_history(server, port)
                return {r["runId"]: r["status"] for r in result["runs"]}

            try:
                # ably-python reconnects after its retry timeout and a lost ACK fails after the
                # transport's ACK timeout: tens of seconds, so wait generously.
                async with asyncio.timeout(180):
                    while (await statuses()).get(run_id, "active") == "active":  # noqa: ASYNC110
                        await asyncio.sleep(1)  # another process's view: nothing to wait on here
            except TimeoutError:
                tail = "".join(worker.lines)[-4000:]
                msg = f"the run stayed open; worker log:\n{tail}"
                raise AssertionError(msg) from None
            again = await viewer.prompt(http, "after the outage")
            await viewer.until(
                lambda: (r := viewer.tree.run(again)) is not None and r.status == "complete", "reply"
            )
            assert viewer.text(again) == "after the outage"
            final = await statuses()
            assert final[again] == "complete"
            assert "active" not in final.values(), final
        finally:
            await viewer.client.close()
    finally:
        for p in reversed(procs):
            await p.kill()
