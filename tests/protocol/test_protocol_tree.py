"""Conversation tree, the agent's branch walk and the client view: §7 and §11 scenarios, each checked
against the real JS ClientSession folding the same channel (live, and history paged newest-first)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from agent_worker.protocol.branch import (
    SteerTracker,
    TriggerInfo,
    approved_pending_tool_calls,
    missing_ancestor,
    pending_tool_calls,
    resolve_anchors,
    select_branch_messages,
)
from agent_worker.protocol.headers import RunLifecycle
from agent_worker.protocol.nodes import WireLog
from agent_worker.protocol.tree import ConversationTree, RunNode
from agent_worker.protocol.vercel.reducer import ToolCall
from agent_worker.protocol.view import ClientView
from agent_worker.protocol.wire import InboundMessage
from tests.protocol.convo import Convo, text_reply


def history_fold_order(messages: list[InboundMessage], page_size: int) -> list[InboundMessage]:
    """The order a hydrator folds history: newest page first, each page oldest → newest."""
    out: list[InboundMessage] = []
    end = len(messages)
    while end > 0:
        start = max(0, end - page_size)
        out.extend(messages[start:end])
        end = start
    return out


def live_view(messages: list[InboundMessage]) -> ClientView:
    view = ClientView()
    for m in messages:
        view.apply(m)
    return view


def history_view(messages: list[InboundMessage], page_size: int) -> ClientView:
    view = ClientView()
    end = len(messages)
    while end > 0:
        start = max(0, end - page_size)
        view.apply_history(messages[start:end])
        end = start
    return view


def summary(
    view: ClientView, *, run_ids: list[str], event_ids: list[str], cmids: list[str]
) -> dict[str, Any]:
    """The JS oracle's result shape, computed from the Python view."""
    tree = view.tree
    runs: dict[str, Any] = {}
    for rid in run_ids:
        n = tree.run(rid)
        runs[rid] = (
            None
            if n is None
            else {
                "status": n.status,
                "error": {"code": n.error.code, "message": n.error.message} if n.error else None,
                "parent": n.parent,
                "regenerates": n.regenerates,
                "startSerial": n.start_serial,
                "steps": [
                    {"stepId": s.step_id, "status": s.status, "attemptCount": s.attempt_count}
                    for s in n.steps
                ],
                "messages": [m.codec_message_id for m in n.messages],
            }
        )
    events = {}
    for eid in event_ids:
        found = tree.find_event(eid)
        events[eid] = found.serial if found else None
    nodes = {}
    for cmid in cmids:
        node = tree.node_by_codec_message_id(cmid)
        nodes[cmid] = node.key if node else None
    return {
        "messages": [m.to_json() for m in view.messages()],
        "runs": runs,
        "events": events,
        "nodes": nodes,
    }


def statuses(summary: dict[str, Any]) -> dict[str, Any]:
    return {r: None if n is None else (n["status"], n["error"]) for r, n in summary["runs"].items()}


def check_against_js(
    c: Convo,
    *,
    run_ids: list[str],
    event_ids: list[str] = (),  # type: ignore[assignment]
    cmids: list[str] = (),  # type: ignore[assignment]
    history_equals_live: bool = True,
) -> dict[str, Any]:
    """Python tree == JS ClientSession for live delivery and for 3-message history pages (run statuses
    of the history fold: == the live fold's, where JS may lose a lifecycle event)."""
    query: dict[str, Any] = {
        "runIds": list(run_ids),
        "eventIds": list(event_ids),
        "codecMessageIds": list(cmids),
    }
    py_live = summary(
        live_view(c.ch.live), run_ids=list(run_ids), event_ids=list(event_ids), cmids=list(cmids)
    )
    js_live = c.js_view(**query)
    assert py_live == {k: js_live[k] for k in py_live}
    py_hist = summary(
        history_view(c.ch.history(), 3), run_ids=list(run_ids), event_ids=list(event_ids), cmids=list(cmids)
    )
    js_hist = c.js_view(live=False, history=True, page_size=3, **query)
    # Ours: the history fold is the in-order fold, whatever the page boundaries (the tree's fold does
    # not depend on arrival order: tests/protocol/test_fold_order.py). The client view's messages
    # may differ (live, a sibling group stays pinned to the input on screen when an edit arrives).
    skip = () if history_equals_live else ("messages",)
    assert {k: v for k, v in py_hist.items() if k not in skip} == {
        k: v for k, v in py_live.items() if k not in skip
    }
    # The JS tree's history fold keeps effects of its fold order: a run's suspend/resume/end or a
    # step-end folded before any other wire of the run is dropped (it stays active); a run's start
    # serial, parent and step order come from its first wires *folded*; a stream decoded before its
    # run's discrete start-step gets a synthesised one (a second step-start part), and a run first
    # seen through a continuation's output (parent = its own message) stays hidden. What does not
    # depend on the order is equal.
    assert {k: py_hist[k] for k in ("events", "nodes")} == {k: js_hist[k] for k in ("events", "nodes")}
    for rid, (js_status, _) in statuses(js_hist).items():
        if js_status != statuses(js_live)[rid][0]:
            assert js_status == "active", rid  # the only way the JS drop shows: a run stuck active
    return py_live


def texts(messages: list[Any]) -> list[tuple[str, str]]:
    """(role, concatenated text) per message — compact expectations for branch walks."""
    out = []
    for m in messages:
        msg = m.message if hasattr(m, "message") else m["message"]
        out.append((msg["role"], "".join(p.get("text", "") for p in msg["parts"] if p["type"] == "text")))
    return out


def agent_prompt(tree: ConversationTree, event_id: str, run_id: str, steers: Any = frozenset()) -> list[Any]:
    trigger = tree.find_event(event_id)
    assert trigger is not None
    info = TriggerInfo.from_message(trigger)
    anchors = resolve_anchors(tree, info)
    return select_branch_messages(
        tree, anchors.leaf, run_id, regenerates=info.regenerates, unresponded_steers=steers
    )


# --- scenarios ----------------------------------------------------------------------------------------


def cancelled_and_failed_turns() -> Convo:
    c = Convo()
    c.user("U1", "first")
    r1 = c.run("R1", input_cmid="U1", leaf="U1").start(run_parent="U1")
    r1.step(text_reply("answer one"), cmid="A1")
    r1.end()
    c.user("U2", "second", parent="A1")
    r2 = c.run("R2", input_cmid="U2", leaf="U2").start(run_parent="U2")
    r2.begin_step(cmid="A2")
    r2.emit(
        {"type": "start"},
        {"type": "text-start", "id": "t"},
        {"type": "text-delta", "id": "t", "delta": "Once upon"},
    )
    c.cancel(input_cmid="U2")
    r2.end_step(reason="cancelled", cancel=True)
    r2.end("cancelled")
    c.user("U3", "third", parent="A2")
    r3 = c.run("R3", input_cmid="U3", leaf="U3").start(run_parent="U3")
    r3.step([{"type": "start"}, {"type": "error", "errorText": "provider down"}], cmid="A3", reason="failed")
    r3.end("error", error=(104008, "unable to complete run; provider down"))
    c.user("U4", "fourth", parent="A3")
    return c


@pytest.mark.node
class TestBranchSelection:
    def test_simple_reply_and_trigger_lookup(self) -> None:
        """§10(a): the trigger is found by event-id; the reply folds into run R1 under CU."""
        c = Convo()
        c.user("CU", "Hello")
        r = c.run("R1", input_cmid="CU", leaf="CU").start(run_parent="CU")
        r.step(text_reply("Hi there"), cmid="CA")
        r.end()
        got = check_against_js(c, run_ids=["R1"], event_ids=["E-CU", "nope"], cmids=["CU", "CA"])
        assert got["events"] == {"E-CU": "000001", "nope": None}
        assert texts(got["messages"]) == [("user", "Hello"), ("assistant", "Hi there")]

    def test_cancelled_and_errored_turns_are_dropped_from_the_prompt(self) -> None:
        """§7.3 step 3: non-complete ancestor runs vanish together with the user input they answered."""
        c = cancelled_and_failed_turns()
        got = check_against_js(c, run_ids=["R1", "R2", "R3"], event_ids=["E-U4"])
        assert [got["runs"][r]["status"] for r in ("R1", "R2", "R3")] == ["complete", "cancelled", "error"]
        assert got["runs"]["R3"]["error"] == {
            "code": 104008,
            "message": "unable to complete run; provider down",
        }
        # the client still renders everything
        assert texts(got["messages"]) == [
            ("user", "first"),
            ("assistant", "answer one"),
            ("user", "second"),
            ("assistant", "Once upon"),
            ("user", "third"),
            ("assistant", ""),
            ("user", "fourth"),
        ]
        tree = c.tree()
        c.run("R4", input_cmid="U4", leaf="U4").start(run_parent="U4")
        tree.apply_all(c.ch.live[-1:])
        assert texts(agent_prompt(tree, "E-U4", "R4")) == [
            ("user", "first"),
            ("assistant", "answer one"),
            ("user", "fourth"),
        ]

    @pytest.mark.parametrize("close_stream", [False, True])
    def test_d_error_run(self, close_stream: bool) -> None:
        """§10(d): the source fails mid-stream; the official path leaves the stream 'streaming', the
        cleaner one closes it cancelled. Either way clients keep the partial text and mark the run error."""
        c = Convo()
        c.user("CU", "tell me a story")
        r = c.run("R1", input_cmid="CU", leaf="CU").start(run_parent="CU")
        r.begin_step(cmid="CA")
        r.emit({"type": "start"}, {"type": "start-step"}, {"type": "text-start", "id": "txt-0"})
        r.emit({"type": "text-delta", "id": "txt-0", "delta": "Once upon"})
        r.end_step(reason="failed", cancel=close_stream)
        r.end("error", error=(104008, "unable to complete run; upstream 500"))
        status = [m.transport_headers.get("status") for m in c.ch.history() if m.action == "message.update"]
        assert status == ["cancelled" if close_stream else "streaming"]
        got = check_against_js(c, run_ids=["R1"])
        assert got["runs"]["R1"]["status"] == "error"
        assert got["runs"]["R1"]["error"] == {
            "code": 104008,
            "message": "unable to complete run; upstream 500",
        }
        assert got["runs"]["R1"]["steps"][0]["status"] == "failed"
        assert texts(got["messages"]) == [("user", "tell me a story"), ("assistant", "Once upon")]

    def test_current_run_is_kept_even_while_active(self) -> None:
        """The run being served stays in the branch (its steering messages and earlier passes)."""
        c = Convo()
        c.user("U1", "q")
        r = c.run("R1", input_cmid="U1", leaf="U1").start(run_parent="U1")
        r.step(text_reply("partial pass"), cmid="A1")
        tree = c.tree()
        assert tree.run("R1").status == "active"  # type: ignore[union-attr]
        assert texts(agent_prompt(tree, "E-U1", "R1")) == [("user", "q"), ("assistant", "partial pass")]

    def test_missing_ancestor_drives_history_paging(self) -> None:
        """The walk reports the first parent not folded yet, and None once it reaches the root."""
        c = cancelled_and_failed_turns()
        history = c.ch.history()
        tree = ConversationTree()
        tree.apply_all(history[-3:])  # only U4 (one wire) and the end of R3
        assert missing_ancestor(tree, "U4") == "A3"
        assert missing_ancestor(tree, "nope") == "nope"
        tree.apply_all(history)
        assert missing_ancestor(tree, "U4") is None


@pytest.mark.node
class TestRegenerateAndEdit:
    def test_head_regenerate_creates_a_sibling_run(self) -> None:
        """Regenerate of the first assistant message: the new run is a sibling; the latest is shown."""
        c = Convo()
        c.user("CU", "tell a joke")
        r1 = c.run("R1", input_cmid="CU", leaf="CU").start(run_parent="CU")
        r1.step(text_reply("joke one"), cmid="CA")
        r1.end()
        c.regenerate("C3", parent="CU", target="CA")
        tree = c.tree()
        trigger = TriggerInfo.from_message(tree.find_event("E-C3"))  # type: ignore[arg-type]
        assert trigger.kind == "regenerate"
        anchors = resolve_anchors(tree, trigger)
        assert anchors.leaf == "CU" and anchors.run_parent == "CU"  # the carrier backs no node
        r2 = c.run("R2", input_cmid="C3", leaf=anchors.leaf, regenerates="CA").start(
            run_parent=anchors.run_parent
        )
        tree.apply_all(c.ch.live[-1:])
        assert texts(agent_prompt(tree, "E-C3", "R2")) == [("user", "tell a joke")]
        r2.step(text_reply("joke two"), cmid="CB")
        r2.end()
        got = check_against_js(c, run_ids=["R1", "R2"], event_ids=["E-C3"])
        assert got["runs"]["R2"]["regenerates"] == "CA"
        assert texts(got["messages"]) == [("user", "tell a joke"), ("assistant", "joke two")]
        tree = c.tree()
        assert [n.key for n in tree.siblings("R1")] == ["R1", "R2"]
        r1_selected = tree.visible_messages({tree.group_root("R2"): "R1"})
        assert texts(r1_selected) == [("user", "tell a joke"), ("assistant", "joke one")]

    def test_non_head_regenerate_truncates_the_prompt(self) -> None:
        """Regenerating the 2nd assistant message of a run: the prompt stops just before it."""
        c = Convo()
        c.user("CU", "q")
        r1 = c.run("R1", input_cmid="CU", leaf="CU").start(run_parent="CU")
        r1.step(text_reply("pass one"), cmid="CA1")
        r1.step(text_reply("pass two", stream_id="t1"), cmid="CA2")
        r1.end()
        c.regenerate("C3", parent="CA1", target="CA2")
        tree = c.tree()
        anchors = resolve_anchors(tree, TriggerInfo.from_message(tree.find_event("E-C3")))  # type: ignore[arg-type]
        assert anchors.leaf == "CA1"
        r2 = c.run("R2", input_cmid="C3", leaf="CA1", regenerates="CA2").start(run_parent="CA1")
        tree.apply_all(c.ch.live[-1:])
        assert texts(agent_prompt(tree, "E-C3", "R2")) == [("user", "q"), ("assistant", "pass one")]
        r2.step(text_reply("pass two again"), cmid="CB")
        r2.end()
        got = check_against_js(c, run_ids=["R1", "R2"])
        assert texts(got["messages"]) == [
            ("user", "q"),
            ("assistant", "pass one"),
            ("assistant", "pass two again"),
        ]

    def test_edit_makes_navigable_input_siblings(self) -> None:
        """An edit (fork-of) is a sibling input; the latest is selected by default, either can be chosen."""
        c = Convo()
        c.user("U1", "helo")
        r1 = c.run("R1", input_cmid="U1", leaf="U1").start(run_parent="U1")
        r1.step(text_reply("what?"), cmid="A1")
        r1.end()
        c.user("U2", "hello", fork_of="U1")
        tree = c.tree()
        assert TriggerInfo.from_message(tree.find_event("E-U2")).kind == "edit"  # type: ignore[arg-type]
        r2 = c.run("R2", input_cmid="U2", leaf="U2", fork_of="U1").start(run_parent="U2")
        r2.step(text_reply("hi!"), cmid="A2")
        r2.end()
        got = check_against_js(c, run_ids=["R1", "R2"], cmids=["U1", "U2"], history_equals_live=False)
        # live, the original was on screen when the edit arrived: the group stays pinned to it
        assert texts(got["messages"]) == [("user", "helo"), ("assistant", "what?")]
        view = live_view(c.ch.live)
        branch = view.branch("U1")
        assert branch.kind == "edit" and branch.index == 0
        assert [m["parts"][0]["text"] for m in branch.siblings] == ["helo", "hello"]
        assert view.select("U1", 1)
        assert texts(view.messages()) == [("user", "hello"), ("assistant", "hi!")]
        # a late joiner (history) sees the latest sibling
        assert texts(history_view(c.ch.history(), 100).messages()) == [
            ("user", "hello"),
            ("assistant", "hi!"),
        ]
        tree = c.tree()
        assert [n.key for n in tree.siblings("U2")] == ["U1", "U2"]
        assert tree.group_root("U2") == "U1"
        assert texts(tree.visible_messages({"U1": "U1"})) == [("user", "helo"), ("assistant", "what?")]
        assert texts(agent_prompt(tree, "E-U2", "R2")) == [("user", "hello"), ("assistant", "hi!")]


@pytest.mark.node
class TestSteeringAndConcurrency:
    def test_steering_folds_into_the_run_and_is_deferred_until_answered(self) -> None:
        """§11.2-3: a run-tagged user input folds into the run; unanswered it moves to the prompt's end."""
        c = Convo()
        c.user("U1", "write a poem")
        r = c.run("R1", input_cmid="U1", leaf="U1").start(run_parent="U1")
        # the steer lands before the pass's first output: by serial it sorts before the answer
        c.user("S1", "make it rhyme", run_id="R1")
        r.begin_step(cmid="A1")
        r.emit({"type": "start"}, {"type": "start-step"}, {"type": "text-start", "id": "t"})
        r.emit(
            {"type": "text-delta", "id": "t", "delta": "Roses are red"},
            {"type": "text-end", "id": "t"},
            {"type": "finish"},
        )
        r.end_step()
        tree = ConversationTree()
        results = [tree.apply(m) for m in c.ch.live]
        steer = [res for res in results if res.run_id == "R1" and res.inputs]
        assert len(steer) == 1 and steer[0].codec_message_id == "S1"
        tracker = SteerTracker()
        tracker.add_pending("S1")
        assert texts(agent_prompt(tree, "E-U1", "R1")) == [
            ("user", "write a poem"),
            ("user", "make it rhyme"),
            ("assistant", "Roses are red"),
        ]
        assert texts(agent_prompt(tree, "E-U1", "R1", tracker)) == [
            ("user", "write a poem"),
            ("assistant", "Roses are red"),
            ("user", "make it rhyme"),
        ]
        tracker.drain_pending()
        r.stamp_steers(tracker.consume_recently_processed())
        r.step(text_reply("Violets are blue"), cmid="A2")
        r.end()
        stamped = [tree.apply(m) for m in c.ch.live[len(results) :]]
        assert {res.steer_codec_message_ids for res in stamped if res.codec_message_id == "A2"} == {("S1",)}
        assert not tracker.is_unresponded("S1")
        check_against_js(c, run_ids=["R1"], event_ids=["E-S1"], cmids=["S1"])

    def test_concurrent_runs_interleave_independently(self) -> None:
        """§11.4: two runs streaming at once fold into their own nodes and branches."""
        c = Convo()
        c.user("U1", "left", client_id="alice")
        c.user("U2", "right", client_id="bob")
        ra = c.run("RA", input_cmid="U1", leaf="U1", owner="alice").start(run_parent="U1")
        rb = c.run("RB", input_cmid="U2", leaf="U2", owner="bob").start(run_parent="U2")
        ra.begin_step(cmid="AA")
        rb.begin_step(cmid="AB")
        for a, b in zip(text_reply("alpha beta"), text_reply("gamma delta"), strict=True):
            ra.emit(a)
            rb.emit(b)
        ra.end_step()
        rb.end_step()
        rb.end()
        ra.end("cancelled")
        got = check_against_js(c, run_ids=["RA", "RB"], cmids=["AA", "AB"])
        assert got["runs"]["RA"]["messages"] == ["AA"] and got["runs"]["RB"]["messages"] == ["AB"]
        tree = c.tree()
        assert texts(agent_prompt(tree, "E-U1", "RA")) == [("user", "left"), ("assistant", "alpha beta")]
        assert texts(agent_prompt(tree, "E-U2", "RB")) == [("user", "right"), ("assistant", "gamma delta")]


def approval_convo() -> Convo:
    c = Convo()
    c.user("U1", "delete the file")
    r = c.run("R1", input_cmid="U1", leaf="U1").start(run_parent="U1")
    r.step(
        [
            {"type": "start"},
            {"type": "start-step"},
            {
                "type": "tool-input-available",
                "toolCallId": "c1",
                "toolName": "rm",
                "input": {"path": "/tmp/x"},
            },
            {"type": "tool-approval-request", "toolCallId": "c1", "approvalId": "ap1"},
            {"type": "finish-step"},
            {"type": "finish", "finishReason": "tool-calls"},
        ],
        cmid="A1",
    )
    r.suspend()
    return c


@pytest.mark.node
class TestSuspendResumeAndForks:
    @pytest.mark.parametrize("approved", [True, False])
    def test_approval_continuation_resumes_the_run(self, approved: bool) -> None:
        """§11.5-6: an approval response carries the run-id; the run resumes with ai-run-resume."""
        c = approval_convo()
        tree = c.tree()
        assert tree.run("R1").status == "suspended"  # type: ignore[union-attr]
        c.approve(run_id="R1", assistant_cmid="A1", tool_call_id="c1", approved=approved, parent="U1")
        tree.apply_all(c.ch.live[-1:])
        info = TriggerInfo.from_message(tree.find_event("E-approve-c1"))  # type: ignore[arg-type]
        assert info.continuation and info.kind == "continuation"
        anchors = resolve_anchors(tree, info)
        assert anchors.leaf == "A1"
        r = c.run("R1", input_cmid="A1", leaf="A1", invocation_id="I-2").start(
            run_parent=None, continuation=True
        )
        tree.apply_all(c.ch.live[-1:])
        assert tree.run("R1").status == "active"  # type: ignore[union-attr]
        prompt = [m.message for m in agent_prompt(tree, "E-approve-c1", "R1")]
        part = prompt[-1]["parts"][1]
        if approved:
            assert part["state"] == "approval-responded"
            assert part["approval"] == {"id": "ap1", "approved": True}
            assert approved_pending_tool_calls(prompt) == [ToolCall("c1", "rm", {"path": "/tmp/x"})]
            r.step(
                [
                    {"type": "tool-output-available", "toolCallId": "c1", "output": "deleted"},
                    *text_reply("done"),
                ],
                cmid="A2",
            )
        else:
            assert part["state"] == "output-denied"
            assert approved_pending_tool_calls(prompt) == []
            r.step(text_reply("ok, I won't"), cmid="A2")
        r.end()
        got = check_against_js(c, run_ids=["R1"], cmids=["A1", "A2"])
        assert got["runs"]["R1"]["status"] == "complete"
        final_tool = got["messages"][1]["message"]["parts"][1]
        assert final_tool["state"] == ("output-available" if approved else "output-denied")

    def test_late_suspend_from_an_older_invocation_is_ignored(self) -> None:
        """A suspend from the pre-resume invocation does not re-suspend the resumed run."""
        c = approval_convo()
        tree = c.tree()
        tree.apply_run_lifecycle(
            RunLifecycle(type="resume", run_id="R1", client_id="", invocation_id="I-2", serial="x1")
        )
        tree.apply_run_lifecycle(
            RunLifecycle(type="suspend", run_id="R1", client_id="", invocation_id="I-R1", serial="x2")
        )
        assert tree.run("R1").status == "active"  # type: ignore[union-attr]
        tree.apply_run_lifecycle(
            RunLifecycle(
                type="end", run_id="R1", client_id="", invocation_id="I-2", serial="x3", reason="complete"
            )
        )
        tree.apply_run_lifecycle(
            RunLifecycle(type="start", run_id="R1", client_id="", invocation_id="I-3", serial="x4")
        )
        assert tree.run("R1").status == "complete"  # type: ignore[union-attr]

    def test_client_tool_result_forks_a_fresh_run(self) -> None:
        """§11.7: a run-less assistant tool-result with forkSeed supersedes the suspended run; the fork
        run is re-keyed onto the agent's run-id and the prompt contains the seeded call + result."""
        c = Convo()
        c.user("U1", "where am I?")
        r1 = c.run("R1", input_cmid="U1", leaf="U1").start(run_parent="U1")
        tool_chunks: list[dict[str, Any]] = [
            {"type": "start"},
            {"type": "start-step"},
            {"type": "tool-input-available", "toolCallId": "c1", "toolName": "getLocation", "input": {}},
            {"type": "finish-step"},
            {"type": "finish", "finishReason": "tool-calls"},
        ]
        r1.step(tool_chunks, cmid="A1")
        r1.suspend()
        tree = c.tree()
        suspended = [m.message for m in tree.run("R1").messages]  # type: ignore[union-attr]
        assert pending_tool_calls(suspended) == [ToolCall("c1", "getLocation", {})]
        seed = {"messages": [{"codecMessageId": "F1", "message": suspended[0]}]}
        c.fork_result(
            fork_cmid="F1",
            parent="U1",
            supersedes="R1",
            tool_call_id="c1",
            output={"city": "Paris"},
            seed=seed,
        )
        tree.apply_all(c.ch.live[-1:])
        assert tree.is_superseded("R1")
        info = TriggerInfo.from_message(tree.find_event("E-fork-F1"))  # type: ignore[arg-type]
        assert info.kind == "fork" and not info.continuation
        anchors = resolve_anchors(tree, info)
        assert (anchors.leaf, anchors.run_parent) == ("F1", "U1")
        r2 = c.run("R2", input_cmid="F1", leaf="F1").start(run_parent="U1")
        tree.apply_all(c.ch.live[-1:])
        assert isinstance(tree.node_by_codec_message_id("F1"), RunNode) and tree.run("R2") is not None
        assert tree.run("F1") is None
        prompt = [m.message for m in agent_prompt(tree, "E-fork-F1", "R2")]
        assert [m["role"] for m in prompt] == ["user", "assistant"]
        assert prompt[1]["parts"][1]["state"] == "output-available"
        assert prompt[1]["parts"][1]["output"] == {"city": "Paris"}
        r2.step(text_reply("You are in Paris"), cmid="A2")
        r2.end()
        got = check_against_js(c, run_ids=["R1", "R2"], cmids=["F1", "A2"])
        assert got["nodes"] == {"F1": "R2", "A2": "R2"}
        assert got["runs"]["R1"]["status"] == "suspended"
        assert texts(got["messages"]) == [
            ("user", "where am I?"),
            ("assistant", ""),
            ("assistant", "You are in Paris"),
        ]

    def test_two_tabs_answering_the_same_call_make_sibling_forks(self) -> None:
        """Two forks of one suspended run are siblings under the user input; the latest is shown."""
        c = Convo()
        c.user("U1", "pick")
        r1 = c.run("R1", input_cmid="U1", leaf="U1").start(run_parent="U1")
        r1.step(
            [
                {"type": "start"},
                {"type": "tool-input-available", "toolCallId": "c1", "toolName": "ask", "input": {}},
            ],
            cmid="A1",
        )
        r1.suspend()
        msg = c.tree().run("R1").messages[0].message  # type: ignore[union-attr]
        for fork, answer in (("F1", "red"), ("F2", "blue")):
            c.fork_result(
                fork_cmid=fork,
                parent="U1",
                supersedes="R1",
                tool_call_id="c1",
                output=answer,
                seed={"messages": [{"codecMessageId": fork, "message": msg}]},
            )
        for run_id, fork in (("RF1", "F1"), ("RF2", "F2")):
            rf = c.run(run_id, input_cmid=fork, leaf=fork).start(run_parent="U1")
            rf.step(text_reply(f"chose via {fork}"), cmid=f"A-{fork}")
            rf.end()
        got = check_against_js(c, run_ids=["R1", "RF1", "RF2"], cmids=["F1", "F2"])
        assert texts(got["messages"])[-1] == ("assistant", "chose via F2")
        tree = c.tree()
        assert [n.key for n in tree.siblings("RF1")] == ["RF1", "RF2"]


@pytest.mark.node
class TestStepGatingAndOrdering:
    def test_retried_step_supersedes_the_failed_attempt(self) -> None:
        """§3.4: outputs of a step attempt that a later ai-step-start with the same step-id replaced
        are not folded."""
        c = Convo()
        c.user("U1", "q")
        r = c.run("R1", input_cmid="U1", leaf="U1").start(run_parent="U1")
        r.step(text_reply("first attempt"), cmid="A1", step_id="I-R1-x", reason="failed")
        r.step(text_reply("second attempt"), cmid="A2", step_id="I-R1-x")
        r.end()
        got = check_against_js(c, run_ids=["R1"])
        assert got["runs"]["R1"]["steps"] == [{"stepId": "I-R1-x", "status": "complete", "attemptCount": 2}]
        assert texts(got["messages"]) == [("user", "q"), ("assistant", "second attempt")]

    def test_history_pages_in_any_order_fold_like_js(self) -> None:
        """Late earlier-serial wires refold the node; every page size matches the JS session, one page
        equals the live fold, and re-deliveries change nothing."""
        c = cancelled_and_failed_turns()
        live = [m.to_json() for m in c.tree().visible_messages()]
        history = c.ch.history()
        assert [m.to_json() for m in c.tree(history).visible_messages()] == live
        for size in (1, 5):
            tree = c.tree(history_fold_order(history, size))
            js = c.js_view(live=False, history=True, page_size=size)
            assert [m.to_json() for m in tree.visible_messages()] == live
            assert js_without_repeated_step_starts(js["messages"]) == live
        tree = c.tree([*history, *c.ch.live, *history_fold_order(history, 4)])
        assert [m.to_json() for m in tree.visible_messages()] == live


@pytest.mark.node
@pytest.mark.parametrize("page_size", [1, 3, 100])
def test_a_retried_step_folds_from_history_pages_like_js(page_size: int) -> None:
    """Step gating (checked once per run message) keeps a superseded attempt's outputs out in any
    fold order: history pages of any size, newest first, fold as the JS session folds them."""
    c = Convo()
    c.user("U1", "q")
    r = c.run("R1", input_cmid="U1", leaf="U1").start(run_parent="U1")
    r.step(text_reply("first attempt"), cmid="A1", step_id="I-R1-x", reason="failed")
    r.step(text_reply("second attempt"), cmid="A2", step_id="I-R1-x")
    r.step(text_reply("next step"), cmid="A3", step_id="I-R1-y")
    r.end()
    tree = c.tree(history_fold_order(c.ch.history(), page_size))
    js = c.js_view(live=False, history=True, page_size=page_size)
    folded = [m.to_json() for m in tree.visible_messages()]
    assert folded == [m.to_json() for m in c.tree().visible_messages()]
    assert folded == js_without_repeated_step_starts(js["messages"])
    assert "first attempt" not in str(js["messages"]) and "second attempt" in str(js["messages"])


def js_without_repeated_step_starts(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The JS history fold's messages without the step-start parts its decoder synthesises for a
    stream folded before its run's discrete start-step (ours keeps only those an in-order fold
    needs): the JS tree keeps that effect of its fold order."""
    out = []
    for m in messages:
        parts: list[Any] = []
        for p in m["message"]["parts"]:
            if p.get("type") == "step-start" and parts and parts[-1] == p:
                continue
            parts.append(p)
        out.append({**m, "message": {**m["message"], "parts": parts}})
    return out


class TestWireLog:
    """The per-node log keeps a message's direction once per entry (no tuple per event)."""

    def test_entries_in_serial_order_with_refold_for_an_older_one(self) -> None:
        log = WireLog()
        assert log.record("02", "m2", False, [{"type": "b"}], None, False) == "incremental"
        assert log.record("03", "m3", False, [{"type": "c"}], None, False) == "incremental"
        assert log.record("01", "m1", True, [{"kind": "a"}], None, False) == "refold"
        assert [(e.serial, e.inputs, e.events) for e in log] == [
            ("01", True, [{"kind": "a"}]),
            ("02", False, [{"type": "b"}]),
            ("03", False, [{"type": "c"}]),
        ]

    def test_a_newer_version_of_a_streamed_serial_extends_and_a_stale_one_drops(self) -> None:
        log = WireLog()
        log.record("01", "m", False, [{"type": "text-start"}], "01", True)
        assert log.record("01", "m", False, [{"type": "text-delta"}], "02", True) == "incremental"
        assert log.record("01", "m", False, [{"type": "text-delta"}], "02", True) == "dropped"
        assert [e.events for e in log] == [[{"type": "text-start"}, {"type": "text-delta"}]]
        assert log[0].decoded_through == "02"

    def test_the_same_serial_going_the_other_way_keeps_the_arrival_order(self) -> None:
        log = WireLog()
        log.record("01", "m", False, [{"type": "a"}], "01", True)
        log.record("02", "n", False, [{"type": "z"}], None, False)
        # A renamed update of serial 01 (outputs, then inputs, then outputs again): entries for 01
        # stay together, in arrival order, under the entry's message id; not the last serial: refold.
        assert log.record("01", "x", True, [{"kind": "b"}], "03", True) == "refold"
        assert log.record("01", "x", False, [{"type": "c"}], "04", True) == "refold"
        assert log.record("01", "x", False, [{"type": "c"}], "04", True) == "dropped"
        assert [(e.serial, e.message_id, e.inputs, e.events, e.decoded_through) for e in log] == [
            ("01", "m", False, [{"type": "a"}], "01"),
            ("01", "m", True, [{"kind": "b"}], "03"),
            ("01", "m", False, [{"type": "c"}], "04"),
            ("02", "n", False, [{"type": "z"}], "02"),
        ]


@pytest.mark.parametrize(
    "order", ["pages-1", "pages-3", "pages-7", "reversed", *(f"shuffled-{i}" for i in range(8))]
)
def test_nodes_stay_in_serial_order_in_any_fold_order(order: str) -> None:
    """The sorted insert tries the slot after the last one placed before bisecting: any fold order
    (history pages newest first, reversed, shuffled) leaves the nodes in serial order."""
    c = Convo()
    parent = None
    for turn in range(6):
        c.user(f"U{turn}", f"q{turn}", parent=parent)
        r = c.run(f"R{turn}", input_cmid=f"U{turn}", leaf=f"U{turn}").start(run_parent=f"U{turn}")
        r.step(text_reply(f"a{turn}"), cmid=f"A{turn}")
        r.end()
        parent = f"A{turn}"
    history = c.ch.history()
    if order.startswith("pages-"):
        folded = history_fold_order(history, int(order.removeprefix("pages-")))
    elif order == "reversed":
        folded = history[::-1]
    else:
        folded = random.Random(order).sample(history, len(history))
    expected = [n.key for n in c.tree(history).nodes()]
    assert expected == [k for t in range(6) for k in (f"U{t}", f"R{t}")]
    assert [n.key for n in c.tree(folded).nodes()] == expected
