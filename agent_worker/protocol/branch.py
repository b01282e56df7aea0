"""The agent's view of a trigger and its branch (§4.3, §7.3; agent-session.ts, leaf-branch-source.ts,
steer-ordering.ts, run-steer-tracker.ts, src/vercel/tool-registry.ts).
"""

from __future__ import annotations

from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from agent_worker.protocol.headers import (
    H_CODEC_MESSAGE_ID,
    H_EVENT_ID,
    H_FORK_OF,
    H_MSG_REGENERATE,
    H_PARENT,
    H_ROLE,
    H_RUN_CLIENT_ID,
    H_RUN_ID,
    H_SUPERSEDES,
)
from agent_worker.protocol.tree import ConversationTree, Node, RunNode
from agent_worker.protocol.vercel.reducer import CodecMessage, ToolCall, UIMessage, is_tool_part, tool_name
from agent_worker.protocol.wire import InboundMessage

__all__ = [
    "Anchors",
    "SteerTracker",
    "TriggerInfo",
    "TriggerKind",
    "approved_pending_tool_calls",
    "defer_unresponded_steers",
    "missing_ancestor",
    "pending_tool_calls",
    "resolve_anchors",
    "select_branch",
    "select_branch_messages",
]

TriggerKind = Literal["fresh", "continuation", "fork", "regenerate", "edit"]


@dataclass(frozen=True, slots=True)
class TriggerInfo:
    """What the agent reads off the triggering ``ai-input`` (agent-session.ts ``resolveTriggerMetadata``)."""

    codec_message_id: str | None
    run_client_id: str | None
    input_client_id: str | None
    role: str | None = None
    parent: str | None = None
    fork_of: str | None = None
    regenerates: str | None = None
    supersedes: str | None = None
    run_id: str | None = None
    event_id: str | None = None
    name: str | None = None

    @classmethod
    def from_message(cls, trigger: InboundMessage) -> TriggerInfo:
        """Read the trigger; ``input_client_id`` is the Ably (platform-verified) ``clientId``."""
        h = trigger.transport_headers
        return cls(
            codec_message_id=h.get(H_CODEC_MESSAGE_ID),
            run_client_id=h.get(H_RUN_CLIENT_ID),
            input_client_id=trigger.client_id,
            role=h.get(H_ROLE),
            parent=h.get(H_PARENT),
            fork_of=h.get(H_FORK_OF),
            regenerates=h.get(H_MSG_REGENERATE),
            supersedes=h.get(H_SUPERSEDES),
            run_id=h.get(H_RUN_ID),
            event_id=h.get(H_EVENT_ID),
            name=trigger.name,
        )

    @property
    def continuation(self) -> bool:
        """``run-id`` on the trigger ⇒ re-enter that run with ``ai-run-resume`` (never a fresh start)."""
        return self.run_id is not None

    @property
    def kind(self) -> TriggerKind:
        """Classification for logs and prompts; only :attr:`continuation` changes the wire behaviour."""
        if self.run_id is not None:
            return "continuation"
        if self.role is not None and self.role != "user":
            return "fork"
        if self.regenerates:
            return "regenerate"
        if self.fork_of:
            return "edit"
        return "fresh"


@dataclass(frozen=True, slots=True)
class Anchors:
    """Where the reply hangs (§4.3 step 5).

    ``leaf``: the branch anchor and the ``parent`` of every output — the trigger's codec-message-id when
    it backs a tree node, else its ``parent`` (regenerate carriers back no node). ``run_parent``: the
    ``parent`` of ``ai-run-start`` — ``leaf``, except for a fork (trigger backs a run node) where it is
    the trigger's ``parent`` (the forked run's input node).
    """

    leaf: str | None
    run_parent: str | None


def resolve_anchors(tree: ConversationTree, trigger: TriggerInfo) -> Anchors:
    """Compute the anchors once the trigger has folded into ``tree``."""
    node = tree.node_by_codec_message_id(trigger.codec_message_id) if trigger.codec_message_id else None
    leaf = trigger.parent if node is None else trigger.codec_message_id
    run_parent = trigger.parent if isinstance(node, RunNode) else leaf
    return Anchors(leaf=leaf, run_parent=run_parent)


def _structural_parent(tree: ConversationTree, node: Node) -> str | None:
    """A node's parent; for a run, the one its ``ai-run-start`` named once that has folded (the run
    node may have been created from a continuation's output, whose ``parent`` is the run's own message)."""
    if isinstance(node, RunNode) and tree.run_start_seen(node.run_id):
        return node.start_parent
    return node.parent


def _up(tree: ConversationTree, node: Node) -> tuple[str | None, Node | None]:
    """The parent codec-message-id of ``node`` and the node it resolves to.

    ``(None, None)``: a root. ``(cmid, None)``: an ancestor not folded yet — cmid is the parent, or the
    run-id of a run known only from its step lifecycle (no parent until its run-start folds). A run's
    outputs index its ``input-codec-message-id`` to the run itself until that input folds (tree.ts
    ``_linkForkInput``), so a parent resolving back to ``node`` is missing, not a cycle.
    """
    cmid = _structural_parent(tree, node)
    if cmid is None:
        if isinstance(node, RunNode) and not tree.run_start_seen(node.run_id):
            return node.run_id, None
        return None, None
    parent = tree.node_by_codec_message_id(cmid)
    return cmid, (None if parent is node else parent)


def _walk(tree: ConversationTree, anchor: str | None) -> list[Node]:
    if anchor is None:
        return []
    chain: list[Node] = []
    seen: set[str] = set()
    current = tree.node_by_codec_message_id(anchor)
    while current is not None and current.key not in seen:
        seen.add(current.key)
        chain.append(current)
        current = _up(tree, current)[1]
    chain.reverse()  # root first (inserting each at the front was quadratic in a long branch)
    return chain


def missing_ancestor(tree: ConversationTree, anchor: str | None) -> str | None:
    """The first codec-message-id on the walk up from ``anchor`` that is not in the tree yet (or the
    run-id of a run on the walk whose ``ai-run-start`` has not folded and whose parent is unknown).

    None once the walk reaches a root (or a cycle): page history until this is None or history ends.
    ``anchor`` itself counts — a trigger that has not folded yet is missing.
    """
    if anchor is None:
        return None
    node = tree.node_by_codec_message_id(anchor)
    if node is None:
        return anchor
    seen: set[str] = set()
    while node.key not in seen:
        seen.add(node.key)
        cmid, parent = _up(tree, node)
        if cmid is None:
            return None
        if parent is None:
            return cmid
        node = parent
    return None


def select_branch(tree: ConversationTree, anchor: str | None, run_id: str) -> list[Node]:
    """The nodes of the run's prompt branch, root first (leaf-branch-source.ts ``visibleNodes``).

    Walk ``parent`` pointers from ``anchor``, append the current run if the walk missed it, then drop
    every ancestor run that did not end ``complete`` together with the input node it replied to.
    """
    chain = _walk(tree, anchor)
    current = tree.run(run_id)
    if current is not None and not any(isinstance(n, RunNode) and n.run_id == run_id for n in chain):
        chain.append(current)
    anchor_node = tree.node_by_codec_message_id(anchor) if anchor is not None else None
    leaf_run_id = anchor_node.run_id if isinstance(anchor_node, RunNode) else None
    dropped_inputs: set[str] = set()
    kept: list[Node] = []
    for node in chain:
        if (
            isinstance(node, RunNode)
            and node.run_id not in (run_id, leaf_run_id)
            and node.status != "complete"
        ):
            parent = _structural_parent(tree, node)
            if parent is not None:
                dropped_inputs.add(parent)
            continue
        kept.append(node)
    return [n for n in kept if not (n.kind == "input" and n.key in dropped_inputs)]


def defer_unresponded_steers(
    messages: Sequence[CodecMessage], is_unresponded: Callable[[str], bool]
) -> list[CodecMessage]:
    """Move steering messages no output answered yet to the end (steer-ordering.ts)."""
    kept = [m for m in messages if not is_unresponded(m.codec_message_id)]
    deferred = [m for m in messages if is_unresponded(m.codec_message_id)]
    return kept + deferred


def select_branch_messages(
    tree: ConversationTree,
    anchor: str | None,
    run_id: str,
    *,
    regenerates: str | None = None,
    unresponded_steers: Container[str] = frozenset(),
) -> list[CodecMessage]:
    """The prompt conversation for a run (§7.3), as codec messages in order.

    Steering messages in ``unresponded_steers`` move to the end of their run's messages; with
    ``regenerates`` the list stops just before that codec-message-id.
    """
    out: list[CodecMessage] = []
    for node in select_branch(tree, anchor, run_id):
        messages: Sequence[CodecMessage] = node.messages
        if isinstance(node, RunNode):
            messages = defer_unresponded_steers(messages, lambda c: c in unresponded_steers)
        for m in messages:
            if regenerates is not None and m.codec_message_id == regenerates:
                return out
            out.append(m)
    return out


@dataclass(slots=True)
class SteerTracker:
    """Per-run steering bookkeeping (run-steer-tracker.ts): pending → drained → stamped once."""

    _pending: dict[str, None] = field(default_factory=dict)
    _recent: dict[str, None] = field(default_factory=dict)

    def add_pending(self, codec_message_id: str) -> None:
        """A steering input folded into the run."""
        self._pending[codec_message_id] = None

    def has_pending(self) -> bool:
        return bool(self._pending)

    def drain_pending(self) -> None:
        """The next pass will answer the pending steers (``hasInput()`` drains)."""
        self._recent.update(self._pending)
        self._pending.clear()

    def consume_recently_processed(self) -> list[str]:
        """The ids to stamp as ``steer-codec-message-ids`` on the next pass's outputs (then forgotten)."""
        ids = list(self._recent)
        self._recent.clear()
        return ids

    def is_unresponded(self, codec_message_id: str) -> bool:
        return codec_message_id in self._pending or codec_message_id in self._recent

    def __contains__(self, codec_message_id: object) -> bool:
        return isinstance(codec_message_id, str) and self.is_unresponded(codec_message_id)


def _tool_calls_in_state(messages: Sequence[UIMessage], state: str) -> list[ToolCall]:
    last = next((m for m in reversed(messages) if m.get("role") == "assistant"), None)
    if last is None:
        return []
    out: list[ToolCall] = []
    for part in last.get("parts", []):
        if not isinstance(part, dict) or not is_tool_part(part) or part.get("state") != state:
            continue
        if "input" not in part:
            continue
        if state == "approval-responded":
            approval: Any = part.get("approval")
            if not isinstance(approval, dict) or approval.get("approved") is not True:
                continue
        out.append(ToolCall(str(part["toolCallId"]), tool_name(part), part["input"]))
    return out


def pending_tool_calls(messages: Sequence[UIMessage]) -> list[ToolCall]:
    """Tool parts in ``input-available`` on the last assistant message (``pendingToolCalls``)."""
    return _tool_calls_in_state(messages, "input-available")


def approved_pending_tool_calls(messages: Sequence[UIMessage]) -> list[ToolCall]:
    """Tool parts in ``approval-responded`` and approved on the last assistant message."""
    return _tool_calls_in_state(messages, "approval-responded")
