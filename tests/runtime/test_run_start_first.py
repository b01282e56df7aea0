"""A fresh run's ``ai-run-start`` goes out once its trigger is located; the older history pages its
branch needs (a long conversation's) are read after it, before the prompt. A continuation still
reads its branch first: its run's older lifecycle (a suspend) decides the status the resume meets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from agent_worker.errors import AuthError
from agent_worker.protocol.branch import select_branch_messages
from agent_worker.protocol.headers import AI_RUN_END, AI_RUN_START
from agent_worker.protocol.wire import InboundMessage
from agent_worker.providers.echo import ScriptedProvider
from agent_worker.runtime.session import AgentSession
from agent_worker.server import EmbeddedServer
from agent_worker.transport import ably as ably_transport
from agent_worker.transport.ably import REWIND_MESSAGES
from tests.protocol.test_protocol_history_pages import TWO_TURNS_PROMPT, approved_twice, texts, two_turns
from tests.runtime.runtime_support import ChatClient, start_harness
from tests.runtime.test_conversation import converse, reply_script, transcript


class PagedChannel:
    """Just what a session's history read uses: pages newest first, counted."""

    name = "conversations:paged"
    state = "attached"
    attach_serial = None

    def __init__(self, history: list[InboundMessage]) -> None:
        self.history = history
        self.pages_read = 0

    async def history_pages(self, *, page_size: int, from_serial: str | None = None) -> AsyncIterator[Any]:
        newest_first = list(reversed(self.history))
        for at in range(0, len(newest_first), page_size):
            self.pages_read += 1
            yield newest_first[at : at + page_size]


@pytest.mark.parametrize("branch", [True, False])
async def test_a_fresh_trigger_is_located_without_its_branch_when_asked(branch: bool) -> None:
    channel = PagedChannel(two_turns().ch.history())
    session = AgentSession(channel, history_page_size=2)  # type: ignore[arg-type]
    run = session.create_run("E-U3")
    trigger = await session.locate(run, branch=branch)
    # The newest page holds the trigger (and R2's run-end), not the reply it follows (A2).
    assert trigger.structural_parent == "U3" and trigger.run_id is None
    assert (session.missing_ancestor(trigger.leaf_anchor) is None) is branch
    if not branch:
        assert channel.pages_read == 1
        await session.load_branch(trigger.leaf_anchor)
    assert channel.pages_read > 1
    prompt = texts(select_branch_messages(session.tree, trigger.leaf_anchor, run.run_id))
    assert prompt == TWO_TURNS_PROMPT


async def test_a_continuation_reads_its_branch_before_it_resumes() -> None:
    """R1 suspended twice; the second approval continues it. Its suspend is older than the trigger:
    without the branch the resume would meet a run the tree does not know as suspended."""
    channel = PagedChannel(approved_twice().ch.history())
    session = AgentSession(channel, history_page_size=2)  # type: ignore[arg-type]
    run = session.create_run("E-approve-c2")
    trigger = await session.locate(run, branch=False)
    assert trigger.run_id == "R1" and run.run_id == "R1"
    assert session.missing_ancestor(trigger.leaf_anchor) is None
    node = session.tree.run("R1")
    assert node is not None and node.status == "suspended" and node.start_serial is not None


@pytest.mark.parametrize("rewind", [0, REWIND_MESSAGES])
async def test_the_worker_sends_the_run_start_before_reading_the_older_pages(
    ably_server: EmbeddedServer,
    make_client: Any,
    session_name: str,
    monkeypatch: pytest.MonkeyPatch,
    rewind: int,
) -> None:
    """A cold worker with tiny pages: the page holding the trigger is read before the run-start (or,
    with the attach's rewind, none: the trigger came with it), the rest of the branch after it, and
    the model still gets the whole conversation."""
    monkeypatch.setattr(ably_transport, "REWIND_MESSAGES", rewind)
    first = ScriptedProvider(reply_script)
    h1 = await start_harness(ably_server, first)
    client: ChatClient = await make_client()
    await converse(h1, client, session_name, "one")
    await converse(h1, client, session_name, "two")
    await h1.close()

    reads: list[bool] = []  # per history page read: whether a run had started then
    load_page = AgentSession._load_page

    async def recording(self: AgentSession) -> bool:
        reads.append(any(r.started for r in self.runs.values()))
        return await load_page(self)

    monkeypatch.setattr(AgentSession, "_load_page", recording)
    second = ScriptedProvider(reply_script)
    h2 = await start_harness(ably_server, second)
    h2.worker.history_page_size = 3
    try:
        await converse(h2, client, session_name, "three")
    finally:
        await h2.close()
    assert reads[0] is (rewind > 0) and reads[-1] is True
    assert reads == sorted(reads)  # every read before the run-start came before every read after it
    assert transcript(second.requests[-1].messages) == [
        ("user", "one"),
        ("assistant", "re: one"),
        ("user", "two"),
        ("assistant", "re: two"),
        ("user", "three"),
    ]


async def test_a_branch_read_refused_after_the_run_start_ends_the_run(
    ably_server: EmbeddedServer, make_client: Any, session_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run-start is on the channel: a refusal reading the rest of the branch ends the run there
    (not a silent drop, as a refusal before anything was published is)."""
    first = ScriptedProvider(reply_script)
    h1 = await start_harness(ably_server, first)
    client: ChatClient = await make_client()
    await converse(h1, client, session_name, "one")
    await h1.close()

    async def refused(self: AgentSession, anchor: str | None, *, max_pages: int = 10_000) -> None:
        msg = "token revoked"
        raise AuthError(msg, code=40141, status_code=401)

    monkeypatch.setattr(AgentSession, "load_branch", refused)
    second = ScriptedProvider(reply_script)
    h2 = await start_harness(ably_server, second)
    h2.worker.history_page_size = 3
    try:
        sent = await client.send_text("two")
        status, _ = await h2.invoke(session_name, sent.event_id)
        assert status == 200
        end = await client.run_end_for(sent.codec_message_id)
    finally:
        await h2.close()
    assert end.transport_headers["run-reason"] == "error"
    run_id = end.transport_headers["run-id"]
    names = [m.name for m in client.run_wires(run_id)]
    assert names == [AI_RUN_START, AI_RUN_END]
    assert second.requests == []
