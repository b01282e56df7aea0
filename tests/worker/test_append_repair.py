"""An append that fails mid-stream (NACKed; past its ACK deadline, then a resumed drop) is repaired
before the stream's next append, while it still streams: live clients get the missing text as a
prefix extension (a full-text ``streaming`` update), never a word twice, and history the exact text.
(Before, the repair came only after the close, which live clients ignore: they kept the gap.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from structlog.testing import capture_logs

from agent_worker.protocol.headers import AI_OUTPUT
from agent_worker.providers.base import ModelRequest, StreamEvent
from agent_worker.providers.echo import ScriptedProvider
from agent_worker.server import EmbeddedServer
from tests.runtime.runtime_support import ChatClient, Harness, gated_script, sdk_nacks, start_harness

MakeClient = Callable[[], Awaitable[ChatClient]]


def _updates(client: ChatClient, run_id: str) -> list[tuple[str, str]]:
    """(text, status) of every update of the run's streamed messages, in order."""
    serials = {
        m.serial
        for m in client.run_wires(run_id)
        if m.name == AI_OUTPUT and m.transport_headers.get("stream") == "true"
    }
    return [
        (str(m.data), str(m.transport_headers.get("status")))
        for m in client.messages
        if m.serial in serials and m.action == "message.update"
    ]


async def _prompt_after(
    harness: Harness, client: ChatClient, session: str, provider: ScriptedProvider
) -> list[tuple[str, str]]:
    """The next run's prompt: the conversation as the worker rebuilds it from history."""
    follow = await client.send_text("next")
    await harness.invoke(session, follow.event_id)
    await client.run_end_for(follow.codec_message_id)
    return [(m.role, m.text) for m in provider.requests[-1].messages]  # type: ignore[union-attr]


async def test_a_refused_append_reaches_live_clients_before_the_stream_closes(
    ably_server: EmbeddedServer, make_client: MakeClient, session_name: str
) -> None:
    """The server NACKs "beta " and the stream goes on: before "gamma " the writer sends the text
    so far (with "gamma ") as a ``streaming`` update, so the live view reads "alpha beta gamma "
    while the stream is still open; the reply ends exact, live and in history, with no repair
    after the close."""
    refuse, go_on = asyncio.Event(), asyncio.Event()

    async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
        if request.messages[-1].text != "go":  # type: ignore[union-attr]
            yield "ok"
            return
        yield "alpha "
        await refuse.wait()
        yield "beta "  # NACKed
        await nacks.wait()  # the worker has seen the NACK (a later one could not be a prefix)
        yield "gamma "
        await go_on.wait()
        yield "delta"

    provider = ScriptedProvider(script)
    harness = await start_harness(ably_server, provider, coalesce_window_ms=0.0)
    try:
        with sdk_nacks() as nacks:
            client = await make_client()
            sent = await client.send_text("go")
            _, body = await harness.invoke(session_name, sent.event_id)
            run_id = body["runId"]
            await client.wait_for(lambda: client.run_text(run_id) == "alpha ")
            assert ably_server.refuse_appends("agent-worker") == 1
            refuse.set()
            await client.wait_for(lambda: client.run_text(run_id) == "alpha beta gamma ", wait_s=30)
            assert _updates(client, run_id) == [("alpha beta gamma ", "streaming")]
            go_on.set()
            end = await client.run_end_for(sent.codec_message_id, wait_s=60)
        assert end.transport_headers["run-reason"] == "complete"
        assert client.run_text(run_id) == "alpha beta gamma delta"
        assert _updates(client, run_id) == [("alpha beta gamma ", "streaming")]
        prompt = await _prompt_after(harness, client, session_name, provider)
        assert prompt == [("user", "go"), ("assistant", "alpha beta gamma delta"), ("user", "next")]
    finally:
        await harness.close()


async def test_an_append_past_its_ack_deadline_then_resumed_is_repaired_without_repeating_it(
    ably_server: EmbeddedServer, make_client: MakeClient, session_name: str
) -> None:
    """The server applies "beta " but its ACK never comes; the append fails at its ACK deadline
    while ably-python still holds it, then the socket drops and the connection resumes (the SDK
    re-sends it, the server knows it). The stream's repair update goes after that re-send on the
    wire, so live clients and history read every word once."""
    stop_acking, go_on = asyncio.Event(), asyncio.Event()

    # "beta " is applied and delivered, its ACK withheld
    script = gated_script("alpha ", stop_acking, "beta ", go_on, "gamma ", "delta", only_for="go")
    provider = ScriptedProvider(script)
    harness = await start_harness(ably_server, provider, coalesce_window_ms=0.0)
    try:
        client = await make_client()
        assert harness.worker.transport is not None
        # The session's channel, made ahead with a short ACK deadline (its operations use it).
        harness.worker.transport.channel(session_name).ack_timeout_s = 2.0
        sent = await client.send_text("go")
        _, body = await harness.invoke(session_name, sent.event_id)
        run_id = body["runId"]
        await client.wait_for(lambda: client.run_text(run_id) == "alpha ")
        assert ably_server.withhold_acks("agent-worker") == 1
        stop_acking.set()
        await client.wait_for(lambda: client.run_text(run_id) == "alpha beta ")
        with capture_logs() as logs:
            await asyncio.sleep(3.0)  # past the deadline of "beta "'s ACK (its timer fires first)
            assert ably_server.drop_connections("agent-worker") == 1  # resumed
            go_on.set()
            end = await client.run_end_for(sent.codec_message_id, wait_s=60)
        assert end.transport_headers["run-reason"] == "complete"
        assert client.run_text(run_id) == "alpha beta gamma delta"
        assert all("alpha beta gamma delta".startswith(text) for text, _ in _updates(client, run_id))
        assert any(e["event"] == "stream_repaired" for e in logs)
        prompt = await _prompt_after(harness, client, session_name, provider)
        assert prompt == [("user", "go"), ("assistant", "alpha beta gamma delta"), ("user", "next")]
    finally:
        await harness.close()
