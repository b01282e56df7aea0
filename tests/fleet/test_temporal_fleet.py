"""A fleet under Temporal (issue 10 item 5): two ``agent-worker run --engine temporal`` processes on
one task queue, an ``agent-worker server`` process and the Temporal dev server, all over loopback.

* SIGKILL of the worker streaming a run: the run's turn is retried on the other worker after the
  heartbeat timeout, under the same step id, and the official client's transcript holds the
  provider's text exactly once, with exactly one ``ai-run-end``.
* 200 invocations over both workers, half of them POSTed twice (once to each worker): exactly 200
  runs, each ended once, and a duplicate answers with its first POST's ids.
* An approval suspends a run on one worker; that worker is gone when the user approves, and the
  other one resumes the run to its end.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from ably.types.message import Message
from temporalio.client import Client

from agent_worker.server.testing import python_realtime
from agent_worker.transport.ably import to_inbound
from tests.conformance.conformance_support import CLIENT_CAPABILITY, JS_ROOT
from tests.fleet.fleet_support import (
    ECHO,
    FAILOVER_S,
    SCRIPTED,
    FleetWorker,
    running_worker_pid,
    start_fleet_worker,
)
from tests.node_support import node_config, run_node_async
from tests.temporal_support import TemporalDevServer, dev_server, task_queue
from tests.worker_procs import Device, Proc, Server, folded_history, publish_prompt, start_server

pytestmark = [pytest.mark.node, pytest.mark.timeout(400)]

TURNS = JS_ROOT / "temporal" / "turns.mjs"
LONG = " ".join(f"word{i}" for i in range(160))  # the echo provider streams it for ~8 s


class Fleet:
    """The processes of one test; killed at the end whatever happened."""

    def __init__(self, tmp_path: Path, temporal: TemporalDevServer) -> None:
        self.tmp_path = tmp_path
        self.temporal = temporal
        self.queue = task_queue("fleet")
        self.server_proc: Proc | None = None
        self.server: Server | None = None
        self.workers: dict[str, FleetWorker] = {}

    async def start(self) -> Server:
        self.server_proc, self.server = await start_server()
        return self.server

    async def worker(self, name: str, **kwargs: Any) -> FleetWorker:
        assert self.server is not None
        worker = await start_fleet_worker(
            self.tmp_path, self.server, self.temporal, self.queue, name, **kwargs
        )
        self.workers[name] = worker
        return worker

    async def close(self) -> None:
        for worker in self.workers.values():
            await worker.kill()
        if self.server_proc is not None:
            await self.server_proc.kill()


@pytest.fixture
async def fleet(tmp_path: Path, temporal_server: TemporalDevServer) -> Any:
    fleet = Fleet(tmp_path, temporal_server)
    try:
        yield fleet
    finally:
        await fleet.close()


async def temporal_client(server: TemporalDevServer) -> Client:
    return await Client.connect(server.address, namespace=server.namespace)


def assistant_texts(folded: dict[str, Any]) -> list[str]:
    return [
        "".join(str(p.get("text", "")) for p in m["message"]["parts"] if p.get("type") == "text")
        for m in folded["messages"]
        if m["message"]["role"] == "assistant"
    ]


async def turn_attempts(client: Client, workflow_id: str) -> list[tuple[int, str]]:
    """``(attempt, worker identity)`` of the ``runTurn`` attempt that finished, from the finished
    workflow's history (Temporal records only the last attempt of a retried activity)."""
    handle = client.get_workflow_handle(workflow_id)
    async with asyncio.timeout(60):
        await handle.result()
    history = await handle.fetch_history()
    scheduled: dict[int, str] = {}
    attempts: list[tuple[int, str]] = []
    for event in history.events:
        if event.HasField("activity_task_scheduled_event_attributes"):
            scheduled[event.event_id] = event.activity_task_scheduled_event_attributes.activity_type.name
        elif event.HasField("activity_task_started_event_attributes"):
            started = event.activity_task_started_event_attributes
            if scheduled.get(started.scheduled_event_id) == "runTurn":
                attempts.append((started.attempt, started.identity))
    return attempts


async def test_sigkill_of_the_streaming_worker_continues_the_run_on_the_other(
    fleet: Fleet, temporal_server: TemporalDevServer
) -> None:
    server = await fleet.start()
    a, b = await asyncio.gather(*(fleet.worker(n, heartbeat_timeout_s=FAILOVER_S) for n in "ab"))
    client = await temporal_client(temporal_server)
    session = f"conversations:fleet-kill-{uuid.uuid4().hex[:6]}"
    device = Device(server, session)
    try:
        await device.attach()
        run_id = await device.prompt(a.http, LONG)
        await device.until(lambda: device.streaming(run_id) and len(device.text(run_id)) > 20, "text")
        pid = await running_worker_pid(client, run_id)
        victim, survivor = (a, b) if pid == a.pid else (b, a)
        assert pid == victim.pid, f"the turn runs in pid {pid}, not in one of the fleet's workers"
        await victim.kill()

        await device.until(lambda: device.status(run_id) == "complete", "the run to complete", 120)
        assert device.text(run_id) == LONG
        assert device.run_ends == {run_id: 1}
        attempts = await turn_attempts(client, run_id)
        assert len(attempts) == 1 and attempts[0][0] == 2, attempts
        assert attempts[0][1].startswith(f"{survivor.pid}@"), "the second attempt ran on the survivor"

        folded = await folded_history(server, session)
        assert [r["status"] for r in folded["runs"]] == ["complete"]
        assert assistant_texts(folded) == [LONG], "the provider's text, exactly once"
        assert folded["errors"] == []
    finally:
        await device.client.close()


class Sessions:
    """One ably-python client on many sessions: publishes prompts, counts run starts and ends."""

    def __init__(self, server: Server, names: list[str]) -> None:
        self.client = python_realtime(server, client_id="alice")
        self.channels = {name: self.client.channels.get(name) for name in names}
        self.started: set[str] = set()
        self.ends: dict[str, int] = {}
        self.enders: set[str] = set()
        self.changed = asyncio.Event()

    async def attach(self) -> None:
        def on_message(msg: Message) -> None:
            inbound = to_inbound(msg)
            run_id = inbound.transport_headers.get("run-id", "")
            if inbound.name == "ai-run-start":
                self.started.add(run_id)
            elif inbound.name == "ai-run-end":
                self.ends[run_id] = self.ends.get(run_id, 0) + 1
                self.enders.add(str(msg.client_id))
            self.changed.set()

        for channel in self.channels.values():
            await channel.subscribe(on_message)

    async def publish(self, session: str, text: str) -> str:
        return await publish_prompt(self.channels[session], text, "alice")

    async def until_ended(self, count: int, timeout: float) -> None:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            while len(self.ends) < count:
                self.changed.clear()
                await self.changed.wait()


async def post(http: aiohttp.ClientSession, url: str, session: str, event_id: str) -> dict[str, Any]:
    async with http.post(url, json={"inputEventId": event_id, "sessionName": session}) as resp:
        assert resp.status == 200, await resp.text()
        answer: dict[str, Any] = await resp.json()
        return answer


async def test_200_invocations_half_posted_twice_make_exactly_200_runs(
    fleet: Fleet, temporal_server: TemporalDevServer
) -> None:
    server = await fleet.start()
    fast = ECHO.replace("tokens_per_second = {tokens_per_second}\n", "").format()
    a, b = await asyncio.gather(fleet.worker("a", config=fast), fleet.worker("b", config=fast))
    names = [f"conversations:fleet-many-{uuid.uuid4().hex[:6]}-{i}" for i in range(20)]
    sessions = Sessions(server, names)
    limit = asyncio.Semaphore(16)
    try:
        await sessions.attach()

        async def invoke(i: int) -> tuple[dict[str, Any], ...]:
            session = names[i % len(names)]
            async with limit:
                event_id = await sessions.publish(session, f"prompt {i}")
                first, second = (a, b) if i % 2 else (b, a)
                if i % 4 < 2:  # half of them: once to each worker, at the same time
                    return tuple(
                        await asyncio.gather(
                            post(http, first.http, session, event_id),
                            post(http, second.http, session, event_id),
                        )
                    )
                return (await post(http, first.http, session, event_id),)

        async with aiohttp.ClientSession() as http:
            answers = await asyncio.gather(*(invoke(i) for i in range(200)))
        for pair in answers:
            assert all(x == pair[0] for x in pair), f"a duplicate POST answered differently: {pair}"
            assert pair[0]["runId"] == pair[0]["invocationId"]
        run_ids = {pair[0]["runId"] for pair in answers}
        assert len(run_ids) == 200

        await sessions.until_ended(200, timeout=300)
        assert sessions.started == run_ids
        assert set(sessions.ends) == run_ids
        assert set(sessions.ends.values()) == {1}, "every run ended exactly once"
        client = await temporal_client(temporal_server)
        count = await client.count_workflows(f"TaskQueue = '{fleet.queue}'")
        assert count.count == 200
    finally:
        await sessions.client.close()


APPROVAL_RULES = [
    {
        "if": {"toolResults": 0},
        "then": [
            {"text": "Let me notify them."},
            {"tool": {"id": "call_n", "name": "send_notification", "input": {"message": "hi"}}},
        ],
    },
    {"if": {"toolResults": 1}, "then": [{"text": "Done."}]},
]


async def test_approval_suspended_on_one_worker_resumes_on_the_other(
    fleet: Fleet, temporal_server: TemporalDevServer
) -> None:
    """Worker a suspends the run on the approval request; before the user answers, a is SIGKILLed
    and b started, so the continuation (POSTed to b) can only run there."""
    server = await fleet.start()
    env = {"AW_FLEET_RULES": json.dumps(APPROVAL_RULES)}
    a = await fleet.worker("a", target=SCRIPTED, config="", env=env)
    session = f"conversations:fleet-approval-{uuid.uuid4().hex[:6]}"
    token = server.mint_token(client_id="alice", capability=CLIENT_CAPABILITY, ttl_s=600)
    swapped: list[FleetWorker] = []

    async def on_control(request: dict[str, Any]) -> dict[str, Any]:
        assert request["op"] == "swap"
        swapped.append(await fleet.worker("b", target=SCRIPTED, config="", env=env))
        await a.kill()
        return {"ok": True, "api": swapped[0].http}

    env_node = node_config(
        host="127.0.0.1",
        port=server.port,
        protocol="msgpack",
        session=session,
        tokens={"alice": token},
        turns=[
            {"api": a.http, "text": "Notify my phone"},
            {"api": a.http, "approve": True, "before": "swap"},  # swap answers with b's URL
        ],
    )
    result = await run_node_async(
        JS_ROOT / "temporal" / "turns.mjs", env=env_node, timeout=360, on_control=on_control
    )
    view = [(m["role"], m["text"]) for m in result["a"]["view"]]
    assert view == [("user", "Notify my phone"), ("assistant", "Let me notify them."), ("assistant", "Done.")]
    tools = [p for m in result["a"]["view"] for p in m["parts"] if p["type"] == "tool-send_notification"]
    assert [(t["state"], t["output"]) for t in tools] == [("output-available", "notification sent: hi")]
    assert [r["status"] for r in result["a"]["runs"]] == ["complete"]
    lifecycle = [(m["name"], m["clientId"]) for m in result["wire"] if m["name"].startswith("ai-run")]
    assert lifecycle == [
        ("ai-run-start", "worker-a"),
        ("ai-run-suspend", "worker-a"),
        ("ai-run-resume", "worker-b"),
        ("ai-run-end", "worker-b"),
    ]


async def test_the_only_worker_killed_mid_stream_a_new_one_continues_the_run(
    fleet: Fleet, temporal_server: TemporalDevServer
) -> None:
    """No other worker at the time of the SIGKILL: the reply waits; the next worker to start on the
    task queue continues it (text once, one ``ai-run-end``)."""
    server = await fleet.start()
    a = await fleet.worker("a", heartbeat_timeout_s=FAILOVER_S)
    session = f"conversations:fleet-alone-{uuid.uuid4().hex[:6]}"
    device = Device(server, session)
    try:
        await device.attach()
        run_id = await device.prompt(a.http, LONG)
        await device.until(lambda: device.streaming(run_id) and len(device.text(run_id)) > 20, "text")
        await a.kill()
        assert device.status(run_id) == "active"
        await fleet.worker("b", heartbeat_timeout_s=FAILOVER_S)
        await device.until(lambda: device.status(run_id) == "complete", "the run to complete", 120)
        assert device.text(run_id) == LONG
        assert device.run_ends == {run_id: 1}
    finally:
        await device.client.close()


async def test_temporal_down_the_streaming_run_ends_and_new_posts_get_503(tmp_path: Path) -> None:
    """The Temporal server dies mid-stream: the turn in flight finishes in its worker and ends its
    run; a POST while Temporal is down is refused with 503 / 50300, and no run starts."""
    with dev_server() as temporal:
        fleet = Fleet(tmp_path, temporal)
        try:
            server = await fleet.start()
            a = await fleet.worker("a")
            session = f"conversations:fleet-down-{uuid.uuid4().hex[:6]}"
            device = Device(server, session)
            try:
                await device.attach()
                run_id = await device.prompt(a.http, LONG)
                await device.until(lambda: device.streaming(run_id) and len(device.text(run_id)) > 20, "text")
                temporal.process.kill()
                temporal.process.wait()
                await device.until(lambda: device.status(run_id) == "complete", "the run to complete", 120)
                assert device.text(run_id) == LONG
                assert device.run_ends == {run_id: 1}

                event_id = await publish_prompt(device.channel, "anyone there?", "alice")
                async with (
                    aiohttp.ClientSession() as http,
                    http.post(a.http, json={"inputEventId": event_id, "sessionName": session}) as resp,
                ):
                    assert resp.status == 503, await resp.text()
                    assert (await resp.json())["error"]["code"] == 50300
                assert list(device.run_ends) == [run_id], "no run started"
            finally:
                await device.client.close()
        finally:
            await fleet.close()
