"""Folding a run of appends as one (runtime/folding.py) gives the tree exactly what folding each
append does: the equivalence the session's cheap path for its own echoed token stream relies on."""

from __future__ import annotations

from typing import Any

from agent_worker.protocol.tree import ConversationTree
from agent_worker.protocol.vercel.encoder import UIMessageEncoder
from agent_worker.protocol.wire import InboundMessage
from agent_worker.runtime.folding import AppendDeferral
from tests.protocol.protocol_support import Channel, section_10_output_headers


def _snapshot(tree: ConversationTree) -> list[Any]:
    return [(n.key, [m.to_json() for m in n.messages]) for n in tree.nodes()]


def _reply_channel() -> Channel:
    """A reply with a text stream and a reasoning stream interleaved, then a second text step."""
    ch = Channel()
    enc = UIMessageEncoder(section_10_output_headers())
    streams: dict[str, str] = {}
    chunks: list[dict[str, Any]] = [{"type": "start"}, {"type": "start-step"}]
    chunks += [{"type": "reasoning-start", "id": "r1"}, {"type": "text-start", "id": "t1"}]
    for i in range(12):
        chunks.append({"type": "text-delta", "id": "t1", "delta": f"w{i} "})
        chunks.append({"type": "reasoning-delta", "id": "r1", "delta": f"think{i} "})
    chunks += [
        {"type": "reasoning-end", "id": "r1"},
        {"type": "text-end", "id": "t1"},
        {"type": "finish-step"},
    ]
    chunks += [{"type": "start-step"}, {"type": "text-start", "id": "t2"}]
    chunks += [{"type": "text-delta", "id": "t2", "delta": f"more{i} "} for i in range(5)]
    chunks += [
        {"type": "text-end", "id": "t2"},
        {"type": "finish-step"},
        {"type": "finish", "finishReason": "stop"},
    ]
    for chunk in chunks:
        ch.run_ops(enc.encode(chunk), streams)
    return ch


def _fold_deferred(messages: list[InboundMessage]) -> tuple[ConversationTree, int]:
    tree, deferral, folds = ConversationTree(), AppendDeferral(), 0
    for msg in messages:
        if deferral.offer(msg):
            continue
        for held in [*deferral.drain(), msg]:
            tree.apply(held)
            folds += 1
    for held in deferral.drain():
        tree.apply(held)
        folds += 1
    return tree, folds


def test_deferred_appends_fold_to_the_same_tree() -> None:
    live = _reply_channel().live
    each = ConversationTree()
    for msg in live:
        each.apply(msg)
    deferred, folds = _fold_deferred(live)
    assert _snapshot(deferred) == _snapshot(each)
    appends = sum(1 for m in live if m.action == "message.append")
    assert folds < len(live) - appends + 4  # the appends folded in a handful of merged messages
    text = "".join(f"w{i} " for i in range(12))
    assert text in str(_snapshot(deferred))


def test_only_string_appends_without_event_id_are_held() -> None:
    deferral = AppendDeferral()
    create = InboundMessage(name="ai-output", data="", extras={}, action="message.create", serial="s1")
    binary = InboundMessage(name="x", data=b"\x00", extras={}, action="message.append", serial="s1")
    trigger = InboundMessage(
        name="x",
        data="a",
        extras={"ai": {"transport": {"event-id": "e"}}},
        action="message.append",
        serial="s1",
    )
    assert not deferral.offer(create) and not deferral.offer(binary) and not deferral.offer(trigger)
    first = InboundMessage(
        name="x", data="a", extras={"n": 1}, action="message.append", serial="s1", version_serial="v1"
    )
    second = InboundMessage(
        name="x", data="b", extras={"n": 2}, action="message.append", serial="s1", version_serial="v2"
    )
    assert deferral.offer(first) and deferral.offer(second)
    (merged,) = deferral.drain()
    assert (merged.data, merged.extras, merged.version_serial) == ("ab", {"n": 2}, "v2")
    assert deferral.drain() == []
