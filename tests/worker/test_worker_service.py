"""Worker lifecycle: drain on close, channel-watch mode, concurrency, presence, rate governance."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from ably.types.presence import PresenceAction
from structlog.testing import capture_logs

from agent_worker.protocol.headers import AI_OUTPUT, AI_RUN_END, AI_RUN_START
from agent_worker.providers.base import ModelRequest, StreamEvent
from agent_worker.providers.echo import EchoProvider, ScriptedProvider
from agent_worker.server import EmbeddedServer, ServerConfig
from agent_worker.server.testing import python_realtime
from agent_worker.transport.ably import to_inbound
from tests.runtime.runtime_support import ChatClient, Harness, gated_script, start_harness


async def test_close_drains_then_cancels_and_every_run_ends(
    make_worker: Any, make_client: Any, session_name: str
) -> None:
    """close() lets a short run finish within the drain timeout and cancels a long one after it;
    both publish ai-run-end, and new invocations are refused while draining."""

    # The short run ends only once draining has begun (not on a clock, so a loaded machine cannot
    # make it miss the drain window); the long run never ends by itself.
    draining = asyncio.Event()

    async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
        text = request.messages[-1].text  # type: ignore[union-attr]
        if text == "short":
            for i in range(3):
                yield f"t{i} "
            await draining.wait()
            return
        for i in range(10_000):
            yield f"t{i} "
            await asyncio.sleep(0.02)

    harness: Harness = await make_worker(ScriptedProvider(script))
    client: ChatClient = await make_client()
    short = await client.send_text("short")
    long = await client.send_text("long", parent=short.codec_message_id)
    await harness.invoke(session_name, short.event_id)
    await harness.invoke(session_name, long.event_id)
    await client.wait_for(lambda: client.for_input(AI_RUN_START, long.codec_message_id))
    closing = asyncio.create_task(harness.worker.close(drain_timeout_s=3.0))
    await asyncio.sleep(0.05)
    assert harness.worker.state == "draining"
    draining.set()
    late = await client.send_text("too late", parent=short.codec_message_id)
    status, _body = await harness.invoke(session_name, late.event_id)
    assert status == 503
    await closing
    assert (await client.run_end_for(short.codec_message_id)).transport_headers["run-reason"] == "complete"
    assert (await client.run_end_for(long.codec_message_id)).transport_headers["run-reason"] == "cancelled"
    assert harness.worker.runs_completed == 1 and harness.worker.runs_cancelled == 1
    assert harness.worker.state == "closed"
    await harness.worker.close()  # idempotent


async def test_watch_mode_starts_runs_without_http(
    ably_server: EmbeddedServer, make_client: Any, session_name: str
) -> None:
    """In channel-watch mode a fresh user ai-input starts a run by itself (once per event-id, even
    if it is also POSTed), while run-tagged inputs (steering) and outputs start nothing."""
    harness = await start_harness(ably_server, EchoProvider(), watch_channels=(session_name,))
    try:
        client: ChatClient = await make_client()
        first = await client.send_text("watched hello")
        end = await client.run_end_for(first.codec_message_id)
        assert end.transport_headers["run-reason"] == "complete"
        status, _ = await harness.invoke(session_name, first.event_id)
        assert status == 200
        second = await client.send_text("again", parent=client.last_visible())
        await client.run_end_for(second.codec_message_id)
        await harness.worker.run_until_idle()
        assert harness.worker.runs_completed == 2
        assert len(client.named(AI_RUN_START)) == 2
        run_id = client.for_input(AI_RUN_START, second.codec_message_id)[0].transport_headers["run-id"]
        assert client.run_text(run_id) == "again"
    finally:
        await harness.close()


async def test_concurrent_runs_on_one_session_and_across_sessions(
    make_worker: Any, make_client: Any, session_name: str
) -> None:
    """Runs started together interleave on the wire but each gets exactly its own reply."""
    harness: Harness = await make_worker(EchoProvider(tokens_per_second=200))
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
    for client, sent, expected in ((a, sent_a, texts), (b, sent_b, [t.upper() for t in texts])):
        for s, text in zip(sent, expected, strict=True):
            end = await client.run_end_for(s.codec_message_id)
            assert end.transport_headers["run-reason"] == "complete"
            assert client.run_text(end.transport_headers["run-id"]) == text
    await harness.worker.run_until_idle()
    assert harness.worker.runs_completed == 8


async def test_presence_reports_status_and_returns_to_idle(
    make_worker: Any, make_client: Any, session_name: str
) -> None:
    """The worker enters presence on the session; during a run it shows the run, after it idle."""
    release = asyncio.Event()

    async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
        yield "streaming now "
        await release.wait()

    harness: Harness = await make_worker(ScriptedProvider(script))
    client: ChatClient = await make_client()
    updates: list[dict[str, Any]] = []
    changed = asyncio.Event()

    def on_presence(msg: Any) -> None:
        if msg.client_id == "agent-worker":
            updates.append(msg.data)
            changed.set()

    await client.channel.presence.subscribe(on_presence)
    sent = await client.send_text("hi")
    _, body = await harness.invoke(session_name, sent.event_id)

    async def streaming_seen() -> None:  # presence is deferred behind the run's own messages
        while not any(u.get("status") == "streaming" for u in updates):
            changed.clear()
            await changed.wait()

    await asyncio.wait_for(streaming_seen(), 15)
    streaming = next(u for u in updates if u.get("status") == "streaming")
    assert streaming["runId"] == body["runId"]
    release.set()
    await client.run_end_for(sent.codec_message_id)

    async def idle_seen() -> None:
        while not (updates and updates[-1] == {"status": "idle", "runId": None}):
            changed.clear()
            await changed.wait()

    await asyncio.wait_for(idle_seen(), 10)
    members = await client.channel.presence.get()
    assert any(m.client_id == "agent-worker" and m.data["status"] == "idle" for m in members)


async def test_coalescing_and_rate_limit_keep_text_intact() -> None:
    """With a rate limit enforced by the server and a coalescing window, a fast 300-token reply
    arrives complete and in order, in far fewer appends than tokens, and nothing is rejected."""
    config = ServerConfig(port=0, enforce_rate_limits=True, rate_limit_per_s=50)
    async with EmbeddedServer(config) as server:
        words = [f"w{i:03d}" for i in range(300)]
        text = " ".join(words)
        harness = await start_harness(server, EchoProvider(), rate=40.0, coalesce_window_ms=30.0)
        reader = python_realtime(server, client_id="user-abc")
        try:
            client = ChatClient(server, "conversations:rate", "user-abc")
            await client.connect()
            sent = await client.send_text(text, parent=None)
            await harness.invoke("conversations:rate", sent.event_id)
            end = await client.run_end_for(sent.codec_message_id, wait_s=60)
            assert end.transport_headers["run-reason"] == "complete"
            run_id = end.transport_headers["run-id"]
            assert client.run_text(run_id) == text
            serials = {
                m.serial
                for m in client.run_wires(run_id)
                if m.name == AI_OUTPUT and m.transport_headers.get("stream") == "true"
            }
            appends = [m for m in client.messages if m.serial in serials and m.action == "message.append"]
            assert 0 < len(appends) < len(words) // 3
            # A late reader gets the same text from history (one rolled-up message per stream).
            channel = reader.channels.get("conversations:rate")
            page = await channel.history()
            rolled = [to_inbound(m) for m in page.items if m.serial in serials]
            assert "".join(m.data for m in rolled) == text
            assert all(m.transport_headers.get("status") == "complete" for m in rolled)
            assert client.named(AI_RUN_END)
            await client.close()
        finally:
            await reader.close()
            await harness.close()


async def test_failed_appends_are_recovered_by_a_full_update() -> None:
    """When the server rejects appends (here: its rate limit, with the worker's own limiter and the
    server-side append rollup off),
    the writer replaces each damaged stream with the full text by update, and the run completes;
    history shows the exact text. (A live subscriber that saw the gapped appends keeps them, as with
    the JS SDK, whose decoder treats a non-prefix update as a silent replacement.)"""
    config = ServerConfig(port=0, enforce_rate_limits=True, rate_limit_per_s=50)
    async with EmbeddedServer(config) as server:
        words = [f"v{i:03d}" for i in range(200)]
        text = " ".join(words)
        harness = await start_harness(
            server,
            EchoProvider(tokens_per_second=2000),
            rate=100_000.0,
            coalesce_window_ms=0.0,
            append_rollup_window_ms=0,
        )
        reader = python_realtime(server, client_id="user-abc")
        try:
            client = ChatClient(server, "conversations:recover", "user-abc")
            await client.connect()
            sent = await client.send_text(text, parent=None)
            await harness.invoke("conversations:recover", sent.event_id)
            end = await client.run_end_for(sent.codec_message_id, wait_s=60)
            assert end.transport_headers["run-reason"] == "complete"
            run_id = end.transport_headers["run-id"]
            serials = {
                m.serial
                for m in client.run_wires(run_id)
                if m.name == AI_OUTPUT and m.transport_headers.get("stream") == "true"
            }
            updates = [m for m in client.messages if m.serial in serials and m.action == "message.update"]
            assert updates, "expected a recovery update"
            # Each repair (before the stream's next append, or after its close) is its text so far.
            assert all(text.startswith(u.data) for u in updates)
            page = await reader.channels.get("conversations:recover").history()
            rolled = [to_inbound(m) for m in page.items if m.serial in serials]
            assert "".join(m.data for m in rolled) == text
            assert [m.transport_headers.get("status") for m in rolled] == ["complete"]
            await client.close()
        finally:
            await reader.close()
            await harness.close()


async def test_connection_drop_mid_stream_resumes_without_losing_text(
    ably_server: EmbeddedServer, make_client: Any, session_name: str
) -> None:
    """The worker's socket is cut mid-run: ably-python resumes the connection, pending appends are
    retransmitted once, and the reply still arrives whole and the run completes."""
    harness = await start_harness(ably_server, EchoProvider(tokens_per_second=100), coalesce_window_ms=0.0)
    try:
        client: ChatClient = await make_client()
        text = " ".join(f"x{i}" for i in range(120))
        sent = await client.send_text(text)
        _, body = await harness.invoke(session_name, sent.event_id)
        await client.wait_for(lambda: len(client.run_text(body["runId"])) > 40)
        assert ably_server.drop_connections("agent-worker") == 1
        end = await client.run_end_for(sent.codec_message_id, wait_s=60)
        assert end.transport_headers["run-reason"] == "complete"
        assert client.run_text(body["runId"]) == text
    finally:
        await harness.close()


async def test_sessions_spread_over_several_connections(
    ably_server: EmbeddedServer, make_client: Any, session_name: str
) -> None:
    """With connections = 3 the worker publishes different sessions over different connections
    (seen as distinct connectionIds on the wire), and every run completes."""
    harness = await start_harness(ably_server, EchoProvider(), connections=3)
    try:
        names = [f"{session_name}-{i}" for i in range(12)]
        clients: list[ChatClient] = [await make_client("user-abc", session=n) for n in names]
        sends = [await c.send_text(f"hello {i}", parent=None) for i, c in enumerate(clients)]
        for name, s in zip(names, sends, strict=True):
            assert (await harness.invoke(name, s.event_id))[0] == 200
        connection_ids = set()
        for i, (c, s) in enumerate(zip(clients, sends, strict=True)):
            end = await c.run_end_for(s.codec_message_id)
            assert end.transport_headers["run-reason"] == "complete"
            assert c.run_text(end.transport_headers["run-id"]) == f"hello {i}"
            connection_ids.add(end.connection_id)
        assert len(connection_ids) >= 2  # 12 names over 3 connections: all on one is ~1e-5 likely
    finally:
        await harness.close()


async def test_continuity_loss_mid_run_then_history_is_reread(
    ably_server: EmbeddedServer, make_client: Any, session_name: str
) -> None:
    """A connection that cannot be resumed (continuity lost): the run in flight still completes
    with its whole text, and the next run's prompt is rebuilt from history."""

    async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
        text = request.messages[-1].text  # type: ignore[union-attr]
        for word in text.split():
            yield word + " "
            await asyncio.sleep(0.01)

    provider = ScriptedProvider(script)
    harness = await start_harness(ably_server, provider, coalesce_window_ms=0.0)
    try:
        client: ChatClient = await make_client()
        text = " ".join(f"y{i}" for i in range(60))
        sent = await client.send_text(text)
        _, body = await harness.invoke(session_name, sent.event_id)
        await client.wait_for(lambda: len(client.run_text(body["runId"])) > 30)
        with capture_logs() as logs:
            assert ably_server.drop_connections("agent-worker", resume=False) == 1
            end = await client.run_end_for(sent.codec_message_id, wait_s=60)
        assert end.transport_headers["run-reason"] == "complete"
        assert client.run_text(body["runId"]) == text + " "
        assert [e["session"] for e in logs if e["event"] == "session_continuity_lost"] == [session_name]
        follow = await client.send_text("next")
        await harness.invoke(session_name, follow.event_id)
        await client.run_end_for(follow.codec_message_id)
        prompt = [(m.role, m.text) for m in provider.requests[-1].messages]  # type: ignore[union-attr]
        assert prompt == [("user", text), ("assistant", text + " "), ("user", "next")]
    finally:
        await harness.close()


async def test_continuity_loss_with_an_applied_unacked_append_repeats_no_text(
    ably_server: EmbeddedServer, make_client: Any, session_name: str
) -> None:
    """The server applied an append whose ACK was lost with the connection, which then could not
    be resumed: the append is not sent again on the new connection (that repeated its word for
    live clients), and the stream's next message repairs it, so the live view and history end
    with the exact text."""
    stop_acking, go_on = asyncio.Event(), asyncio.Event()

    # "beta " is applied and delivered, its ACK withheld
    provider = ScriptedProvider(gated_script("alpha ", stop_acking, "beta ", go_on, "gamma ", "delta"))
    harness = await start_harness(ably_server, provider, coalesce_window_ms=0.0)
    try:
        client: ChatClient = await make_client()
        sent = await client.send_text("go")
        _, body = await harness.invoke(session_name, sent.event_id)
        run_id = body["runId"]
        await client.wait_for(lambda: client.run_text(run_id) == "alpha ")
        assert ably_server.withhold_acks("agent-worker") == 1
        stop_acking.set()
        await client.wait_for(lambda: client.run_text(run_id) == "alpha beta ")
        assert ably_server.drop_connections("agent-worker", resume=False) == 1
        go_on.set()
        end = await client.run_end_for(sent.codec_message_id, wait_s=60)
        assert end.transport_headers["run-reason"] == "complete"
        assert client.run_text(run_id) == "alpha beta gamma delta"
        follow = await client.send_text("next")
        await harness.invoke(session_name, follow.event_id)
        await client.run_end_for(follow.codec_message_id)
        prompt = [(m.role, m.text) for m in provider.requests[-1].messages]  # type: ignore[union-attr]
        assert prompt[1] == ("assistant", "alpha beta gamma delta")
    finally:
        await harness.close()


async def test_reply_over_the_message_size_limit_survives_a_continuity_loss(
    ably_server: EmbeddedServer, make_client: Any, session_name: str
) -> None:
    """A ~100 KiB reply (over the default 64 KiB maxMessageSize) streams whole: no append is
    merged past the limit, and after a continuity loss the full-text repair update (which would be
    refused, 40009) becomes a read of the stored text plus appends of what it lacks, with a
    warning; the run completes with the whole text live and in history."""
    chunks = [f"{i:04d}" + "x" * 1019 + " " for i in range(100)]  # 100 x 1 KiB
    stop_acking, go_on = asyncio.Event(), asyncio.Event()

    async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
        for chunk in chunks[:80]:
            yield chunk
        await stop_acking.wait()
        yield chunks[80]  # applied and delivered, its ACK withheld
        await go_on.wait()
        for chunk in chunks[81:]:
            yield chunk

    provider = ScriptedProvider(script)
    harness = await start_harness(ably_server, provider, coalesce_window_ms=0.0)
    text = "".join(chunks)
    try:
        client: ChatClient = await make_client()
        sent = await client.send_text("long please")
        _, body = await harness.invoke(session_name, sent.event_id)
        run_id = body["runId"]
        await client.wait_for(lambda: client.run_text(run_id) == "".join(chunks[:80]), wait_s=60)
        assert ably_server.withhold_acks("agent-worker") == 1
        stop_acking.set()
        await client.wait_for(lambda: client.run_text(run_id) == "".join(chunks[:81]), wait_s=60)
        with capture_logs() as logs:
            assert ably_server.drop_connections("agent-worker", resume=False) == 1
            go_on.set()
            end = await client.run_end_for(sent.codec_message_id, wait_s=60)
        assert end.transport_headers["run-reason"] == "complete"
        assert client.run_text(run_id) == text
        assert len([e for e in logs if e["event"] == "recovery_update_too_large"]) == 1
        follow = await client.send_text("next")
        await harness.invoke(session_name, follow.event_id)
        await client.run_end_for(follow.codec_message_id)
        prompt = [(m.role, m.text) for m in provider.requests[-1].messages]  # type: ignore[union-attr]
        assert prompt == [("user", "long please"), ("assistant", text), ("user", "next")]
    finally:
        await harness.close()


async def test_idle_sessions_are_released_and_come_back(
    ably_server: EmbeddedServer, make_client: Any, session_name: str
) -> None:
    """A session without runs for session_idle_s is detached (presence left); the next invocation
    re-attaches it and rebuilds the conversation from history."""
    provider = ScriptedProvider(_echo_last)
    harness = await start_harness(ably_server, provider, session_idle_s=0.5)
    try:
        client: ChatClient = await make_client()
        left = asyncio.Event()

        def on_presence(msg: Any) -> None:
            if msg.client_id == "agent-worker" and msg.action == PresenceAction.LEAVE:
                left.set()

        await client.channel.presence.subscribe(on_presence)
        first = await client.send_text("first")
        await harness.invoke(session_name, first.event_id)
        await client.run_end_for(first.codec_message_id)
        await asyncio.wait_for(left.wait(), 10)
        assert session_name not in harness.worker.sessions
        second = await client.send_text("second")
        await harness.invoke(session_name, second.event_id)
        await client.run_end_for(second.codec_message_id)
        prompt = [(m.role, m.text) for m in provider.requests[-1].messages]  # type: ignore[union-attr]
        assert prompt == [("user", "first"), ("assistant", "first"), ("user", "second")]
    finally:
        await harness.close()


async def _echo_last(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
    yield request.messages[-1].text  # type: ignore[union-attr]


async def test_lifecycle_hooks_are_called(
    ably_server: EmbeddedServer, make_client: Any, session_name: str
) -> None:
    """on_startup/on_shutdown get the worker, on_run_start/on_run_end each run (sync or async)."""
    calls: list[str] = []

    async def on_startup(worker: Any) -> None:
        calls.append("startup")

    def on_run_start(run: Any) -> None:
        calls.append(f"start:{run.phase.value}")

    async def on_run_end(run: Any) -> None:
        calls.append(f"end:{run.outcome}")

    def on_shutdown(worker: Any) -> None:
        calls.append(f"shutdown:{worker.state}")

    harness = await start_harness(
        ably_server,
        EchoProvider(),
        worker_kwargs={
            "on_startup": on_startup,
            "on_run_start": on_run_start,
            "on_run_end": on_run_end,
            "on_shutdown": on_shutdown,
        },
    )
    client: ChatClient = await make_client()
    sent = await client.send_text("hooks")
    await harness.invoke(session_name, sent.event_id)
    await client.run_end_for(sent.codec_message_id)
    await harness.worker.run_until_idle()
    await harness.close()
    assert calls == ["startup", "start:active", "end:complete", "shutdown:closed"]
