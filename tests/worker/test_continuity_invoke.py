"""An HTTP invocation for an input the client published while the worker's connection was down
(re-attached without RESUMED afterwards): its trigger is only in history, before the new attach
point. The run waiting to locate it is woken by the continuity gap read and runs once, with the
whole branch in its prompt; an event id that never existed is still refused with 104010."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

from agent_worker.protocol.headers import AI_RUN_START
from agent_worker.providers.echo import EchoProvider, ScriptedProvider
from agent_worker.runtime import session as session_module
from agent_worker.server import EmbeddedServer
from tests.runtime.runtime_support import ChatClient, gated_script, start_harness
from tests.server.server_support import eventually

MakeClient = Callable[[], Any]


async def _answered_turn(harness: Any, client: ChatClient, session_name: str, text: str) -> None:
    """A turn invoked and answered before the outage, so the worker has a session attached."""
    sent = await client.send_text(text)
    await harness.invoke(session_name, sent.event_id)
    await client.run_end_for(sent.codec_message_id)
    await harness.worker.run_until_idle()


def _outage(ably_server: EmbeddedServer) -> None:
    """The worker's connection drops and cannot resume; its reconnect waits (the channel is down)."""
    ably_server.hold_connections("agent-worker")
    assert ably_server.drop_connections("agent-worker", resume=False) == 1


def _ran_once(end: Any, run_id: str, logs: list[Any], harness: Any, *, client: ChatClient, cmid: str) -> None:
    """The invocation's run completed, once, with nothing refused: the second run of the session."""
    assert end.transport_headers["run-reason"] == "complete"
    assert end.transport_headers["run-id"] == run_id
    assert not [e for e in logs if e["event"] == "run_refused"]
    assert harness.worker.runs_completed == 2
    assert len(client.for_input(AI_RUN_START, cmid)) == 1


def _prompt(provider: ScriptedProvider) -> list[tuple[str, str | None]]:
    return [(m.role, getattr(m, "text", None)) for m in provider.requests[-1].messages]


@pytest.mark.parametrize("echo", [False, True], ids=["echo-off", "echo-on"])
async def test_an_invocation_for_an_input_sent_during_an_outage_runs_once(
    ably_server: EmbeddedServer, make_client: MakeClient, session_name: str, echo: bool
) -> None:
    """The worker's connection is held down and cannot be resumed; the user sends a turn (stored,
    delivered to no worker) and POSTs its invocation. The run pages the history it can see (up to
    the old attach point: the input is not there) and waits; the connection comes back without
    RESUMED and the gap read finds the input: the run completes once, its prompt the whole branch."""
    provider = ScriptedProvider(gated_script("ok"))
    # Generous: the run must be woken by the gap read, not by its wait running out.
    harness = await start_harness(ably_server, provider, trigger_wait_s=60.0, echo_messages=echo)
    try:
        client: ChatClient = await make_client()
        await _answered_turn(harness, client, session_name, "answered before")
        session = harness.worker.sessions[session_name]
        with capture_logs() as logs:
            _outage(ably_server)
            missed = await client.send_text("sent while down", parent=client.last_visible())
            status, body = await harness.invoke(session_name, missed.event_id)
            assert status == 200
            # The run has read all the history it could (the input is not in it) and waits.
            await eventually(
                lambda: missed.event_id in session._waiting and session._history_exhausted, within=30.0
            )
            ably_server.hold_connections("agent-worker", held=False)
            end = await client.run_end_for(missed.codec_message_id, wait_s=60)
            await harness.worker.run_until_idle()
        _ran_once(end, body["runId"], logs, harness, client=client, cmid=missed.codec_message_id)
        assert len(client.named(AI_RUN_START)) == 2
        prompt = _prompt(provider)
        assert prompt == [("user", "answered before"), ("assistant", "ok"), ("user", "sent while down")]
    finally:
        await harness.close()


async def test_an_invocation_for_an_event_that_never_existed_is_refused_across_an_outage(
    ably_server: EmbeddedServer, make_client: MakeClient, session_name: str
) -> None:
    """The same outage, but the invocation names an event id nobody published: the gap read finds
    nothing for it, the run ends with 104010 and publishes nothing; the worker serves the next turn."""
    harness = await start_harness(ably_server, EchoProvider(), trigger_wait_s=0.5)
    try:
        client: ChatClient = await make_client()
        await _answered_turn(harness, client, session_name, "one")
        with capture_logs() as logs:
            _outage(ably_server)
            missed = await client.send_text("sent while down", parent=client.last_visible())
            status, body = await harness.invoke(session_name, str(uuid.uuid4()))
            assert status == 200
            ably_server.hold_connections("agent-worker", held=False)
            await harness.worker.wait_for_runs(2, limit_s=60)
        refused = [e for e in logs if e["event"] == "run_refused"]
        assert len(refused) == 1 and refused[0]["code"] == 104010
        assert client.run_wires(body["runId"]) == []
        # The input sent during the outage is still there to be invoked (not watched: no run yet).
        assert client.for_input(AI_RUN_START, missed.codec_message_id) == []
        await harness.invoke(session_name, missed.event_id)
        end = await client.run_end_for(missed.codec_message_id, wait_s=60)
        assert end.transport_headers["run-reason"] == "complete"
        assert client.run_text(end.transport_headers["run-id"]) == "sent while down"
    finally:
        await harness.close()


async def test_a_history_read_overtaken_by_the_re_attach_does_not_end_the_history(
    ably_server: EmbeddedServer, make_client: MakeClient, session_name: str, monkeypatch: Any
) -> None:
    """The run's history read (up to the old attach point) is still in flight when the channel
    re-attaches without RESUMED, and only then runs out: that must not mark the history from the
    new attach point as read, else the run's prompt misses the turns before the outage."""
    provider = ScriptedProvider(gated_script("ok"))
    harness = await start_harness(ably_server, provider, trigger_wait_s=60.0)
    try:
        client: ChatClient = await make_client()
        await _answered_turn(harness, client, session_name, "answered before")
        session = harness.worker.sessions[session_name]
        old_attach = session.channel.attach_serial
        real = session.channel.history_pages
        gate, held = asyncio.Event(), asyncio.Event()
        calls = 0

        async def history_pages(**kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            first = calls == 1
            async for page in real(**kwargs):
                yield page
            if first:  # the old cursor runs out only after the re-attach
                held.set()
                await gate.wait()

        monkeypatch.setattr(session.channel, "history_pages", history_pages)
        # As for a long conversation, whose session has not paged its history to the end: the
        # run's locate reads pages up to the old attach point (through the gated reader).
        session._history, session._history_exhausted = None, False
        _outage(ably_server)
        missed = await client.send_text("sent while down", parent=client.last_visible())
        status, _ = await harness.invoke(session_name, missed.event_id)
        assert status == 200
        await eventually(held.is_set, within=30.0)
        ably_server.hold_connections("agent-worker", held=False)
        await eventually(lambda: session.channel.attach_serial != old_attach and session.stale, within=30.0)
        gate.set()
        end = await client.run_end_for(missed.codec_message_id, wait_s=60)
        assert end.transport_headers["run-reason"] == "complete"
        prompt = _prompt(provider)
        assert prompt == [("user", "answered before"), ("assistant", "ok"), ("user", "sent while down")]
    finally:
        await harness.close()


@pytest.mark.parametrize("echo", [False, True], ids=["echo-off", "echo-on"])
async def test_an_outage_longer_than_the_trigger_wait_does_not_end_the_run(
    ably_server: EmbeddedServer, make_client: MakeClient, session_name: str, echo: bool
) -> None:
    """The invocation comes first and its run waits for the input live; the worker's connection
    drops (no resume) and the user publishes the input meanwhile. The outage outlasts
    ``trigger_wait_s``: while the channel is down the wait does not run out, and once it is back
    the gap read finds the input — the run completes once, with the whole branch in its prompt."""
    wait_s = 0.5
    provider = ScriptedProvider(gated_script("ok"))
    harness = await start_harness(ably_server, provider, trigger_wait_s=wait_s, echo_messages=echo)
    try:
        client: ChatClient = await make_client()
        await _answered_turn(harness, client, session_name, "answered before")
        session = harness.worker.sessions[session_name]
        event_id = str(uuid.uuid4())
        with capture_logs() as logs:
            status, body = await harness.invoke(session_name, event_id)
            assert status == 200
            _outage(ably_server)
            missed = await client.send_text(
                "sent while down", parent=client.last_visible(), event_id=event_id
            )
            await asyncio.sleep(4 * wait_s)  # the outage outlasts the trigger wait
            assert event_id in session._waiting  # still waiting, not refused
            ably_server.hold_connections("agent-worker", held=False)
            end = await client.run_end_for(missed.codec_message_id, wait_s=60)
            await harness.worker.run_until_idle()
        _ran_once(end, body["runId"], logs, harness, client=client, cmid=missed.codec_message_id)
        prompt = _prompt(provider)
        assert prompt == [("user", "answered before"), ("assistant", "ok"), ("user", "sent while down")]
    finally:
        ably_server.hold_connections("agent-worker", held=False)
        await harness.close()


async def test_an_outage_past_the_overall_bound_ends_the_run_with_104010(
    ably_server: EmbeddedServer, make_client: MakeClient, session_name: str, monkeypatch: Any
) -> None:
    """Nothing waits forever: with the outage bound shortened, a run whose channel stays down
    longer than ``trigger_wait_s`` plus that bound ends with 104010 and publishes nothing."""
    monkeypatch.setattr(session_module, "OUTAGE_WAIT_S", 0.5)
    harness = await start_harness(ably_server, EchoProvider(), trigger_wait_s=0.5)
    try:
        client: ChatClient = await make_client()
        await _answered_turn(harness, client, session_name, "one")
        with capture_logs() as logs:
            _outage(ably_server)
            status, body = await harness.invoke(session_name, str(uuid.uuid4()))
            assert status == 200
            await harness.worker.wait_for_runs(2, limit_s=60)  # ended while the channel is down
        refused = [e for e in logs if e["event"] == "run_refused"]
        assert len(refused) == 1 and refused[0]["code"] == 104010
        ably_server.hold_connections("agent-worker", held=False)
        assert client.run_wires(body["runId"]) == []
    finally:
        ably_server.hold_connections("agent-worker", held=False)
        await harness.close()
