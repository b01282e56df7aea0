"""The agent's fold of history read newest page first, for every page size.

A cold worker pages history backwards from its attach serial until the trigger is found and the branch
walk reaches its root. With small pages a run's lifecycle (end, suspend, resume) can fold before any
wire of the run itself, and a run's outputs before the user input it answers; the statuses and the
prompt must come out as if the channel had been folded in order.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_worker.protocol.branch import (
    TriggerInfo,
    missing_ancestor,
    resolve_anchors,
    select_branch_messages,
)
from agent_worker.protocol.headers import RunLifecycle
from agent_worker.protocol.tree import ConversationTree
from agent_worker.protocol.wire import InboundMessage
from tests.protocol.convo import Convo, text_reply


def texts(messages: list[Any]) -> list[tuple[str, str]]:
    out = []
    for m in messages:
        parts = m.message["parts"]
        out.append((m.message["role"], "".join(p.get("text", "") for p in parts if p["type"] == "text")))
    return out


def pages_newest_first(history: list[InboundMessage], page_size: int) -> list[list[InboundMessage]]:
    """History pages as a REST history read returns them, each turned oldest-first for folding."""
    pages: list[list[InboundMessage]] = []
    end = len(history)
    while end > 0:
        start = max(0, end - page_size)
        pages.append(history[start:end])
        end = start
    return pages


def cold_fold(history: list[InboundMessage], page_size: int, event_id: str) -> tuple[ConversationTree, int]:
    """What a cold worker does: fold pages until the trigger is found and its branch is complete.

    Returns the tree and how many pages were read."""
    tree = ConversationTree()
    pages = pages_newest_first(history, page_size)
    read = 0
    for page in pages:
        if tree.find_event(event_id) is not None:
            trigger = tree.find_event(event_id)
            assert trigger is not None
            leaf = resolve_anchors(tree, TriggerInfo.from_message(trigger)).leaf
            if missing_ancestor(tree, leaf) is None:
                break
        tree.apply_all(page)
        read += 1
    return tree, read


def prompt(tree: ConversationTree, event_id: str, run_id: str) -> list[tuple[str, str]]:
    trigger = tree.find_event(event_id)
    assert trigger is not None
    info = TriggerInfo.from_message(trigger)
    leaf = resolve_anchors(tree, info).leaf
    return texts(select_branch_messages(tree, leaf, run_id, regenerates=info.regenerates))


def two_turns() -> Convo:
    c = Convo()
    c.user("U1", "one")
    r1 = c.run("R1", input_cmid="U1", leaf="U1").start(run_parent="U1")
    r1.step(text_reply("re one"), cmid="A1")
    r1.end()
    c.user("U2", "two", parent="A1")
    r2 = c.run("R2", input_cmid="U2", leaf="U2").start(run_parent="U2")
    r2.step(text_reply("re two"), cmid="A2")
    r2.end()
    c.user("U3", "three", parent="A2")
    return c


TWO_TURNS_LEN = len(two_turns().ch.history())
TWO_TURNS_PROMPT = [
    ("user", "one"),
    ("assistant", "re one"),
    ("user", "two"),
    ("assistant", "re two"),
    ("user", "three"),
]
"""The prompt for ``U3``'s run: the whole branch."""


def approval_request(call_id: str) -> list[dict[str, Any]]:
    return [
        {"type": "start"},
        {"type": "start-step"},
        {"type": "tool-input-available", "toolCallId": call_id, "toolName": "rm", "input": {"p": call_id}},
        {"type": "tool-approval-request", "toolCallId": call_id, "approvalId": f"ap-{call_id}"},
        {"type": "finish-step"},
        {"type": "finish", "finishReason": "tool-calls"},
    ]


def approved_twice() -> Convo:
    """R1 suspends for an approval, resumes (I-2), suspends again, and is approved once more."""
    c = Convo()
    c.user("U1", "clean up")
    r = c.run("R1", input_cmid="U1", leaf="U1").start(run_parent="U1")
    r.step(approval_request("c1"), cmid="A1")
    r.suspend()
    c.approve(run_id="R1", assistant_cmid="A1", tool_call_id="c1", approved=True, parent="U1")
    r2 = c.run("R1", input_cmid="A1", leaf="A1", invocation_id="I-2").start(
        run_parent=None, continuation=True
    )
    r2.step(
        [
            {"type": "start"},
            {"type": "start-step"},
            {"type": "tool-output-available", "toolCallId": "c1", "output": "gone"},
            {"type": "finish-step"},
            {"type": "start-step"},
            {"type": "text-start", "id": "t"},
            {"type": "text-delta", "id": "t", "delta": "removed one"},
            {"type": "text-end", "id": "t"},
            {"type": "finish-step"},
            {"type": "finish", "finishReason": "stop"},
        ],
        cmid="A1",
    )
    r2.step(approval_request("c2"), cmid="A2")
    r2.suspend()
    c.approve(run_id="R1", assistant_cmid="A2", tool_call_id="c2", approved=True, parent="U1")
    return c


APPROVED_TWICE_LEN = len(approved_twice().ch.history())


class TestLifecycleBeforeTheRunNode:
    @pytest.mark.parametrize("page_size", range(1, TWO_TURNS_LEN + 1))
    def test_run_end_on_a_newer_page_than_the_run_is_kept(self, page_size: int) -> None:
        """Every page size: both turns end complete, so the next prompt carries both of them."""
        c = two_turns()
        history = c.ch.history()
        tree = ConversationTree()
        for page in pages_newest_first(history, page_size):
            tree.apply_all(page)
        assert [tree.run(r).status for r in ("R1", "R2")] == ["complete", "complete"]  # type: ignore[union-attr]
        assert tree.run("R1").end_serial == next(  # type: ignore[union-attr]
            m.serial for m in history if m.name == "ai-run-end"
        )
        c.run("R3", input_cmid="U3", leaf="U3").start(run_parent="U3")
        tree.apply_all(c.ch.live[-1:])
        assert prompt(tree, "E-U3", "R3") == [
            ("user", "one"),
            ("assistant", "re one"),
            ("user", "two"),
            ("assistant", "re two"),
            ("user", "three"),
        ]

    def test_run_end_alone_on_the_newest_page(self) -> None:
        """The exact shape a 3-message page produces: R1's run-end is the oldest item of a page."""
        c = two_turns()
        history = c.ch.history()
        end = next(i for i, m in enumerate(history) if m.name == "ai-run-end")
        tree = ConversationTree()
        tree.apply_all(history[end:])  # run-end of R1 first: no R1 node yet
        assert tree.run("R1") is None
        tree.apply_all(history[:end])  # the older page brings R1's start and outputs
        assert tree.run("R1").status == "complete"  # type: ignore[union-attr]

    @pytest.mark.parametrize("page_size", range(1, APPROVED_TWICE_LEN + 1))
    def test_suspend_and_resume_before_the_run_node(self, page_size: int) -> None:
        """A twice-suspended run folds to ``suspended`` however its lifecycle straddles the pages."""
        tree = ConversationTree()
        for page in pages_newest_first(approved_twice().ch.history(), page_size):
            tree.apply_all(page)
        node = tree.run("R1")
        assert node is not None and node.status == "suspended"
        assert node.last_resume_invocation_id == "I-2"

    @pytest.mark.parametrize("page_size", range(1, APPROVED_TWICE_LEN + 1))
    def test_resumed_then_ended_run_is_complete(self, page_size: int) -> None:
        c = approved_twice()
        r3 = c.run("R1", input_cmid="A2", leaf="A2", invocation_id="I-3").start(
            run_parent=None, continuation=True
        )
        r3.step(text_reply("removed both"), cmid="A2")
        r3.end()
        tree = ConversationTree()
        for page in pages_newest_first(c.ch.history(), page_size):
            tree.apply_all(page)
        assert tree.run("R1").status == "complete"  # type: ignore[union-attr]

    def test_lifecycle_arriving_out_of_order_refolds_in_serial_order(self) -> None:
        """An older suspend arriving after the run ended does not re-suspend it (and no later start
        resurrects it); an older resume does not override the newer suspend."""
        c = approved_twice()
        tree = c.tree()
        node = tree.run("R1")
        assert node is not None and node.status == "suspended"

        def ev(type_: str, serial: str, inv: str, **kw: Any) -> RunLifecycle:
            return RunLifecycle(type=type_, run_id="R1", client_id="", invocation_id=inv, serial=serial, **kw)  # type: ignore[arg-type]

        # The newer invocation's end, then an older page replays its earlier lifecycle.
        tree.apply_run_lifecycle(ev("end", "z9", "I-3", reason="complete"))
        tree.apply_run_lifecycle(ev("resume", "z1", "I-3"))
        assert str(node.status) == "complete"
        tree.apply_run_lifecycle(ev("suspend", "000001", ""))
        tree.apply_run_lifecycle(ev("start", "000000", "I-R1"))
        assert str(node.status) == "complete" and node.end_serial == "z9"

    def test_start_after_suspend_from_an_older_page_keeps_the_run_suspended(self) -> None:
        """History newest first: the suspend folds before the run-start; the start must not reactivate."""
        c = Convo()
        c.user("U1", "clean up")
        r = c.run("R1", input_cmid="U1", leaf="U1").start(run_parent="U1")
        r.step(approval_request("c1"), cmid="A1")
        r.suspend()
        history = c.ch.history()
        tree = ConversationTree()
        tree.apply_all(history[-1:])  # the suspend
        tree.apply_all(history[2:-1])  # the outputs
        tree.apply_all(history[:2])  # the input and the run-start
        assert tree.run("R1").status == "suspended"  # type: ignore[union-attr]

    def test_unknown_run_lifecycle_is_bounded(self) -> None:
        """Lifecycle of runs that never appear is held in a bounded buffer."""
        tree = ConversationTree()
        for i in range(ConversationTree.EARLY_LIFECYCLE_LIMIT + 50):
            tree.apply_run_lifecycle(
                RunLifecycle(
                    type="end",
                    run_id=f"R{i}",
                    client_id="",
                    invocation_id="",
                    serial=f"{i:08d}",
                    reason="complete",
                )
            )
        assert tree.pending_lifecycle_count() == ConversationTree.EARLY_LIFECYCLE_LIMIT


class TestBranchWalkOverPartialHistory:
    def test_input_indexed_to_its_run_is_still_missing(self) -> None:
        """A run's outputs index its input-codec-message-id to the run until the input folds: the walk
        must still report that input as missing rather than stopping at the self-cycle."""
        history = two_turns().ch.history()[:10]  # U1 and run R1
        tree = ConversationTree()
        tree.apply_all([m for m in history if m.name == "ai-output"])  # no U1, no run-start
        assert tree.node_by_codec_message_id("A1") is tree.run("R1")
        assert tree.node_by_codec_message_id("U1") is tree.run("R1")
        assert missing_ancestor(tree, "A1") == "U1"
        tree.apply_all(history)
        assert missing_ancestor(tree, "A1") is None

    def test_run_known_only_from_its_step_lifecycle_is_incomplete(self) -> None:
        """A run node created by ai-step-start has no parent until a wire naming one folds: not a root.
        Its first output names it (the run-start's parent wins once that folds)."""
        history = two_turns().ch.history()[:10]
        tree = ConversationTree()
        tree.apply_all([m for m in history[2:] if m.name != "ai-output"])  # step-start/-end, run-end
        run = tree.run("R1")
        assert run is not None and (run.parent, run.client_id) == (None, "")
        assert not tree.run_start_seen("R1")
        tree.apply_all([m for m in history[2:] if m.name == "ai-output"])
        assert (run.parent, run.client_id) == ("U1", "user-abc")
        assert missing_ancestor(tree, "A1") == "U1"
        tree.apply_all(history[1:2])  # the run-start: parent U1, which has not folded yet
        assert missing_ancestor(tree, "A1") == "U1"
        tree.apply_all(history[:1])
        assert missing_ancestor(tree, "A1") is None

    @pytest.mark.parametrize("page_size", range(1, TWO_TURNS_LEN + 1))
    def test_cold_worker_pages_until_the_branch_is_complete(self, page_size: int) -> None:
        c = two_turns()
        c.run("R3", input_cmid="U3", leaf="U3").start(run_parent="U3")
        history = c.ch.history()
        tree, _ = cold_fold(history, page_size, "E-U3")
        assert prompt(tree, "E-U3", "R3") == [
            ("user", "one"),
            ("assistant", "re one"),
            ("user", "two"),
            ("assistant", "re two"),
            ("user", "three"),
        ]

    @pytest.mark.parametrize("page_size", range(1, APPROVED_TWICE_LEN + 1))
    def test_cold_continuation_sees_the_whole_run(self, page_size: int) -> None:
        """The second approval goes to a cold worker: the earlier invocation's outputs (parent = the run's
        own message) may fold before the run-start; the walk still reaches the user input."""
        c = approved_twice()
        c.run("R1", input_cmid="A2", leaf="A2", invocation_id="I-3").start(run_parent=None, continuation=True)
        tree, _ = cold_fold(c.ch.history(), page_size, "E-approve-c2")
        assert prompt(tree, "E-approve-c2", "R1") == [
            ("user", "clean up"),
            ("assistant", "removed one"),
            ("assistant", ""),
        ]

    @pytest.mark.parametrize("page_size", range(1, APPROVED_TWICE_LEN + 6))
    def test_cancelled_continuation_drops_the_input_it_answered(self, page_size: int) -> None:
        """A run cancelled in its second invocation leaves the next prompt together with its user input,
        even when the run node was first created from that invocation's output (parent = A1)."""
        c = approved_twice()
        r3 = c.run("R1", input_cmid="A2", leaf="A2", invocation_id="I-3").start(
            run_parent=None, continuation=True
        )
        r3.end("cancelled")
        c.user("U2", "never mind", parent="A2")
        c.run("R2", input_cmid="U2", leaf="U2").start(run_parent="U2")
        tree, _ = cold_fold(c.ch.history(), page_size, "E-U2")
        assert tree.run("R1").status == "cancelled"  # type: ignore[union-attr]
        assert prompt(tree, "E-U2", "R2") == [("user", "never mind")]


def _serial_order(tree: ConversationTree) -> list[str]:
    """The nodes as the tree orders them, checked against a fresh sort by (serial, arrival)."""
    keys = [n.key for n in tree.nodes()]
    placed = list(tree._sorted)
    fresh = sorted(placed, key=ConversationTree._sort_key)
    assert [e.node.key for e in fresh] == keys
    assert all(e.sort_key == ConversationTree._sort_key(e) for e in placed)
    return keys


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["two_turns", "approved_twice"]), st.randoms(use_true_random=False))
def test_nodes_stay_in_serial_order_whatever_the_delivery_order(convo: str, rnd: Any) -> None:
    """Nodes are placed by the key they had when placed (bisected in C) and re-placed when a later
    wire gives them a serial: any delivery order (shuffled, duplicated) and newest-first pages
    leave them in serial order, as an in-order fold does."""
    history = (two_turns if convo == "two_turns" else approved_twice)().ch.history()
    in_order = _serial_order(_fold(history))
    shuffled = [*history, *rnd.sample(history, k=len(history) // 3)]
    rnd.shuffle(shuffled)
    assert _serial_order(_fold(shuffled)) == in_order
    for page_size in (1, 3, 7):
        paged = [m for page in pages_newest_first(history, page_size) for m in page]
        assert _serial_order(_fold(paged)) == in_order


def _fold(messages: list[InboundMessage]) -> ConversationTree:
    tree = ConversationTree()
    tree.apply_all(messages)
    return tree
