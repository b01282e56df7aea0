"""A decoder repair (a stream opened without the ``start-step`` before it) refolded its whole run,
so an agent that sends ``finish-step`` but never ``start-step`` — a repair per step — cost a fold of
the run per step: quadratic in the run's length. A run folded in serial order now keeps the
decoder's repairs as they are (they are what a serial-order refold keeps); the result equals the
history fold, and a run folded out of order is still refolded through the filter."""

from __future__ import annotations

from typing import Any

from agent_worker.protocol.tree import ConversationTree
from agent_worker.protocol.wire import InboundMessage
from tests.protocol.convo import Convo
from tests.protocol.protocol_support import dump

STEPS = 200


def unframed_run(steps: int) -> Convo:
    """One run whose agent sends ``start`` and a ``finish-step`` after each step's text, but never
    ``start-step`` (the decoder repairs each step's opening)."""
    c = Convo()
    c.user("U1", "go")
    r = c.run("R1", input_cmid="U1", leaf="U1").start(run_parent="U1")
    r.begin_step(cmid="A1")
    r.emit({"type": "start"})
    for i in range(steps):
        r.emit(
            {"type": "text-start", "id": f"t{i}"},
            {"type": "text-delta", "id": f"t{i}", "delta": f"step {i}. "},
            {"type": "text-end", "id": f"t{i}"},
            {"type": "finish-step"},
        )
    r.emit({"type": "finish", "finishReason": "stop"})
    r.end_step()
    r.end()
    return c


def _fold(messages: list[InboundMessage]) -> ConversationTree:
    tree = ConversationTree()
    for m in messages:
        tree.apply(m)
    return tree


def _parts(tree: ConversationTree) -> list[dict[str, Any]]:
    (reply,) = [m for n in tree.nodes() for m in n.messages if m.message.get("role") == "assistant"]
    parts: list[dict[str, Any]] = reply.message["parts"]
    return parts


def test_a_live_fold_of_an_unframed_agent_does_not_refold_per_step() -> None:
    convo = unframed_run(STEPS)
    live = _fold(convo.ch.live)
    parts = _parts(live)
    assert live.refold_stats == (0, 0)  # was one per step: 200 refolds, ~100,000 events folded again
    assert [p["text"] for p in parts if p["type"] == "text"] == [f"step {i}. " for i in range(STEPS)]
    assert sum(p["type"] == "step-start" for p in parts) == STEPS  # each repaired opening kept once
    # The same as the history fold (each message once, in serial order) and the refolded one.
    assert dump(live) == dump(_fold(convo.ch.history()))
    refolded = _fold(convo.ch.live)
    (run,) = [e for e in refolded._nodes.values() if e.node.key == "R1"]
    refolded._refold(run)
    assert dump(refolded) == dump(live)


def test_a_run_folded_out_of_order_is_still_refolded_through_the_filter() -> None:
    """Newest first (history pages): the repairs the decoder chose in that order are not the
    serial-order ones, so the run is refolded — and equals the in-order fold."""
    convo = unframed_run(5)
    backwards = _fold(list(reversed(convo.ch.history())))
    folded = dump(backwards)  # a read: the deferred refold happens here
    assert backwards.refold_stats[0] > 0
    assert folded == dump(_fold(convo.ch.history()))
