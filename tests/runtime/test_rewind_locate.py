"""A session channel attaches with Ably's ``rewind``: its newest messages come right after ATTACHED,
so a new conversation's trigger is located without reading a history page. Those messages are from
before the attach point: history, folded as a page's messages are and never acted on as news (a
cancel, a watched channel's input). A trigger is taken from the rewind only when the rewind holds
everything a history page would have given the locate: every message after it up to the attach
point, and all of its parts (it is not the rewind's oldest message, unless the rewind held fewer
messages than asked: the whole channel). Otherwise the first page is read as before."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

from agent_worker.protocol.branch import select_branch_messages
from agent_worker.protocol.headers import H_STEP_START_SERIAL, build_input_headers
from agent_worker.protocol.vercel.encoder import encode_user_message
from agent_worker.protocol.wire import InboundMessage, OutboundMessage
from agent_worker.runtime.session import AgentSession
from agent_worker.server import EmbeddedServer
from agent_worker.server.testing import python_realtime
from agent_worker.transport.ably import REWIND_MESSAGES
from agent_worker.transport.inbound import at_or_before
from tests.protocol.convo import Convo
from tests.protocol.test_protocol_history_pages import TWO_TURNS_PROMPT, texts, two_turns
from tests.runtime.runtime_support import fresh_channel

SERIES = "rw"


def ably_serial(seq: str) -> str:
    """The in-memory channel's serial ``000007`` in Ably's form (``<channel serial>:<index>``)."""
    return f"{int(seq):014d}-000@{SERIES}:000"


def channel_serial(message_serial: str) -> str:
    return message_serial.rpartition(":")[0]


def _with_ably_serials(extras: Any) -> Any:
    """``extras`` with the serials its transport headers name (``step-start-serial``) in Ably's form."""
    transport = (extras or {}).get("ai", {}).get("transport")
    if not transport or H_STEP_START_SERIAL not in transport:
        return extras
    renamed = {**transport, H_STEP_START_SERIAL: ably_serial(transport[H_STEP_START_SERIAL])}
    return {**extras, "ai": {**extras["ai"], "transport": renamed}}


class RewindChannel:
    """What a session uses of a channel: an attach that delivers the newest ``rewind`` messages
    (when the test says so) and history pages from the attach point, counted."""

    name = "conversations:rewind"
    state = "attached"
    connection_state = "connected"

    def __init__(self, history: list[InboundMessage], rewind: int = 8) -> None:
        self.history = [
            dataclasses.replace(
                m,
                extras=_with_ably_serials(m.extras),
                serial=ably_serial(m.serial or "0"),
                version_serial=ably_serial(m.version_serial or m.serial or "0"),
            )
            for m in history
        ]
        self.rewind = rewind
        newest = max((m.version_serial or "") for m in self.history)
        self.attach_serial: str | None = channel_serial(newest)
        self.pages_read = 0
        self._listener: Callable[[InboundMessage], None] | None = None

    def on_state_change(self, callback: Any) -> None:
        pass

    async def subscribe(self, listener: Callable[[InboundMessage], None]) -> None:
        self._listener = listener

    def rewound(self) -> list[InboundMessage]:
        return self.history[-self.rewind :]

    def deliver(self, messages: list[InboundMessage]) -> None:
        assert self._listener is not None
        for m in messages:
            self._listener(m)

    async def history_pages(self, *, page_size: int, from_serial: str | None = None) -> AsyncIterator[Any]:
        assert from_serial == self.attach_serial
        newest_first = list(reversed(self.history))
        for at in range(0, len(newest_first), page_size):
            self.pages_read += 1
            yield newest_first[at : at + page_size]


def test_a_message_serial_is_placed_against_the_attach_serial() -> None:
    attach = "01826232498871-001@abcdefghij"
    assert at_or_before("01826232498871-000@abcdefghij:005", attach)
    assert at_or_before(f"{attach}:000", attach) and at_or_before(f"{attach}:001", attach)
    assert not at_or_before(f"{attach}:000", attach, strictly=True)
    assert at_or_before("01826232498871-000@abcdefghij:005", attach, strictly=True)
    assert not at_or_before("01826232498871-002@abcdefghij:000", attach)
    assert not at_or_before("01826232498872-000@abcdefghij:000", attach)


async def test_a_trigger_in_the_rewind_is_located_without_a_history_page() -> None:
    channel = RewindChannel(two_turns().ch.history())
    session = AgentSession(channel, history_page_size=4)  # type: ignore[arg-type]
    await session.connect()
    channel.deliver(channel.rewound())
    run = session.create_run("E-U3")
    trigger = await session.locate(run, branch=False)
    assert trigger.structural_parent == "U3" and channel.pages_read == 0
    # The branch is read from the attach point as ever: the rewind's messages fold again, harmless.
    await session.load_branch(trigger.leaf_anchor)
    assert channel.pages_read > 0
    prompt = texts(select_branch_messages(session.tree, trigger.leaf_anchor, run.run_id))
    assert prompt == TWO_TURNS_PROMPT


async def test_a_rewind_not_yet_up_to_the_attach_point_sends_the_locate_to_history() -> None:
    """A message after the trigger (here a cancel of its input) has not arrived from the rewind yet:
    the trigger is not taken from it (the locate must see what the channel holds after it)."""
    convo = two_turns()
    convo.cancel(input_cmid="U3")
    channel = RewindChannel(convo.ch.history())
    session = AgentSession(channel, history_page_size=4)  # type: ignore[arg-type]
    await session.connect()
    channel.deliver(channel.rewound()[:-1])
    run = session.create_run("E-U3")
    trigger = await session.locate(run, branch=False)
    assert trigger.structural_parent == "U3" and channel.pages_read == 1


def many_parts(convo: Convo, cmid: str, count: int) -> str:
    event_id = f"E-{cmid}"
    headers = build_input_headers(codec_message_id=cmid, event_id=event_id, run_client_id="u", parent=None)
    parts = [{"type": "text", "text": f"p{i}"} for i in range(count)]
    for m in encode_user_message({"id": f"ui-{cmid}", "role": "user", "parts": parts}, headers):
        convo.ch.publish(m, client_id="u")
    return event_id


def user_text(session: AgentSession, run_id: str, leaf: str | None) -> str:
    [(role, text)] = texts(select_branch_messages(session.tree, leaf, run_id))
    assert role == "user"
    return text


async def locate_parts(count: int) -> tuple[int, str]:
    """A user message of ``count`` parts behind a rewind of eight: the pages read to locate it, and
    the prompt's text."""
    convo = Convo()
    event_id = many_parts(convo, "U1", count)
    channel = RewindChannel(convo.ch.history(), rewind=8)
    session = AgentSession(channel, history_page_size=100)  # type: ignore[arg-type]
    await session.connect()
    channel.deliver(channel.rewound())
    run = session.create_run(event_id)
    trigger = await session.locate(run, branch=False)
    return channel.pages_read, user_text(session, run.run_id, trigger.leaf_anchor)


async def test_a_trigger_cut_by_the_rewind_is_read_whole_from_history() -> None:
    """Ten parts, a rewind of eight: the parts it holds start with the rewind's oldest message, so
    the first two may be (and are) older: the page is read and the prompt has every part."""
    pages_read, text = await locate_parts(10)
    assert pages_read == 1
    assert text == "".join(f"p{i}" for i in range(10))


async def test_a_rewind_shorter_than_asked_holds_the_whole_channel() -> None:
    """Three parts, a rewind of eight that delivered three: the trigger is the channel's oldest
    message, nothing older can belong to it: no page."""
    assert await locate_parts(3) == (0, "p0p1p2")


async def test_rewound_cancels_and_inputs_are_history_not_news() -> None:
    """A cancel and a fresh input from before the attach point are folded, not acted on (as none
    read from a history page is); the same arriving live after the attach point are."""
    convo = Convo()
    convo.user("U1", "one")
    convo.cancel(input_cmid="U1")
    convo.user("U2", "two")
    channel = RewindChannel(convo.ch.history())
    decisions: list[str] = []
    fresh: list[str | None] = []
    session = AgentSession(
        channel,  # type: ignore[arg-type]
        on_fresh_input=lambda _s, m: fresh.append(m.transport_headers.get("event-id")),
        on_cancel_decision=decisions.append,
    )
    session.watch = True
    await session.connect()
    channel.deliver(channel.rewound())
    assert session.tree.find_event("E-U1") is not None and session.tree.find_event("E-U2") is not None
    assert decisions == [] and fresh == []

    later = Convo()
    later.user("U1", "one")
    later.cancel(input_cmid="U1")
    later.user("U3", "three")
    live = [
        dataclasses.replace(m, serial=f"{channel.attach_serial}9:{i:03d}", version_serial=None)
        for i, m in enumerate(later.ch.history()[1:])
    ]
    assert not at_or_before(live[0].serial or "", channel.attach_serial or "")
    channel.deliver(live)
    assert decisions == ["buffered"] and fresh == ["E-U3"]


async def test_a_workers_own_earlier_messages_come_with_the_rewind(ably_server: EmbeddedServer) -> None:
    """Echo off, a channel's own messages are folded from their ACKs and their echoes dropped; its
    messages from before a new attach (an earlier session's, on the same connection) come with the
    rewind and are kept: history the fold needs."""
    async with fresh_channel(ably_server, "rewind-own") as first:
        assert first.local is not None  # echo off
        transport = first._transport
        user = python_realtime(ably_server, client_id="user-abc")
        try:
            await user.channels.get(first.name).publish("ai-input", "hello")
            await first.subscribe(lambda m: None)
            await first.publish(OutboundMessage(name="note", data="own", extras={}))
            await transport.release(first.name)
            again = await transport.open_channel(first.name)  # a session's: with rewind
            assert again is not first and again.client is first.client  # the same connection
            assert again.rewind == REWIND_MESSAGES and first.rewind == 0
            got: list[InboundMessage] = []
            both = asyncio.Event()

            def on_message(m: InboundMessage) -> None:
                got.append(m)
                if len(got) == 2:
                    both.set()

            await again.subscribe(on_message)
            async with asyncio.timeout(10):
                await both.wait()
            assert [m.data for m in got] == ["hello", "own"]
        finally:
            await user.close()
