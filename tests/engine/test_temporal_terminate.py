"""An operator terminates a stuck turn: its worker was SIGKILLed mid-stream, so no step runs that
could end the run (terminate runs no workflow code). Another worker's sweep finds the termination
and ends the run for every client. Real processes: ``agent-worker server``, ``agent-worker run
--engine temporal``, a Temporal dev server, ably-python as the device."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import Client

from tests.temporal_support import TemporalDevServer, task_queue
from tests.worker.test_crash_journal import CONFIG, LONG
from tests.worker_procs import Device, Proc, Server, spawn, start_server

pytestmark = pytest.mark.timeout(240)


async def start_temporal_worker(
    tmp_path: Path, server: Server, temporal: TemporalDevServer, queue: str
) -> tuple[Proc, str]:
    config = tmp_path / "worker.toml"
    config.write_text(CONFIG)
    proc = await spawn(
        "run", "--config", str(config), "--ably-endpoint", server.endpoint, "--key", server.key,
        "--http", "127.0.0.1:0", "--engine", "temporal", "--temporal-address", temporal.address,
        "--temporal-task-queue", queue,
    )  # fmt: skip
    http = (await proc.find(r"POST (http://\S+)")).group(1)
    await proc.find(r"engine: temporal")
    return proc, http


async def test_terminating_a_stuck_turn_ends_its_run(
    tmp_path: Path, temporal_server: TemporalDevServer
) -> None:
    server_proc, server = await start_server()
    queue = task_queue("terminate")
    worker, http = await start_temporal_worker(tmp_path, server, temporal_server, queue)
    device = Device(server, "conversations:terminate")
    procs = [server_proc, worker]
    try:
        await device.attach()
        run_id = await device.prompt(http, LONG)
        await device.until(
            lambda: device.streaming(run_id) and len(device.text(run_id)) > 20, "streamed text"
        )
        await worker.kill()
        partial = device.text(run_id)
        client = await Client.connect(temporal_server.address, namespace=temporal_server.namespace)
        await client.get_workflow_handle(run_id).terminate("the worker is gone")  # run id = workflow id
        run = device.tree.run(run_id)
        assert run is not None and run.status == "active"

        successor, _ = await start_temporal_worker(tmp_path, server, temporal_server, queue)
        procs.append(successor)
        await device.until(lambda: device.tree.run(run_id).status != "active", "the run to end", timeout=90)  # type: ignore[union-attr]
        run = device.tree.run(run_id)
        assert run is not None and run.status == "error"
        assert run.error is not None and "terminated" in (run.error.message or "")
        await device.until(lambda: not device.streaming(run_id), "the stream to close")
        assert device.text(run_id).startswith(partial)
        await successor.find(r"run_reaped")
    finally:
        await device.client.close()
        for p in reversed(procs):
            await p.kill()
