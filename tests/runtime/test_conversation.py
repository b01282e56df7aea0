"""What the model is asked: history rebuilt from the channel, regenerate, edit, steering."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from agent_worker.protocol.headers import AI_OUTPUT, AI_RUN_START
from agent_worker.protocol.model import AssistantMessage, ModelMessage, UserMessage
from agent_worker.providers.base import ModelRequest, StreamEvent
from agent_worker.providers.echo import ScriptedProvider
from agent_worker.server import EmbeddedServer
from tests.runtime.runtime_support import ChatClient, Harness, start_harness


def transcript(messages: Any) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for m in messages:
        if isinstance(m, UserMessage | AssistantMessage):
            out.append((m.role, m.text))
    return out


async def reply_script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
    last: ModelMessage = request.messages[-1]
    assert isinstance(last, UserMessage)
    yield f"re: {last.text}"


async def converse(harness: Harness, client: ChatClient, session: str, text: str, **kw: Any) -> str:
    sent = await client.send_text(text, **kw)
    status, body = await harness.invoke(session, sent.event_id)
    assert status == 200
    end = await client.run_end_for(sent.codec_message_id)
    assert end.transport_headers["run-reason"] == "complete"
    return str(body["runId"])


def assistant_cmid(client: ChatClient, run_id: str) -> str:
    node = client.run_node(run_id)
    assert node is not None and node.messages
    return node.messages[-1].codec_message_id


async def test_history_is_rebuilt_from_the_channel_by_a_cold_worker(
    ably_server: EmbeddedServer, make_client: Any, session_name: str
) -> None:
    """A fresh worker (new process, nothing cached) pages history from its attach serial and sends
    the whole branch, however many pages it takes; a system prompt goes first."""
    first = ScriptedProvider(reply_script)
    h1 = await start_harness(ably_server, first)
    client: ChatClient = await make_client()
    await converse(h1, client, session_name, "one")
    await converse(h1, client, session_name, "two")
    await h1.close()

    second = ScriptedProvider(reply_script)
    # Tiny pages, and a trigger search bound of one page: the branch itself must still load fully.
    h2 = await start_harness(ably_server, second, system_prompt="You are terse.", history_max_pages=1)
    h2.worker.history_page_size = 3
    try:
        await converse(h2, client, session_name, "three")
    finally:
        await h2.close()
    request = second.requests[-1]
    assert request.system == "You are terse."
    assert transcript(request.messages) == [
        ("user", "one"),
        ("assistant", "re: one"),
        ("user", "two"),
        ("assistant", "re: two"),
        ("user", "three"),
    ]


async def test_regenerate_truncates_before_the_target(
    make_worker: Any, make_client: Any, session_name: str
) -> None:
    """Regenerate: a fresh run with msg-regenerate, parented at the user input; the prompt stops
    before the regenerated assistant message."""
    provider = ScriptedProvider(reply_script)
    harness: Harness = await make_worker(provider)
    client: ChatClient = await make_client()
    await converse(harness, client, session_name, "one")
    run2 = await converse(harness, client, session_name, "two")
    user_two = client.run_node(run2).parent  # type: ignore[union-attr]
    target = assistant_cmid(client, run2)
    regen = await client.regenerate(target, parent=user_two)
    status, body = await harness.invoke(session_name, regen.event_id)
    assert status == 200
    starts = await client.wait_for(lambda: client.for_input(AI_RUN_START, regen.codec_message_id))
    h = starts[0].transport_headers
    assert h["msg-regenerate"] == target and h["parent"] == user_two
    await client.run_end_for(regen.codec_message_id)
    assert transcript(provider.requests[-1].messages) == [
        ("user", "one"),
        ("assistant", "re: one"),
        ("user", "two"),
    ]
    outputs = [m for m in client.run_wires(body["runId"]) if m.name == AI_OUTPUT]
    assert outputs and all(m.transport_headers.get("msg-regenerate") == target for m in outputs)


async def test_edit_forks_the_user_message(make_worker: Any, make_client: Any, session_name: str) -> None:
    """Edit: a new user message with fork-of; the prompt follows the edited branch only."""
    provider = ScriptedProvider(reply_script)
    harness: Harness = await make_worker(provider)
    client: ChatClient = await make_client()
    run1 = await converse(harness, client, session_name, "one")
    run2 = await converse(harness, client, session_name, "two")
    original_two = client.run_node(run2).parent  # type: ignore[union-attr]
    run3 = await converse(
        harness, client, session_name, "TWO", parent=assistant_cmid(client, run1), fork_of=original_two
    )
    assert transcript(provider.requests[-1].messages) == [
        ("user", "one"),
        ("assistant", "re: one"),
        ("user", "TWO"),
    ]
    start = client.named(AI_RUN_START)[-1].transport_headers
    assert start["run-id"] == run3 and start["fork-of"] == original_two


async def test_cancelled_turn_is_left_out_of_the_next_prompt(
    make_worker: Any, make_client: Any, session_name: str
) -> None:
    """A turn that did not complete (here: cancelled) is dropped with its user message."""
    gate = asyncio.Event()

    async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
        last = request.messages[-1]
        assert isinstance(last, UserMessage)
        if last.text == "slow":
            yield "partial "
            await gate.wait()
        yield f"re: {last.text}"

    provider = ScriptedProvider(script)
    harness: Harness = await make_worker(provider)
    client: ChatClient = await make_client()
    await converse(harness, client, session_name, "one")
    slow = await client.send_text("slow")
    _, body = await harness.invoke(session_name, slow.event_id)
    await client.wait_for(lambda: client.run_text(body["runId"]) == "partial ")
    await client.cancel(input_cmid=slow.codec_message_id)
    await client.run_end_for(slow.codec_message_id)
    await converse(harness, client, session_name, "three")
    assert transcript(provider.requests[-1].messages) == [
        ("user", "one"),
        ("assistant", "re: one"),
        ("user", "three"),
    ]


async def test_steering_starts_another_pass_stamped_with_the_steer(
    make_worker: Any, make_client: Any, session_name: str
) -> None:
    """A steering message (ai-input with the active run-id, no POST) folds into the run; after the
    current pass the loop runs again, the prompt ends with the steer, and the new message's wires
    carry steer-codec-message-ids."""
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
    harness: Harness = await make_worker(provider)
    client: ChatClient = await make_client()
    sent = await client.send_text("write a poem")
    _, body = await harness.invoke(session_name, sent.event_id)
    run_id = body["runId"]
    await client.wait_for(lambda: "Roses" in client.run_text(run_id))
    steer = await client.send_text("make it about cats", run_id=run_id)
    await asyncio.sleep(0.1)
    gate.set()
    end = await client.run_end_for(sent.codec_message_id)
    assert end.transport_headers["run-reason"] == "complete"
    assert len(provider.requests) == 2
    assert transcript(provider.requests[1].messages)[-1] == ("user", "make it about cats")
    assert ("assistant", "Roses are red, violets are blue.") in transcript(provider.requests[1].messages)
    stamped = [
        m
        for m in client.run_wires(run_id)
        if m.name == AI_OUTPUT and m.transport_headers.get("steer-codec-message-ids")
    ]
    assert stamped and all(
        m.transport_headers["steer-codec-message-ids"] == f'["{steer.codec_message_id}"]' for m in stamped
    )
    assert client.run_text(run_id).endswith("OK: make it about cats")
    cmids = {m.transport_headers["codec-message-id"] for m in client.run_wires(run_id) if m.name == AI_OUTPUT}
    assert len(cmids) == 2  # two passes = two assistant messages
