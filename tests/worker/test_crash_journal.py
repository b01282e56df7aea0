"""Local mode survives its own crash: SIGKILL of ``agent-worker run`` or of the Ably server mid-stream.

Real processes over loopback: ``agent-worker server`` (the embedded server as its own process),
``agent-worker run`` with a crash journal (``--state-dir``), ably-python as one device and the
official ``@ably/ai-transport`` client (``tests/js/client/fold.mjs``) as a late joiner.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from agent_worker.runtime.journal import ERROR_WORKER_RESTARTED
from tests.worker_procs import Device, Proc, Server, folded_history, spawn, start_server

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


@pytest.mark.node
@pytest.mark.timeout(300)
async def test_sigkill_worker_mid_stream_restart_closes_the_run(tmp_path: Path) -> None:
    """A SIGKILLed worker leaves its run streaming; its successor (same --state-dir) ends it —
    closing append ``cancelled``, ``ai-run-end`` error "worker restarted" — before it serves; a
    second worker on that state dir refuses to start; a new prompt in the session works."""
    server_proc, server = await start_server()
    state = tmp_path / "state"
    worker, http = await start_worker(tmp_path, server, state)
    device = Device(server, SESSION)
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

        result = await folded_history(server, SESSION)
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
    device = Device(server, SESSION)
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

        viewer = Device(server, SESSION)
        try:
            await viewer.attach()

            async def statuses() -> dict[str, str]:
                result = await folded_history(server, SESSION)
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
