"""A channel that loses continuity (re-attached without RESUMED) misses what was published while it
was down: on a watched channel the user inputs of that gap are read back from history and run once;
and a stale session rebuilt afterwards keeps the agent in presence (no leave, no re-enter)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from ably.types.presence import PresenceAction
from structlog.testing import capture_logs

from agent_worker.protocol.headers import AI_RUN_START
from agent_worker.protocol.wire import OutboundMessage
from agent_worker.providers.base import ModelRequest, StreamEvent
from agent_worker.providers.echo import EchoProvider, ScriptedProvider
from agent_worker.runtime import session as session_module
from agent_worker.server import EmbeddedServer
from agent_worker.server.testing import python_realtime
from agent_worker.transport.ably import AblyTransport
from tests.protocol.protocol_support import dump
from tests.runtime.runtime_support import ChatClient, gated_script, start_harness, worker_settings
from tests.server.server_support import eventually
from tests.worker.test_echo_off import history_tree

MakeClient = Callable[[], Any]


@pytest.mark.parametrize("echo", [False, True], ids=["echo-off", "echo-on"])
async def test_a_watched_channel_runs_the_inputs_published_while_it_lost_continuity(
    ably_server: EmbeddedServer, make_client: MakeClient, session_name: str, echo: bool
) -> None:
    """A watched, idle channel's connection is held down and cannot be resumed; the user sends a
    turn meanwhile (stored, delivered to no worker). After the reconnect the session reads the gap
    back from history and that turn gets its run, once; the turn answered before the loss is not
    run again — not even when the whole history is replayed through the gap path."""
    harness = await start_harness(
        ably_server, EchoProvider(), watch_channels=(session_name,), echo_messages=echo
    )
    try:
        client: ChatClient = await make_client()
        before = await client.send_text("answered before")
        answered = await client.run_end_for(before.codec_message_id)
        assert answered.transport_headers["run-reason"] == "complete"
        await harness.worker.run_until_idle()
        session = harness.worker.sessions[session_name]
        ably_server.hold_connections("agent-worker")  # its reconnect waits: the channel is down
        with capture_logs() as logs:
            assert ably_server.drop_connections("agent-worker", resume=False) == 1
            missed = await client.send_text("sent while down", parent=client.last_visible())
            ably_server.hold_connections("agent-worker", held=False)
            end = await client.run_end_for(missed.codec_message_id, wait_s=30)
            await harness.worker.run_until_idle()
        assert end.transport_headers["run-reason"] == "complete"
        assert client.run_text(end.transport_headers["run-id"]) == "sent while down"
        assert [e["count"] for e in logs if e["event"] == "continuity_gap_inputs"] == [1]
        assert session.stale
        # Replaying the whole channel (both inputs) through the gap path admits nothing again.
        attach_serial = session.channel.attach_serial
        assert attach_serial is not None
        with capture_logs() as logs:
            await session._read_gap("", attach_serial)
            await harness.worker.run_until_idle()
        assert [e["count"] for e in logs if e["event"] == "continuity_gap_inputs"] == [2]
        assert harness.worker.runs_completed == 2
        assert len(client.for_input(AI_RUN_START, before.codec_message_id)) == 1
        assert len(client.for_input(AI_RUN_START, missed.codec_message_id)) == 1
        assert len(client.named(AI_RUN_START)) == 2
    finally:
        await harness.close()


async def test_a_watched_channel_that_never_carried_a_message_reads_its_gap_too(
    ably_server: EmbeddedServer, make_client: MakeClient, session_name: str
) -> None:
    """The channel's first message ever is sent while the worker's connection is down: the gap
    starts at the attach point of the watch (nothing was seen live) and the turn gets its run."""
    harness = await start_harness(ably_server, EchoProvider(), watch_channels=(session_name,))
    try:
        client: ChatClient = await make_client()
        ably_server.hold_connections("agent-worker")
        assert ably_server.drop_connections("agent-worker", resume=False) == 1
        missed = await client.send_text("first ever")
        ably_server.hold_connections("agent-worker", held=False)
        end = await client.run_end_for(missed.codec_message_id, wait_s=30)
        await harness.worker.run_until_idle()
        assert client.run_text(end.transport_headers["run-id"]) == "first ever"
        assert harness.worker.runs_completed == 1
    finally:
        await harness.close()


@pytest.mark.parametrize("cause", ["doubt", "continuity"])
async def test_a_stale_rebuild_keeps_the_agent_in_presence(
    ably_server: EmbeddedServer, make_client: MakeClient, session_name: str, cause: str
) -> None:
    """The session goes stale (an append to a message that is not one of its streams, which echo
    off cannot fold exactly; or a connection lost without resume), and the next turn rebuilds it: an
    observer sees the agent's presence updated for the new run, and no leave (nor a second enter)
    from the agent's first enter to the end of that run."""
    gate = asyncio.Event()
    provider = ScriptedProvider(gated_script("held ", gate, "done", only_for="two"))
    harness = await start_harness(ably_server, provider)
    observer = python_realtime(ably_server, client_id="observer")
    seen: list[tuple[Any, dict[str, Any] | None]] = []
    changed = asyncio.Event()

    def on_presence(msg: Any) -> None:
        if msg.client_id == "agent-worker":
            seen.append((msg.action, msg.data))
            changed.set()

    async def until_seen(predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(15):
            while not predicate():
                changed.clear()
                await changed.wait()

    def re_entered() -> bool:
        actions = [action for action, _ in seen]
        left = actions.index(PresenceAction.LEAVE) if PresenceAction.LEAVE in actions else len(actions)
        return PresenceAction.ENTER in actions[left:]

    try:
        await observer.channels.get(session_name).presence.subscribe(on_presence)
        client: ChatClient = await make_client()
        one = await client.send_text("one")
        await harness.invoke(session_name, one.event_id)
        await client.run_end_for(one.codec_message_id)
        await until_seen(lambda: any(action == PresenceAction.ENTER for action, _ in seen))
        first = harness.worker.sessions[session_name]
        if cause == "doubt":
            serial = await harness.worker.transport.channel(session_name).publish(  # type: ignore[union-attr]
                OutboundMessage("note", "x", {})
            )
            assert serial is not None
            await first.channel.append(serial, OutboundMessage(None, "y", {}))
        else:
            assert ably_server.drop_connections("agent-worker", resume=False) == 1
            await eventually(lambda: first.stale and first.channel.state == "attached", within=15.0)
            # The lost connection's member is removed by the server (the connection is gone) and
            # the SDK re-enters on the new one (RTP17): that is the loss, not the rebuild.
            await until_seen(re_entered)
        assert first.stale
        mark = len(seen)
        with capture_logs() as logs:
            two = await client.send_text("two", parent=client.last_visible())
            _, body = await harness.invoke(session_name, two.event_id)
            await until_seen(lambda: any(d and d.get("runId") == body["runId"] for _, d in seen[mark:]))
            gate.set()
            end = await client.run_end_for(two.codec_message_id)
        assert end.transport_headers["run-reason"] == "complete"
        assert harness.worker.sessions[session_name] is not first
        actions = [action for action, _ in seen]
        assert PresenceAction.LEAVE not in actions[mark:]
        assert actions[mark:].count(PresenceAction.ENTER) == 0
        assert [e["attach"] for e in logs if e["event"] == "session_rebuilt"] == ["kept"]
        prompt = [(m.role, getattr(m, "text", None)) for m in provider.requests[-1].messages]
        assert prompt == [("user", "one"), ("assistant", "ok"), ("user", "two")]
    finally:
        await harness.close()
        await observer.close()


@pytest.mark.parametrize("echo", [False, True], ids=["echo-off", "echo-on"])
@pytest.mark.parametrize("when", ["mid-stream", "idle"])
async def test_a_stale_watched_session_is_rebuilt_before_its_next_run(
    ably_server: EmbeddedServer, make_client: MakeClient, session_name: str, echo: bool, when: str
) -> None:
    """A watched channel's connection is dropped without resume — while a reply streams (its
    later messages then fold before its start) or between turns. Once its runs are over, the next
    input's run starts on a session rebuilt from history (as an invoked one's would): its prompt
    holds the whole conversation, each message once, and its tree equals the history fold."""

    async def words(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
        for word in request.messages[-1].text.split():  # type: ignore[union-attr]
            yield word + " "
            await asyncio.sleep(0.01)

    provider = ScriptedProvider(words)
    harness = await start_harness(ably_server, provider, watch_channels=(session_name,), echo_messages=echo)
    reader = AblyTransport(worker_settings(ably_server, client_id="reader", echo_messages=True))
    await reader.connect()
    try:
        client: ChatClient = await make_client()
        one = await client.send_text("one")
        await client.run_end_for(one.codec_message_id)
        long = " ".join(f"z{i}" for i in range(80))
        first = harness.worker.sessions[session_name]
        with capture_logs() as logs:
            two = await client.send_text(long, parent=client.last_visible())
            if when == "mid-stream":
                starts = await client.wait_for(lambda: client.for_input(AI_RUN_START, two.codec_message_id))
                run_id = starts[0].transport_headers["run-id"]
                await client.wait_for(lambda: len(client.run_text(run_id)) > 40)
                assert ably_server.drop_connections("agent-worker", resume=False) == 1
            end = await client.run_end_for(two.codec_message_id, wait_s=60)
            assert end.transport_headers["run-reason"] == "complete"
            await harness.worker.run_until_idle()
            if when == "idle":
                assert ably_server.drop_connections("agent-worker", resume=False) == 1
            await eventually(lambda: first.stale and first.channel.state == "attached", within=15.0)
            assert harness.worker.sessions[session_name] is first  # nothing rebuilt it yet
            three = await client.send_text("three", parent=client.last_visible())
            end = await client.run_end_for(three.codec_message_id, wait_s=60)
            await harness.worker.run_until_idle()
        assert end.transport_headers["run-reason"] == "complete"
        assert [e["attach"] for e in logs if e["event"] == "session_rebuilt"] == ["kept"]
        session = harness.worker.sessions[session_name]
        assert session is not first and not session.stale and session.watch
        prompt = [(m.role, getattr(m, "text", None)) for m in provider.requests[-1].messages]
        assert prompt == [
            ("user", "one"),
            ("assistant", "one "),
            ("user", long),
            ("assistant", long + " "),
            ("user", "three"),
        ]
        assert harness.worker.runs_completed == 3
        assert len(client.named(AI_RUN_START)) == 3
        expected = dump(await history_tree(reader, session_name))
        await eventually(lambda: dump(session.tree) == expected, within=15.0)  # the last ACKs may trail
    finally:
        await harness.close()
        await reader.close()


@pytest.mark.parametrize("fillers", [5, 4], ids=["past-the-bound", "at-the-bound"])
async def test_a_gap_longer_than_the_read_bound_is_read_from_its_newest_end_and_logged(
    ably_server: EmbeddedServer, make_client: MakeClient, session_name: str, monkeypatch: Any, fillers: int
) -> None:
    """The gap read is bounded (GAP_PAGES pages, shortened here to two of 3 messages): a watched
    channel's outage carrying more than that is read from its newest end — the input sent last gets
    its run, the one sent first (beyond the bound) does not — and the truncation is logged once,
    with its numbers. A gap that just fits is read whole, and nothing is logged."""
    monkeypatch.setattr(session_module, "GAP_PAGES", 2)
    monkeypatch.setattr(session_module, "GAP_PAGE_SIZE", 3)
    monkeypatch.setattr(session_module, "GAP_LATER_PAGE_SIZE", 3)
    harness = await start_harness(ably_server, EchoProvider(), watch_channels=(session_name,))
    try:
        client: ChatClient = await make_client()
        before = await client.send_text("answered before")  # older history beyond the gap
        await client.run_end_for(before.codec_message_id)
        await harness.worker.run_until_idle()
        ably_server.hold_connections("agent-worker")
        with capture_logs() as logs:
            assert ably_server.drop_connections("agent-worker", resume=False) == 1
            early = await client.send_text("sent first", parent=None)
            for i in range(fillers):
                await client.send_raw("note", f"filler {i}", None)
            late = await client.send_text("sent last", parent=None)
            ably_server.hold_connections("agent-worker", held=False)
            end = await client.run_end_for(late.codec_message_id, wait_s=30)
            await harness.worker.run_until_idle()
        assert client.run_text(end.transport_headers["run-id"]) == "sent last"
        truncated = [e for e in logs if e["event"] == "continuity_gap_truncated"]
        if fillers == 4:  # 6 messages: two pages
            assert truncated == []
            assert len(client.for_input(AI_RUN_START, early.codec_message_id)) == 1
            assert harness.worker.runs_completed == 3
            return
        assert len(truncated) == 1
        assert (truncated[0]["pages"], truncated[0]["messages"]) == (2, 6)
        assert truncated[0]["read_back_to"] > truncated[0]["gap_from"]
        assert client.for_input(AI_RUN_START, early.codec_message_id) == []
        assert harness.worker.runs_completed == 2
    finally:
        ably_server.hold_connections("agent-worker", held=False)
        await harness.close()
