"""Cancellation and failures: who may cancel, what a cancel closes, and errors mid-stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from structlog.testing import capture_logs

from agent_worker.errors import ProviderConnectionError
from agent_worker.protocol.headers import AI_OUTPUT, AI_RUN_START, AI_STEP_END, build_input_headers
from agent_worker.protocol.vercel.encoder import encode_user_message
from agent_worker.protocol.wire import InboundMessage
from agent_worker.providers.base import ModelRequest, StreamEvent
from agent_worker.providers.echo import ScriptedProvider
from agent_worker.runtime.run import CancelRequest
from tests.runtime.runtime_support import ChatClient, Harness


class SlowScript:
    """Yields ``words`` tokens with a pause between them and records how the stream ended."""

    def __init__(self, words: int = 400, pause: float = 0.01) -> None:
        self.words = words
        self.pause = pause
        self.produced = 0
        self.closed = asyncio.Event()
        self.started = asyncio.Event()

    async def __call__(self, request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
        try:
            for i in range(self.words):
                self.produced += 1
                self.started.set()
                yield f"w{i} "
                await asyncio.sleep(self.pause)
        finally:
            self.closed.set()


def stream_statuses(client: ChatClient, run_id: str) -> dict[str, str]:
    """Final ``status`` header of every streamed output of a run, by serial."""
    out: dict[str, str] = {}
    for m in client.run_wires(run_id):
        if m.name == AI_OUTPUT and m.transport_headers.get("stream") == "true" and m.serial:
            out.setdefault(m.serial, "streaming")
    for m in client.messages:
        if m.serial in out and m.action in ("message.append", "message.update"):
            status = m.transport_headers.get("status")
            if status:
                out[m.serial] = status
    return out


async def started_run(client: ChatClient, cmid: str) -> str:
    starts: list[InboundMessage] = await client.wait_for(lambda: client.for_input(AI_RUN_START, cmid))
    return starts[0].transport_headers["run-id"]


async def test_owner_cancel_by_input_id_closes_provider_and_streams(
    make_worker: Any, make_client: Any, session_name: str
) -> None:
    """The owner's ai-cancel (keyed by input-codec-message-id, like ClientRun.cancel) ends the run
    cancelled, closes the provider stream at once, and leaves no stream streaming."""
    script = SlowScript()
    harness: Harness = await make_worker(ScriptedProvider(script))
    client: ChatClient = await make_client()
    sent = await client.send_text("Tell me a long story")
    await harness.invoke(session_name, sent.event_id)
    run_id = await started_run(client, sent.codec_message_id)
    await client.wait_for(lambda: "w3" in client.run_text(run_id))
    await client.cancel(input_cmid=sent.codec_message_id)
    end = await client.run_end_for(sent.codec_message_id)
    assert end.transport_headers["run-reason"] == "cancelled"
    assert script.closed.is_set()
    produced_at_end = script.produced
    assert produced_at_end < script.words
    statuses = stream_statuses(client, run_id)
    assert statuses and set(statuses.values()) == {"cancelled"}
    step_end = [m for m in client.run_wires(run_id) if m.name == AI_STEP_END]
    assert step_end[-1].transport_headers["step-reason"] == "cancelled"
    assert not [m for m in client.run_wires(run_id) if m.codec_headers.get("kind") == "finish"]
    await harness.worker.run_until_idle()
    assert harness.worker.runs_cancelled == 1
    assert script.produced == produced_at_end  # no tokens pulled after the cancel


async def test_owner_cancel_by_run_id(make_worker: Any, make_client: Any, session_name: str) -> None:
    """``session.cancel(runId)`` sends only the run-id; it is routed just the same."""
    script = SlowScript()
    harness: Harness = await make_worker(ScriptedProvider(script))
    client: ChatClient = await make_client()
    sent = await client.send_text("story")
    await harness.invoke(session_name, sent.event_id)
    run_id = await started_run(client, sent.codec_message_id)
    await client.wait_for(lambda: "w2" in client.run_text(run_id))
    await client.cancel(run_id=run_id)
    end = await client.run_end_for(sent.codec_message_id)
    assert end.transport_headers["run-reason"] == "cancelled"


async def test_stranger_cancel_is_refused_and_logged(
    make_worker: Any, make_client: Any, session_name: str
) -> None:
    """A cancel from another verified clientId changes nothing: the run completes and the refusal
    is logged once and counted."""
    script = SlowScript(words=40, pause=0.005)
    harness: Harness = await make_worker(ScriptedProvider(script))
    owner: ChatClient = await make_client("user-abc")
    stranger: ChatClient = await make_client("mallory")
    sent = await owner.send_text("story")
    await harness.invoke(session_name, sent.event_id)
    run_id = await started_run(owner, sent.codec_message_id)
    with capture_logs() as logs:
        await stranger.cancel(run_id=run_id)
        end = await owner.run_end_for(sent.codec_message_id)
    assert end.transport_headers["run-reason"] == "complete"
    assert script.produced == script.words
    refused = [e for e in logs if e["event"] == "cancel_refused"]
    assert len(refused) == 1 and refused[0]["by"] == "mallory" and refused[0]["owner"] == "user-abc"
    metrics = harness.worker.metrics.render().decode()
    assert 'agent_worker_cancels_total{decision="refused"} 1.0' in metrics


async def test_admin_may_cancel_and_hooks_decide(
    make_worker: Any, make_client: Any, session_name: str
) -> None:
    """An admin clientId may cancel any run; a worker on_cancel hook (async) sees the raw message
    and the run, and its verdict overrides the default policy."""
    seen: list[tuple[str | None, str]] = []

    async def on_cancel(request: CancelRequest) -> bool | None:
        seen.append((request.message.client_id, request.run.run_id))
        if request.message.client_id == "support-bot":
            return True
        return None  # defer to the policy

    script = SlowScript()
    harness: Harness = await make_worker(
        ScriptedProvider(script), admin_client_ids=("ops-admin",), worker_kwargs={"on_cancel": on_cancel}
    )
    owner: ChatClient = await make_client("user-abc")
    admin: ChatClient = await make_client("ops-admin")
    bot: ChatClient = await make_client("support-bot")

    first = await owner.send_text("one")
    await harness.invoke(session_name, first.event_id)
    run1 = await started_run(owner, first.codec_message_id)
    await admin.cancel(run_id=run1)
    end1 = await owner.run_end_for(first.codec_message_id)
    assert end1.transport_headers["run-reason"] == "cancelled"

    second = await owner.send_text("two")
    await harness.invoke(session_name, second.event_id)
    run2 = await started_run(owner, second.codec_message_id)
    await bot.cancel(run_id=run2)
    end2 = await owner.run_end_for(second.codec_message_id)
    assert end2.transport_headers["run-reason"] == "cancelled"
    assert ("ops-admin", run1) in seen and ("support-bot", run2) in seen


async def test_early_cancel_is_buffered_until_the_trigger_is_located(
    make_worker: Any, make_client: Any, session_name: str
) -> None:
    """A cancel published before the agent knows the run (keyed by input-codec-message-id) is
    buffered; the run still opens with ai-run-start and then ends cancelled at once."""
    script = SlowScript()
    harness: Harness = await make_worker(ScriptedProvider(script), trigger_wait_s=5.0)
    client: ChatClient = await make_client()
    # Attach the worker to the session first (a warm session sees the cancel live).
    warmup = await client.send_text("warm up")
    await harness.invoke(session_name, warmup.event_id)
    wrun = await started_run(client, warmup.codec_message_id)
    await client.cancel(run_id=wrun)
    await client.run_end_for(warmup.codec_message_id)

    sent_cmid = "11111111-2222-3333-4444-555555555555"
    await client.cancel(input_cmid=sent_cmid)
    await asyncio.sleep(0.1)
    headers = build_input_headers(codec_message_id=sent_cmid, event_id="ev-early", run_client_id="user-abc")
    msgs = encode_user_message(
        {"id": "u1", "role": "user", "parts": [{"type": "text", "text": "x"}]}, headers
    )
    await client.send_raw(msgs[0].name or "", msgs[0].data, msgs[0].extras)
    await harness.invoke(session_name, "ev-early")
    end = await client.run_end_for(sent_cmid)
    assert end.transport_headers["run-reason"] == "cancelled"
    assert client.for_input(AI_RUN_START, sent_cmid)
    metrics = harness.worker.metrics.render().decode()
    assert 'agent_worker_cancels_total{decision="buffered"} 1.0' in metrics
    assert 'agent_worker_cancels_total{decision="honoured"} 2.0' in metrics


async def test_provider_error_mid_stream_ends_run_with_error(
    make_worker: Any, make_client: Any, session_name: str
) -> None:
    """A provider failure after some text ends the run ``error`` with code and message; the open
    stream is closed cancelled (never left streaming) and the step ends failed."""

    async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
        yield "Once "
        yield "upon "
        await asyncio.sleep(0.05)
        msg = "the vendor stream broke"
        raise ProviderConnectionError(msg)

    harness: Harness = await make_worker(ScriptedProvider(script))
    client: ChatClient = await make_client()
    sent = await client.send_text("story")
    _, body = await harness.invoke(session_name, sent.event_id)
    end = await client.run_end_for(sent.codec_message_id)
    h = end.transport_headers
    assert h["run-reason"] == "error"
    assert h["error-code"] == "104008"
    assert "the vendor stream broke" in h["error-message"]
    run_id = body["runId"]
    assert client.run_text(run_id) == "Once upon "
    assert set(stream_statuses(client, run_id).values()) == {"cancelled"}
    step_end = [m for m in client.run_wires(run_id) if m.name == AI_STEP_END]
    assert step_end[-1].transport_headers["step-reason"] == "failed"
    node = client.run_node(run_id)
    assert node is not None and node.status == "error" and node.error is not None
    assert node.error.code == 104008
    await harness.worker.run_until_idle()
    assert harness.worker.runs_failed == 1


async def test_provider_error_before_first_token(
    make_worker: Any, make_client: Any, session_name: str
) -> None:
    """A provider that fails to open ends the run with an error and publishes no output stream."""

    async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
        msg = "no route to vendor"
        raise ProviderConnectionError(msg)
        yield ""  # pragma: no cover - makes this an async generator

    harness: Harness = await make_worker(ScriptedProvider(script))
    client: ChatClient = await make_client()
    sent = await client.send_text("hi")
    _, body = await harness.invoke(session_name, sent.event_id)
    end = await client.run_end_for(sent.codec_message_id)
    assert end.transport_headers["run-reason"] == "error"
    assert "no route to vendor" in end.transport_headers["error-message"]
    assert stream_statuses(client, body["runId"]) == {}


async def test_per_run_sync_hook_wins_over_policy(
    make_worker: Any, make_client: Any, session_name: str
) -> None:
    """A per-run cancel hook (sync, set as the run is created) is asked first: here it refuses even
    the owner's cancel for a 'locked' run, and the run completes."""
    script = SlowScript(words=30, pause=0.005)
    asked: list[str] = []

    def locked(request: CancelRequest) -> bool:
        asked.append(request.run.run_id)
        return False

    def on_run_created(run: Any) -> None:
        run.on_cancel = locked

    harness: Harness = await make_worker(
        ScriptedProvider(script), worker_kwargs={"on_run_created": on_run_created}
    )
    client: ChatClient = await make_client()
    sent = await client.send_text("story")
    await harness.invoke(session_name, sent.event_id)
    run_id = await started_run(client, sent.codec_message_id)
    await client.cancel(run_id=run_id)
    end = await client.run_end_for(sent.codec_message_id)
    assert end.transport_headers["run-reason"] == "complete"
    assert asked == [run_id]
