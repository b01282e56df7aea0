"""Temporal mode keeps local mode's other behaviours: steering, channel watch (deduplicated across
workers), concurrent runs, and invocation auth (a caller's POST for someone else's input)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agent_worker.protocol.headers import AI_OUTPUT, AI_RUN_END, AI_RUN_START
from agent_worker.protocol.model import UserMessage
from agent_worker.providers.base import ModelRequest, StreamEvent
from agent_worker.providers.echo import EchoProvider, ScriptedProvider
from agent_worker.server import EmbeddedServer
from tests.engine.conftest import MakeWorker
from tests.runtime.runtime_support import ChatClient
from tests.temporal_support import task_queue

pytestmark = pytest.mark.timeout(180)


async def test_steering_reaches_the_run_in_its_activity(
    make_temporal_worker: MakeWorker, make_client: Any, session_name: str
) -> None:
    """A steer (ai-input with the run-id, no POST) folds into the run executing in runTurn: another
    pass answers it, stamped with the steer."""
    gate = asyncio.Event()

    async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
        last = request.messages[-1]
        assert isinstance(last, UserMessage)
        if last.text == "write a poem":
            yield "Roses are red, "
            await gate.wait()
            yield "violets are blue."
        else:
            yield f"OK: {last.text}"

    provider = ScriptedProvider(script)
    harness = await make_temporal_worker(provider)
    client: ChatClient = await make_client()
    sent = await client.send_text("write a poem")
    _, body = await harness.invoke(session_name, sent.event_id)
    run_id = body["runId"]
    await client.wait_for(lambda: "Roses" in client.run_text(run_id), wait_s=60)
    steer = await client.send_text("make it about cats", run_id=run_id)
    await asyncio.sleep(0.2)
    gate.set()
    end = await client.run_end_for(sent.codec_message_id, wait_s=60)
    assert end.transport_headers["run-reason"] == "complete"
    assert len(provider.requests) == 2
    assert client.run_text(run_id).endswith("OK: make it about cats")
    stamped = [
        m
        for m in client.run_wires(run_id)
        if m.name == AI_OUTPUT and m.transport_headers.get("steer-codec-message-ids")
    ]
    assert stamped and all(
        steer.codec_message_id in m.transport_headers["steer-codec-message-ids"] for m in stamped
    )


async def test_watched_input_starts_one_workflow_across_watching_workers(
    make_temporal_worker: MakeWorker, make_client: Any, session_name: str
) -> None:
    """Two workers of one fleet watch the session: a fresh input is answered once (both start the
    same workflow id; Temporal keeps one), and a POST of it later names that run."""
    queue = task_queue()
    first = await make_temporal_worker(EchoProvider(), queue=queue, watch_channels=(session_name,))
    await make_temporal_worker(EchoProvider(), queue=queue, watch_channels=(session_name,))
    client: ChatClient = await make_client()
    sent = await client.send_text("watched hello")
    end = await client.run_end_for(sent.codec_message_id, wait_s=60)
    assert end.transport_headers["run-reason"] == "complete"
    status, body = await first.invoke(session_name, sent.event_id)
    assert status == 200 and body["runId"] == end.transport_headers["run-id"]
    await asyncio.sleep(1.0)
    assert len(client.for_input(AI_RUN_START, sent.codec_message_id)) == 1
    assert len(client.for_input(AI_RUN_END, sent.codec_message_id)) == 1
    assert client.run_text(body["runId"]) == "watched hello"


async def test_concurrent_runs_each_get_their_own_reply(
    make_temporal_worker: MakeWorker, make_client: Any, session_name: str
) -> None:
    harness = await make_temporal_worker(EchoProvider(tokens_per_second=200))
    a: ChatClient = await make_client("alice")
    b: ChatClient = await make_client("bob", session=f"{session_name}-b")
    texts = [f"message number {i} with several words in it" for i in range(4)]
    sent_a = [await a.send_text(t, parent=None) for t in texts]
    sent_b = [await b.send_text(t.upper(), parent=None) for t in texts]
    results = await asyncio.gather(
        *(harness.invoke(session_name, s.event_id) for s in sent_a),
        *(harness.invoke(f"{session_name}-b", s.event_id) for s in sent_b),
    )
    assert all(status == 200 for status, _ in results)
    assert len({body["runId"] for _, body in results}) == 8
    for client, sent, expected in ((a, sent_a, texts), (b, sent_b, [t.upper() for t in texts])):
        for s, text in zip(sent, expected, strict=True):
            end = await client.run_end_for(s.codec_message_id, wait_s=60)
            assert end.transport_headers["run-reason"] == "complete"
            assert client.run_text(end.transport_headers["run-id"]) == text
    await harness.worker.wait_for_runs(8, limit_s=60)
    assert harness.worker.runs_completed == 8


async def test_a_caller_cannot_start_a_run_on_someone_elses_input(
    make_temporal_worker: MakeWorker, make_client: Any, session_name: str, ably_server: EmbeddedServer
) -> None:
    """An authenticated caller's invocation names an input another clientId published: openRun
    refuses it and nothing is published; the owner's own invocation of it then runs (a refused
    workflow fails, so the same input may be started again)."""
    harness = await make_temporal_worker(EchoProvider())
    owner: ChatClient = await make_client("user-abc")
    sent = await owner.send_text("mine")
    refused = await harness.worker.invoke(session_name, sent.event_id, caller_client_id="mallory")
    await asyncio.sleep(2.0)
    assert owner.for_input(AI_RUN_START, sent.codec_message_id) == []
    accepted = await harness.worker.invoke(session_name, sent.event_id, caller_client_id="user-abc")
    assert accepted.run_id == refused.run_id  # one invocation id per input; a new workflow run
    end = await owner.run_end_for(sent.codec_message_id, wait_s=60)
    assert end.transport_headers["run-reason"] == "complete"
    assert owner.run_text(accepted.run_id) == "mine"


async def test_a_refused_input_ends_its_run_with_the_error_once(
    make_temporal_worker: MakeWorker, make_client: Any, session_name: str
) -> None:
    """An oversized trigger: openRun opens the run and ends it with the error (as local mode); the
    workflow completes, so a retried POST names the same run and publishes nothing again."""
    harness = await make_temporal_worker(EchoProvider(), max_input_bytes=1000)
    client: ChatClient = await make_client()
    sent = await client.send_text("x" * 5000)
    _, body = await harness.invoke(session_name, sent.event_id)

    def ends() -> list[Any]:
        return [m for m in client.named(AI_RUN_END) if m.transport_headers.get("run-id") == body["runId"]]

    end = (await client.wait_for(ends, wait_s=60))[0]
    assert end.transport_headers["run-reason"] == "error"
    assert "the limit is 1000" in end.transport_headers["error-message"]
    await asyncio.sleep(1.0)
    _, again = await harness.invoke(session_name, sent.event_id)
    assert again == body
    await asyncio.sleep(1.5)
    starts = [m for m in client.named(AI_RUN_START) if m.transport_headers.get("run-id") == body["runId"]]
    assert len(starts) == 1
    assert len(ends()) == 1
