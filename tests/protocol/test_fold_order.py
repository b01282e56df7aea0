"""The tree a session folds does not depend on the order its messages arrive in.

A run's later messages (step-start, outputs, run-end) can fold before its ``ai-run-start``: live after
a continuity loss (the messages after the new attach point arrive while history brings the older
ones), when history and live overlap, or with history read newest page first. Whatever the order,
the folded tree — every node's fields (serials, parent, owner, statuses, steps) and its messages
(step framing included) — must equal the fold of the channel in serial order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_worker.protocol.branch import missing_ancestor, select_branch
from agent_worker.protocol.headers import (
    AI_RUN_END,
    AI_RUN_START,
    AI_STEP_END,
    AI_STEP_START,
    build_input_headers,
    build_lifecycle_headers,
    build_step_headers,
    lifecycle_message,
)
from agent_worker.protocol.openai import encoder as openai_codec
from agent_worker.protocol.tree import ConversationTree
from agent_worker.protocol.wire import InboundMessage
from tests.protocol.convo import Convo, text_reply
from tests.protocol.protocol_support import dump, section_10_output_headers
from tests.protocol.test_protocol_history_pages import approved_twice, pages_newest_first, two_turns
from tests.protocol.test_protocol_openai import reply_events


def fold(messages: list[InboundMessage]) -> ConversationTree:
    tree = ConversationTree()
    tree.apply_all(messages)
    return tree


def tool_then_text() -> Convo:
    """One run, two steps (a tool call, then the answer), then a second turn still running."""
    c = Convo()
    c.user("U1", "weather?")
    r = c.run("R1", input_cmid="U1", leaf="U1").start(run_parent="U1")
    r.begin_step(cmid="A1")
    r.emit(
        {"type": "start"},
        {"type": "start-step"},
        {"type": "tool-input-start", "toolCallId": "c1", "toolName": "w"},
        {"type": "tool-input-delta", "toolCallId": "c1", "inputTextDelta": '{"city":"Paris"}'},
        {"type": "tool-input-available", "toolCallId": "c1", "toolName": "w", "input": {"city": "Paris"}},
        {"type": "tool-output-available", "toolCallId": "c1", "output": "sun"},
        {"type": "finish-step"},
    )
    r.end_step()
    r.begin_step(cmid="A1")
    r.emit(
        {"type": "start-step"},
        {"type": "reasoning-start", "id": "r"},
        {"type": "reasoning-delta", "id": "r", "delta": "it says sun"},
        {"type": "reasoning-end", "id": "r"},
        {"type": "text-start", "id": "t"},
        {"type": "text-delta", "id": "t", "delta": "Sunny "},
        {"type": "text-delta", "id": "t", "delta": "in Paris"},
        {"type": "text-end", "id": "t"},
        {"type": "finish-step"},
        {"type": "finish", "finishReason": "stop"},
    )
    r.end_step()
    r.end()
    c.user("U2", "and tomorrow?", parent="A1")
    r2 = c.run("R2", input_cmid="U2", leaf="U2").start(run_parent="U2")
    r2.begin_step(cmid="A2")
    r2.emit({"type": "start"}, {"type": "start-step"}, {"type": "text-start", "id": "t"})
    r2.emit({"type": "text-delta", "id": "t", "delta": "Rain, "})
    r2.emit({"type": "text-delta", "id": "t", "delta": "I think"})
    return c


def approved_and_ended() -> Convo:
    """A run suspended twice for approvals, resumed by other invocations, then ended."""
    c = approved_twice()
    r = c.run("R1", input_cmid="A2", leaf="A2", invocation_id="I-3").start(run_parent=None, continuation=True)
    r.step(text_reply("removed both"), cmid="A2")
    r.end()
    return c


def cancelled_then_regenerated() -> Convo:
    c = Convo()
    c.user("U1", "tell me a story")
    r1 = c.run("R1", input_cmid="U1", leaf="U1").start(run_parent="U1")
    r1.begin_step(cmid="A1")
    r1.emit({"type": "start"}, {"type": "start-step"}, {"type": "text-start", "id": "t"})
    r1.emit({"type": "text-delta", "id": "t", "delta": "Once upon"})
    r1.end_step(reason="cancelled", cancel=True)
    r1.end("cancelled")
    c.regenerate("G1", parent="U1", target="A1")
    r2 = c.run("R2", input_cmid="G1", leaf="U1", regenerates="A1").start(run_parent="U1")
    r2.step(text_reply("A short story."), cmid="A1b")
    r2.end()
    return c


def openai_responses_turn() -> Convo:
    """One turn in the other codec (``openai-responses``): reasoning, text, a function call, ..."""
    c = Convo()
    headers = build_input_headers(codec_message_id="CU", event_id="E1", run_client_id="user-abc")
    for m in openai_codec.encode_user_message(openai_codec.user_text_message("weather?"), headers):
        c.ch.publish(m, client_id="user-abc")
    run: dict[str, Any] = {
        "run_id": "R1",
        "run_client_id": "user-abc",
        "invocation_id": "I1",
        "input_client_id": "user-abc",
    }
    start = build_lifecycle_headers(**run, input_codec_message_id="CU", parent="CU")
    c.ch.publish(lifecycle_message(AI_RUN_START, start))
    step: dict[str, Any] = {**run, "step_id": "I1-step-0", "step_client_id": "user-abc"}
    serial = c.ch.publish(lifecycle_message(AI_STEP_START, build_step_headers(**step)))
    enc = openai_codec.ResponsesEncoder(section_10_output_headers())
    enc.set_default_header("step-start-serial", serial)
    streams: dict[str, str] = {}
    for event in reply_events():
        c.ch.run_ops(enc.encode(event), streams)
    c.ch.run_ops(enc.cancel_open_streams(), streams)
    end_step = build_step_headers(**step, step_start_serial=serial, reason="complete")
    c.ch.publish(lifecycle_message(AI_STEP_END, end_step))
    end = build_lifecycle_headers(**run, input_codec_message_id="CU", reason="complete")
    c.ch.publish(lifecycle_message(AI_RUN_END, end))
    return c


CONVOS: dict[str, Callable[[], Convo]] = {
    "two_turns": two_turns,
    "tool_then_text": tool_then_text,
    "approved_and_ended": approved_and_ended,
    "cancelled_then_regenerated": cancelled_then_regenerated,
    "openai_responses_turn": openai_responses_turn,
}


def after_a_loss(c: Convo, cut: int, page_size: int, *, live_first: bool) -> list[InboundMessage]:
    """What a session folds when its channel lost continuity before live delivery ``cut``: the
    deliveries from ``cut`` on arrive live (the first append to a message created before the cut
    comes as an update with its whole text, as Ably delivers it after an attach), the messages
    created before the cut come from history (newest page first, each page oldest first)."""
    live = c.ch.live
    before = {m.serial for m in live[:cut] if m.action == "message.create"}
    text: dict[str | None, str] = {}
    suffix: list[InboundMessage] = []
    for i, m in enumerate(live):
        data = m.data if isinstance(m.data, str) else ""
        text[m.serial] = text.get(m.serial, "") + data if m.action == "message.append" else data
        if i < cut:
            continue
        if m.action == "message.append" and m.serial in before:
            before.discard(m.serial)  # only its first append comes as the whole text
            suffix.append(dataclasses.replace(m, action="message.update", data=text[m.serial]))
        else:
            suffix.append(m)
    created_before = {m.serial for m in live[:cut] if m.action == "message.create"}
    older = [m for m in c.ch.history() if m.serial in created_before]
    paged = [m for page in pages_newest_first(older, page_size) for m in page]
    return suffix + paged if live_first else paged + suffix


@pytest.mark.parametrize("name", sorted(CONVOS))
def test_the_live_fold_equals_the_history_fold(name: str) -> None:
    """The reference below is the history fold: an in-order live session folds the same tree."""
    c = CONVOS[name]()
    assert dump(fold(c.ch.live)) == dump(fold(c.ch.history()))


@pytest.mark.parametrize("live_first", [True, False], ids=["live-first", "history-first"])
@pytest.mark.parametrize("name", sorted(CONVOS))
def test_a_continuity_loss_at_any_point_folds_the_serial_ordered_tree(name: str, live_first: bool) -> None:
    """Every cut point (between any two deliveries, mid-stream included) and page size: a run whose
    run-start and opening chunks come from history after its later messages arrived live folds to
    the same tree as the channel folded in order."""
    c = CONVOS[name]()
    expected = dump(fold(c.ch.history()))
    for cut in range(len(c.ch.live) + 1):
        for page_size in (1, 2, 5, 1000):
            got = dump(fold(after_a_loss(c, cut, page_size, live_first=live_first)))
            assert got == expected, (cut, page_size)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(sorted(CONVOS)), st.randoms(use_true_random=False))
def test_any_arrival_order_folds_the_serial_ordered_tree(name: str, rnd: Any) -> None:
    """History messages in any order, some delivered twice: the serial-ordered tree."""
    history = CONVOS[name]().ch.history()
    expected = dump(fold(history))
    shuffled = [*history, *rnd.sample(history, k=len(history) // 4)]
    rnd.shuffle(shuffled)
    assert dump(fold(shuffled)) == expected


def test_a_run_start_folded_last_gives_the_run_its_own_serial_and_owner() -> None:
    """The plain case, spelled out: a run known first from its step-start and outputs."""
    c = two_turns()
    history = c.ch.history()
    start = next(m for m in history if m.name == "ai-run-start")
    tree = fold([m for m in history if m is not start])
    run = tree.run("R1")
    # Until then its owner is the one its first output names (the run-start's fields win when it folds).
    assert run is not None and run.start_serial != start.serial and run.client_id == "user-abc"
    tree.apply(start)
    assert (run.start_serial, run.client_id, run.parent) == (start.serial, "user-abc", "U1")
    assert [n.key for n in tree.nodes()] == [n.key for n in fold(history).nodes()]


@pytest.mark.parametrize("name", sorted(CONVOS))
def test_a_history_cut_before_a_run_start_folds_the_same_in_any_order(name: str) -> None:
    """History read back only to just after a run's ``ai-run-start`` (retention, a bounded read): the
    run is known from its step-start and outputs only. Its parent and owner come from its oldest wire
    that names them (its first output), whichever of them folded first; before, a run created by its
    step-start kept no parent and no owner, while one created by an output had both."""
    history = CONVOS[name]().ch.history()
    for start in [m for m in history if m.name == AI_RUN_START]:
        cut = history[history.index(start) + 1 :]
        in_order = fold(cut)
        assert dump(fold(list(reversed(cut)))) == dump(in_order)
        assert dump(fold([m for p in pages_newest_first(cut, 2) for m in p])) == dump(in_order)
        run = in_order.run(start.transport_headers["run-id"])
        assert run is not None and not in_order.run_start_seen(run.run_id)
        first_output = next(
            m
            for m in cut
            if m.transport_headers.get("run-id") == run.run_id and "parent" in m.transport_headers
        )
        assert run.parent == first_output.transport_headers["parent"]
        assert run.client_id == first_output.transport_headers["run-client-id"]


def test_a_cut_run_start_does_not_hide_the_branch_above_it() -> None:
    """A run whose ``ai-run-start`` is missing but whose input is in the tree (a continuity gap read
    stopped short of it): the branch walk goes through the run to its input instead of reporting the
    run as an ancestor still to page for (which paged the whole channel looking for it)."""
    history = two_turns().ch.history()
    start = next(m for m in history if m.name == AI_RUN_START and m.transport_headers["run-id"] == "R2")
    tree = fold([m for m in history if m is not start])
    assert missing_ancestor(tree, "U3") is None
    assert [n.key for n in select_branch(tree, "U3", "R3")] == ["U1", "R1", "U2", "R2", "U3"]
