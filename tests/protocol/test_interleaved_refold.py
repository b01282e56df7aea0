"""An append to a stream that is not its run's newest wire (two streams of one run interleaved, or a
participant keeping a stream open while other messages follow) refolds the run from its log. Done at
every such append that was quadratic: 400 interleaved deltas, 400 refolds, ~160,000 events folded
again. The refold is now deferred to the node's next read (``DeferredProjection``): the appends
between two reads cost one refold, and a read sees exactly what refolding at every append gave —
the history fold of the same messages, and the JS tree's fold."""

from __future__ import annotations

from typing import Any

from agent_worker.protocol.nodes import DeferredProjection, RunNode
from agent_worker.protocol.tree import ConversationTree
from agent_worker.protocol.wire import InboundMessage
from tests.protocol.convo import AgentRun, Convo
from tests.protocol.protocol_support import dump
from tests.protocol.test_protocol_tree import check_against_js

DELTAS = 400


def interleaved_tools(n: int) -> Convo:
    """One step streaming two tool calls' inputs at once, their deltas alternating."""
    c = Convo()
    c.user("U1", "go")
    r = c.run("R1", input_cmid="U1", leaf="U1").start(run_parent="U1")
    r.begin_step(cmid="A1")
    r.emit(
        {"type": "start"},
        {"type": "start-step"},
        {"type": "tool-input-start", "toolCallId": "a", "toolName": "w"},
        {"type": "tool-input-start", "toolCallId": "b", "toolName": "w"},
    )
    for _ in range(n):
        r.emit(
            {"type": "tool-input-delta", "toolCallId": "a", "inputTextDelta": "x"},
            {"type": "tool-input-delta", "toolCallId": "b", "inputTextDelta": "y"},
        )
    r.emit(
        {"type": "tool-input-available", "toolCallId": "a", "toolName": "w", "input": {"a": 1}},
        {"type": "tool-input-available", "toolCallId": "b", "toolName": "w", "input": {"b": 2}},
        {"type": "finish-step"},
        {"type": "finish", "finishReason": "tool-calls"},
    )
    r.end_step()
    r.end()
    return c


def interleaved_reasoning(n: int) -> Convo:
    """Reasoning and text streamed at once (a reasoning stream kept open while the text streams)."""
    c = Convo()
    c.user("U1", "go")
    r = c.run("R1", input_cmid="U1", leaf="U1").start(run_parent="U1")
    r.begin_step(cmid="A1")
    r.emit({"type": "start"}, {"type": "start-step"}, {"type": "reasoning-start", "id": "r"})
    r.emit({"type": "text-start", "id": "t"})
    for i in range(n):
        r.emit(
            {"type": "reasoning-delta", "id": "r", "delta": f"think {i}. "},
            {"type": "text-delta", "id": "t", "delta": f"say {i}. "},
        )
    r.emit(
        {"type": "reasoning-end", "id": "r"},
        {"type": "text-end", "id": "t"},
        {"type": "finish-step"},
        {"type": "finish", "finishReason": "stop"},
    )
    r.end_step()
    r.end()
    return c


def hostile_participant(n: int) -> Convo:
    """A second participant publishing into the agent's run: it opens a stream of its own, keeps it
    open and appends to it between every message the agent sends (each of its appends lands before
    the run's newest wire), and now and then a ``finish-step`` and a new stream without ``start-step``
    (a decoder repair each, on a run folded out of order)."""
    c = Convo()
    c.user("U1", "go")
    agent = c.run("R1", input_cmid="U1", leaf="U1").start(run_parent="U1")
    agent.begin_step(cmid="A1")
    agent.emit({"type": "start"}, {"type": "start-step"})
    mallory = AgentRun(c, "R1", "I-mallory", "mallory", "U1", "U1")
    mallory.begin_step(cmid="M1")
    mallory.emit({"type": "text-start", "id": "m"})
    for i in range(n):
        agent.emit({"type": "data-progress", "data": {"i": i}})
        mallory.emit({"type": "text-delta", "id": "m", "delta": f"{i} "})
        if i % 50 == 0:
            mallory.emit(
                {"type": "finish-step"},
                {"type": "text-start", "id": f"s{i}"},
                {"type": "text-delta", "id": f"s{i}", "delta": "!"},
                {"type": "text-end", "id": f"s{i}"},
            )
    mallory.emit({"type": "text-end", "id": "m"})
    agent.emit({"type": "finish-step"}, {"type": "finish", "finishReason": "stop"})
    agent.end_step()
    agent.end()
    return c


def _fold(messages: list[InboundMessage], *, read_each: bool = False) -> ConversationTree:
    """``read_each``: read every node after every message — what refolding at each append did."""
    tree = ConversationTree()
    for m in messages:
        tree.apply(m)
        if read_each:
            for node in tree.nodes():
                _ = node.messages
    return tree


def _run_events(tree: ConversationTree) -> int:
    (run,) = [e for e in tree._nodes.values() if isinstance(e.node, RunNode)]
    return sum(map(len, run.log))


def _tool_inputs(tree: ConversationTree) -> list[Any]:
    run = tree.run("R1")
    assert run is not None
    return [p.get("input") for m in run.messages for p in m.message["parts"] if "toolCallId" in p]


def test_interleaved_streams_refold_once_per_read_with_the_history_folds_result() -> None:
    for convo in (interleaved_tools(DELTAS), interleaved_reasoning(DELTAS)):
        live = _fold(convo.ch.live)
        run = live.run("R1")
        assert run is not None
        assert live.refold_stats == (0, 0)  # nothing read yet: the refold waits
        assert type(run.projection) is DeferredProjection
        folded = dump(live)  # the read: one refold of the run, each of its events once
        assert live.refold_stats == (1, _run_events(live))  # was 400 refolds, ~160,000 events
        assert dump(live) == folded and live.refold_stats[0] == 1  # read again: nothing to redo
        assert folded == dump(_fold(convo.ch.history()))
        # Exactly what refolding at every append gave (a read after each message forces that).
        eager = _fold(convo.ch.live, read_each=True)
        assert dump(eager) == folded
        assert eager.refold_stats[0] >= DELTAS  # the old cost, now one refold per read
    # Each call's own deltas, whole (the streamed input text closes each call's stream).
    assert _tool_inputs(_fold(interleaved_tools(3).ch.live)) == ["xxx", "yyy"]


def test_every_prefix_reads_as_the_eager_fold() -> None:
    """Reads between appends (a deferred refold resolved mid-stream, more appends deferred after it)
    see at each point what the eager fold had."""
    messages = interleaved_reasoning(12).ch.live
    lazy = ConversationTree()
    for i, m in enumerate(messages):
        lazy.apply(m)
        if i % 3 == 0:
            assert dump(lazy) == dump(_fold(messages[: i + 1], read_each=True))
    assert dump(lazy) == dump(_fold(messages, read_each=True))


def test_a_participant_interleaving_into_a_run_costs_one_refold_per_read() -> None:
    convo = hostile_participant(DELTAS)
    live = _fold(convo.ch.live)
    assert live.refold_stats == (0, 0)
    folded = dump(live)
    assert live.refold_stats == (1, _run_events(live))
    assert folded == dump(_fold(convo.ch.history()))
    assert folded == dump(_fold(convo.ch.live, read_each=True))
    (mallorys,) = [m.message for n in live.nodes() for m in n.messages if m.codec_message_id == "M1"]
    texts = [p["text"] for p in mallorys["parts"] if p["type"] == "text"]
    assert texts[0] == "".join(f"{i} " for i in range(DELTAS))
    assert texts[1:] == ["!"] * (DELTAS // 50)


def test_interleaved_streams_fold_as_the_js_tree_does() -> None:
    """The JS ClientSession (live and 3-message history pages) folds the same messages alike."""
    check_against_js(interleaved_tools(6), run_ids=["R1"])
    check_against_js(interleaved_reasoning(6), run_ids=["R1"])
    check_against_js(hostile_participant(6), run_ids=["R1"])
