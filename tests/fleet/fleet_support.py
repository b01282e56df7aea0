"""A fleet of ``agent-worker run --engine temporal`` processes on one task queue, over loopback.

Each worker is its own process (so it can be SIGKILLed) with an Ably clientId of its own
(``worker-<name>``), against an ``agent-worker server`` process and the Temporal dev server of
:mod:`tests.temporal_support`. Which worker runs a turn is asked of Temporal: the pending
activity's ``last_worker_identity`` is the Python SDK's default ``<pid>@<host>``.
"""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from temporalio.client import Client

from tests.temporal_support import TemporalDevServer
from tests.worker_procs import Proc, Server

__all__ = ["ECHO", "FAILOVER_S", "SCRIPTED", "FleetWorker", "running_worker_pid", "start_fleet_worker"]

ECHO = """
[provider]
name = "echo"
[providers.echo]
tokens_per_second = {tokens_per_second}
[tools]
enabled = []
"""
FAILOVER_S = 5.0
"""``heartbeat_timeout_s`` of the tests that SIGKILL a worker (how soon the other takes over)."""
SCRIPTED = "tests.fleet.scripted_agent:agent"
"""The rules-scripted agent target (rules in ``AW_FLEET_RULES``, see :mod:`tests.fleet.scripted_agent`)."""

ROOT = Path(__file__).resolve().parents[2]
_BASE = """
[ably]
client_id = "worker-{name}"
[worker]
drain_timeout_s = 0.3
log_format = "json"
[engine]
kind = "temporal"
heartbeat_timeout_s = {heartbeat_timeout_s}
[prompts]
system = ""
"""


@dataclass
class FleetWorker:
    name: str
    proc: Proc
    http: str

    @property
    def pid(self) -> int:
        return self.proc.proc.pid

    async def kill(self) -> None:
        await self.proc.kill()


async def start_fleet_worker(
    tmp_path: Path,
    server: Server,
    temporal: TemporalDevServer,
    queue: str,
    name: str,
    *,
    target: str | None = None,
    config: str = ECHO.format(tokens_per_second=20),
    heartbeat_timeout_s: float = 10.0,
    env: dict[str, str] | None = None,
) -> FleetWorker:
    """``agent-worker run [target] --engine temporal ...`` on ``queue``; returns once it serves.

    Heartbeats reach Temporal every min(0.8 x ``heartbeat_timeout_s``, 2 s), so a timeout of a
    couple of seconds on a loaded machine retries turns whose worker is alive but slow: tests that
    kill a worker use :data:`FAILOVER_S`, the others the shipped default."""
    path = tmp_path / f"worker-{name}.toml"
    path.write_text(_BASE.format(name=name, heartbeat_timeout_s=heartbeat_timeout_s) + config)
    args = [
        "run",
        *([target] if target else []),
        "--config", str(path),
        "--ably-endpoint", server.endpoint,
        "--key", server.key,
        "--http", "127.0.0.1:0",
        "--engine", "temporal",
        "--temporal-address", temporal.address,
        "--temporal-namespace", temporal.namespace,
        "--temporal-task-queue", queue,
    ]  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent_worker.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "AGENT_WORKER_PROVIDER": "", "AW_FLEET_WORKER": name, **(env or {})},
        cwd=ROOT,
    )
    proc = Proc(process)
    http = (await proc.find(r"POST (http://\S+)", timeout=120)).group(1)
    return FleetWorker(name, proc, http)


async def running_worker_pid(client: Client, workflow_id: str, activity: str = "runTurn") -> int:
    """The pid of the worker running the workflow's pending ``activity`` (waits for one)."""
    handle = client.get_workflow_handle(workflow_id)
    async with asyncio.timeout(60):
        while True:
            description = await handle.describe()
            for pending in description.raw_description.pending_activities:
                identity = pending.last_worker_identity
                if pending.activity_type.name == activity and identity:
                    return int(identity.split("@", 1)[0])
            await asyncio.sleep(0.1)  # Temporal has no push for this; poll its description
