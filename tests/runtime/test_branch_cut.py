"""A conversation whose oldest turns are no longer in history (retention pruned them, with a run's
``ai-run-start``): the branch walk reads history to its end, builds the prompt from the turns still
readable, and says so once (``prompt_history_incomplete``), instead of ending quietly."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from agent_worker.protocol.branch import select_branch_messages
from agent_worker.protocol.wire import InboundMessage
from agent_worker.runtime.session import AgentSession
from tests.protocol.test_protocol_history_pages import two_turns


class PrunedChannel:
    """Just what a session's history read uses: pages newest first, of what is still retained."""

    name = "conversations:pruned"
    state = "attached"
    attach_serial = None

    def __init__(self, retained: list[InboundMessage]) -> None:
        self.retained = retained
        self.pages_read = 0

    async def history_pages(self, *, page_size: int, from_serial: str | None = None) -> AsyncIterator[Any]:
        newest_first = list(reversed(self.retained))
        for at in range(0, len(newest_first), page_size):
            self.pages_read += 1
            yield newest_first[at : at + page_size]


@pytest.mark.parametrize("page_size", [1, 3, 100])
async def test_a_branch_cut_by_retention_reads_what_is_left_and_says_so(page_size: int) -> None:
    """Whatever folds first (the run's outputs, newest page first; or its step-start, in one page)."""
    history = two_turns().ch.history()
    first_step = next(i for i, m in enumerate(history) if m.name == "ai-step-start")
    channel = PrunedChannel(history[first_step:])  # U1 and R1's run-start are gone
    session = AgentSession(channel, history_page_size=page_size)  # type: ignore[arg-type]
    with capture_logs() as logs:
        await session.load_branch("U3")
    incomplete = [e for e in logs if e["event"] == "prompt_history_incomplete"]
    assert [(e["session"], e["missing"]) for e in incomplete] == [(channel.name, "U1")]
    run = session.tree.run("R1")
    assert run is not None and run.parent == "U1"  # from its first output: the walk went through it
    prompt = [
        (m.message["role"], "".join(p.get("text", "") for p in m.message["parts"]))
        for m in select_branch_messages(session.tree, "U3", "R3")
    ]
    assert prompt == [("assistant", "re one"), ("user", "two"), ("assistant", "re two"), ("user", "three")]
