"""Echo off (``[ably] echo_messages = false``, the worker's default): the worker's connection does not
receive its own messages; its session folds them from what it sent and their ACKs
(transport/local.py). The tree must come out as the echo-on fold would have it: an observer session
on a second, echo-on connection (the worker's clientId, attached before the conversation starts)
folds the same channel from the echoes, and the two trees are compared node by node — and against a
tree folded from the channel's history."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from ably.types.message import Message
from structlog.testing import capture_logs

from agent_worker.protocol.headers import AI_RUN_START, AI_STEP_START
from agent_worker.protocol.tree import ConversationTree
from agent_worker.protocol.wire import OutboundMessage
from agent_worker.providers.base import ModelRequest, StreamEvent
from agent_worker.providers.echo import ScriptedProvider
from agent_worker.runtime.session import AgentSession
from agent_worker.server import EmbeddedServer
from agent_worker.tools.base import Tool
from agent_worker.tools.registry import ToolRegistry
from agent_worker.transport.ably import AblyTransport
from tests.protocol.protocol_support import dump
from tests.runtime.runtime_support import (
    ChatClient,
    Harness,
    gated_script,
    sdk_nacks,
    start_harness,
    worker_settings,
)
from tests.runtime.test_run_tools import get_weather, weather_script

MakeClient = Callable[[], Awaitable[ChatClient]]


def texts(tree: ConversationTree) -> list[tuple[str, list[str]]]:
    """Each node's messages as their text parts joined."""
    return [
        (node.key, ["".join(p.get("text", "") for p in m.message.get("parts", [])) for m in node.messages])
        for node in tree.nodes()
    ]


async def history_tree(transport: AblyTransport, session: str) -> ConversationTree:
    """The channel folded from its whole history (oldest first), as a fresh session would."""
    pages = [page async for page in transport.channel(session).history_pages(page_size=1000)]
    tree = ConversationTree()
    for page in reversed(pages):
        tree.apply_all(reversed(page))
    return tree


class Script:
    """One scripted model for every turn: plain text, a tool call, a long reply to cancel, and a
    reply whose second append the server refuses (repaired by a full-text update)."""

    def __init__(self) -> None:
        self.refuse = asyncio.Event()
        self.refused = asyncio.Event()
        self.long_started = asyncio.Event()
        self.nacks: Any = None

    async def __call__(self, request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
        text = getattr(request.messages[-1], "text", None)
        if text == "weather" or text is None:  # None: the tool's result came back
            async for event in weather_script(request):
                yield event
        elif text == "long":
            for i in range(400):
                yield f"w{i} "
                if i == 3:
                    self.long_started.set()
                await asyncio.sleep(0.01)
        elif text == "repair":
            yield "alpha "
            await self.refuse.wait()
            yield "beta "  # NACKed
            await self.nacks.wait()
            yield "gamma "
            yield "delta"
        else:
            for word in f"you said {text}".split():
                yield word + " "


async def _turn(harness: Harness, client: ChatClient, session: str, text: str) -> str:
    sent = await client.send_text(text)
    await harness.invoke(session, sent.event_id)
    end = await client.run_end_for(sent.codec_message_id, wait_s=60)
    return str(end.transport_headers["run-reason"])


async def _until(predicate: Callable[[], bool], wait_s: float = 15.0) -> None:
    """Polls ``predicate`` (two sessions folding on their own connections: no one event to await)."""
    async with asyncio.timeout(wait_s):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def _observer(server: EmbeddedServer, session: str) -> tuple[AblyTransport, AgentSession]:
    transport = AblyTransport(worker_settings(server, echo_messages=True))
    await transport.connect()
    observer = AgentSession(await transport.open_channel(session), agent_client_id="agent-worker")
    await observer.connect()
    return transport, observer


@pytest.mark.parametrize("rollup", [None, 0], ids=["rollup-default", "rollup-0"])
async def test_echo_off_tree_equals_the_echo_on_fold(
    ably_server: EmbeddedServer, make_client: MakeClient, session_name: str, rollup: int | None
) -> None:
    """Several turns — text, a server tool call, a cancelled run, a NACKed append repaired by a
    full-text update — leave the worker's (echo off) tree equal to an echo-on observer's and to the
    tree folded from history; the next turn's prompt holds every turn; and the worker's connection
    received none of its own messages. With the server's rollup (default) most appends' ACKs
    carry no version serial; with it off each does."""
    script = Script()
    provider = ScriptedProvider(script)
    obs_transport, observer = await _observer(ably_server, session_name)
    harness = await start_harness(
        ably_server,
        provider,
        tools=ToolRegistry([Tool.from_function(get_weather)]),
        coalesce_window_ms=0.0,
        append_rollup_window_ms=rollup,  # 0: every append's ACK carries its version serial
    )
    try:
        with sdk_nacks() as nacks:
            script.nacks = nacks
            client = await make_client()
            assert await _turn(harness, client, session_name, "hello") == "complete"
            own: list[Message] = []
            mine = harness.worker.sessions[session_name].channel
            manager = mine.client.connection.connection_manager
            await mine.client.channels.get(session_name).subscribe(
                lambda m: own.append(m) if m.connection_id == manager.connection_id else None
            )
            assert await _turn(harness, client, session_name, "weather") == "complete"
            sent = await client.send_text("long")
            await harness.invoke(session_name, sent.event_id)
            await script.long_started.wait()
            await client.cancel(input_cmid=sent.codec_message_id)
            end = await client.run_end_for(sent.codec_message_id, wait_s=60)
            assert end.transport_headers["run-reason"] == "cancelled"
            sent = await client.send_text("repair")
            _, body = await harness.invoke(session_name, sent.event_id)
            await client.wait_for(lambda: client.run_text(body["runId"]) == "alpha ")
            assert ably_server.refuse_appends("agent-worker") == 2  # the worker, the observer
            script.refuse.set()
            end = await client.run_end_for(sent.codec_message_id, wait_s=60)
            assert end.transport_headers["run-reason"] == "complete"
            assert client.run_text(body["runId"]) == "alpha beta gamma delta"
            assert await _turn(harness, client, session_name, "next") == "complete"
        worker_session = harness.worker.sessions[session_name]
        assert worker_session.channel.local is not None  # echo off
        expected = dump(await history_tree(obs_transport, session_name))  # the run has ended
        await _until(lambda: dump(worker_session.tree) == expected)  # the last ACKs may trail
        await _until(lambda: dump(observer.tree) == expected)  # and the last echoes
        assert not worker_session.stale
        prompt = [(m.role, getattr(m, "text", None)) for m in provider.requests[-1].messages]
        assert prompt == [
            ("user", "hello"),
            ("assistant", "you said hello "),
            ("user", "weather"),
            ("assistant", ""),
            ("tool", None),
            ("assistant", "It is 21°C in Paris."),
            ("user", "repair"),  # the cancelled turn is not on this branch (the client's choice)
            ("assistant", "alpha beta gamma delta"),
            ("user", "next"),
        ]
        assert own == []  # not one of its own messages came back
    finally:
        await harness.close()
        await observer.close()
        await obs_transport.close()


@pytest.mark.parametrize("echo", [False, True], ids=["echo-off", "echo-on"])
@pytest.mark.parametrize("when", ["mid-stream", "between-runs", "step-start"])
async def test_after_a_continuity_loss_the_tree_is_the_history_fold(
    ably_server: EmbeddedServer, make_client: MakeClient, session_name: str, echo: bool, when: str
) -> None:
    """The worker's connection is dropped without resume — mid-stream, between two runs, or while
    a step-start awaits its ACK (it reaches the server; the SDK re-sends it on the new connection):
    the session is marked stale, the run in flight completes (mid-stream, through the writer's
    full-text repair), and the next invocation gets a rebuilt session whose whole tree — statuses,
    serials, step framing, text — equals the history fold, with echo on as with echo off."""
    go = asyncio.Event()

    async def words(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
        text = request.messages[-1].text  # type: ignore[union-attr]
        if text == "gated":
            await go.wait()
        for word in text.split():
            yield word + " "
            await asyncio.sleep(0.01)

    provider = ScriptedProvider(words)
    harness = await start_harness(ably_server, provider, coalesce_window_ms=0.0, echo_messages=echo)
    reader = AblyTransport(worker_settings(ably_server, client_id="reader", echo_messages=True))
    await reader.connect()
    try:
        client = await make_client()
        text = " ".join(f"z{i}" for i in range(80)) if when == "mid-stream" else "gated"
        with capture_logs() as logs:
            sent = await client.send_text(text)
            _, body = await harness.invoke(session_name, sent.event_id)
            run_id = body["runId"]
            first = harness.worker.sessions[session_name]
            if when == "mid-stream":
                await client.wait_for(lambda: len(client.run_text(run_id)) > 40)
                assert ably_server.drop_connections("agent-worker", resume=False) == 1
            elif when == "step-start":
                await client.wait_for(lambda: client.for_input(AI_RUN_START, sent.codec_message_id))
                assert ably_server.withhold_acks("agent-worker") == 1
                go.set()
                await client.wait_for(lambda: any(m.name == AI_STEP_START for m in client.run_wires(run_id)))
                assert ably_server.drop_connections("agent-worker", resume=False) == 1
            else:
                go.set()
            end = await client.run_end_for(sent.codec_message_id, wait_s=60)
            assert end.transport_headers["run-reason"] == "complete"
            if when == "between-runs":
                assert not first.stale
                assert ably_server.drop_connections("agent-worker", resume=False) == 1
            await _until(lambda: first.stale)  # the non-resumed re-attach (mid-run: already)
            assert await _turn(harness, client, session_name, "next one") == "complete"
        assert [e["event"] for e in logs if e["event"] in {"session_continuity_lost", "session_rebuilt"}] == [
            "session_continuity_lost",
            "session_rebuilt",
        ]
        prompt = [(m.role, m.text) for m in provider.requests[-1].messages]  # type: ignore[union-attr]
        assert prompt == [("user", text), ("assistant", text + " "), ("user", "next one")]
        session = harness.worker.sessions[session_name]
        assert session is not first and not session.stale
        expected = dump(await history_tree(reader, session_name))  # nothing repeated, nothing lost
        await _until(lambda: dump(session.tree) == expected)  # its run-end's ACK may trail the client
    finally:
        await harness.close()
        await reader.close()


@pytest.mark.parametrize("echo", [False, True], ids=["echo-off", "echo-on"])
async def test_a_cancel_published_while_the_channel_lost_continuity_is_honoured(
    ably_server: EmbeddedServer, make_client: MakeClient, session_name: str, echo: bool
) -> None:
    """The client cancels while the worker's connection is down and cannot be resumed: the cancel
    never arrives live (it lies before the new attach point), so the session reads the gap back
    from history and honours it; the session is rebuilt afterwards as for any continuity loss."""
    provider = ScriptedProvider(gated_script("alpha ", asyncio.Event(), "never"))  # held until cancelled
    harness = await start_harness(ably_server, provider, coalesce_window_ms=0.0, echo_messages=echo)
    try:
        client = await make_client()
        sent = await client.send_text("go")
        _, body = await harness.invoke(session_name, sent.event_id)
        await client.wait_for(lambda: client.run_text(body["runId"]) == "alpha ")
        ably_server.hold_connections("agent-worker")  # its reconnect waits: the channel is down
        with capture_logs() as logs:
            assert ably_server.drop_connections("agent-worker", resume=False) == 1
            await client.cancel(input_cmid=sent.codec_message_id)  # stored, delivered to no worker
            ably_server.hold_connections("agent-worker", held=False)
            end = await client.run_end_for(sent.codec_message_id, wait_s=30)
        assert end.transport_headers["run-reason"] == "cancelled"
        assert [e["count"] for e in logs if e["event"] == "continuity_gap_cancels"] == [1]
        assert harness.worker.sessions[session_name].stale
    finally:
        await harness.close()


async def test_a_message_it_cannot_fold_exactly_makes_the_session_rebuild_when_idle(
    ably_server: EmbeddedServer, make_client: MakeClient, session_name: str
) -> None:
    """The worker appends to a message another process created (as a fleet's cleanup does): with
    echo off it cannot know how Ably delivers it (name and extras come from the message), so the
    session is marked stale, and the next invocation gets a new session — a fresh attach and
    history read — whose tree equals the history fold."""
    provider = ScriptedProvider(gated_script(only_for="-"))  # "ok" to every turn
    harness = await start_harness(ably_server, provider)
    other = AblyTransport(worker_settings(ably_server, echo_messages=True))
    await other.connect()
    try:
        client = await make_client()
        assert await _turn(harness, client, session_name, "one") == "complete"
        first = harness.worker.sessions[session_name]
        serial = await other.channel(session_name).publish(OutboundMessage("note", "x", {}))
        assert serial is not None
        with capture_logs() as logs:
            await first.channel.append(serial, OutboundMessage(None, "y", {}))
            assert first.stale
            assert await _turn(harness, client, session_name, "two") == "complete"
        second = harness.worker.sessions[session_name]
        assert second is not first and not second.stale
        assert [e["event"] for e in logs if e["event"] in {"session_fold_doubtful", "session_rebuilt"}] == [
            "session_fold_doubtful",
            "session_rebuilt",
        ]
        prompt = [(m.role, getattr(m, "text", None)) for m in provider.requests[-1].messages]
        assert prompt == [("user", "one"), ("assistant", "ok"), ("user", "two")]
        expected = dump(await history_tree(other, session_name))
        await _until(lambda: dump(second.tree) == expected)  # its run-end's ACK may trail the client
    finally:
        await harness.close()
        await other.close()
