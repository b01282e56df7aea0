"""The client's navigable view of a conversation (branch-source.ts ``NavigableBranchSource`` + view.ts).

Pure state over a :class:`ConversationTree`: which sibling of each edit group / regenerate group is
shown. Defaults match the JS client: the latest sibling, except that an edit group whose member was
already on screen when a new sibling arrived live stays *pinned* to it (another tab's edit does not
yank this view); one's own edit / regenerate auto-selects the new sibling.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from agent_worker.protocol.tree import ConversationTree, InputNode, Node, RunNode
from agent_worker.protocol.vercel.reducer import CodecMessage, UIMessage
from agent_worker.protocol.wire import InboundMessage

__all__ = ["Branch", "ClientView"]


@dataclass(frozen=True, slots=True)
class Branch:
    """The sibling choice at one message: the alternatives' head messages and the shown index."""

    siblings: tuple[UIMessage, ...]
    index: int
    kind: Literal["edit", "regenerate", "none"]
    group: str

    @property
    def has_siblings(self) -> bool:
        return len(self.siblings) > 1


@dataclass(slots=True)
class ClientView:
    """Selection state + flattening. Feed messages through :meth:`apply` (live) or :meth:`apply_history`."""

    tree: ConversationTree = field(default_factory=ConversationTree)
    _edit_selection: dict[str, str] = field(default_factory=dict)  # group root → input key
    _regen_selection: dict[str, str] = field(default_factory=dict)  # group root → run id
    _pending_regen: set[str] = field(default_factory=set)  # group roots waiting for a new run
    _last_keys: list[str] = field(default_factory=list)

    # --- feeding -------------------------------------------------------------------------------

    def apply(self, msg: InboundMessage) -> None:
        """Fold a live message, pinning edit groups that were on screen (view.ts ``_onTreeUpdate``)."""
        before = self.tree.version
        self.tree.apply(msg)
        if self.tree.version == before:
            return  # content-only fold (e.g. a stream delta): the visible structure is unchanged
        self._pin(self._last_keys)
        self._roll_pending_regen()
        self._snapshot()

    def apply_history(self, messages: list[InboundMessage]) -> None:
        """Fold a history page (oldest → newest); hydration never pins."""
        for m in messages:
            self.tree.apply(m)
        self._snapshot()

    # --- reading -------------------------------------------------------------------------------

    def selections(self) -> dict[str, str]:
        return {**self._edit_selection, **self._regen_selection}

    def nodes(self) -> list[Node]:
        return self.tree.visible_nodes(self.selections())

    def messages(self) -> list[CodecMessage]:
        """The conversation as the JS ``view.getMessages()`` shows it."""
        return self.tree.visible_messages(self.selections())

    def branch(self, codec_message_id: str) -> Branch:
        """Sibling alternatives at a message (edit group for a user input, regenerate group for a run's
        first message)."""
        node = self.tree.node_by_codec_message_id(codec_message_id)
        own = self._message(codec_message_id)
        single = Branch((own,) if own is not None else (), 0, "none", codec_message_id)
        if node is None:
            return single
        group = self.tree.siblings(node.key)
        if isinstance(node, InputNode):
            kind: Literal["edit", "regenerate"] = "edit"
        else:
            if not node.messages or node.messages[0].codec_message_id != codec_message_id:
                return single
            kind = "regenerate"
        if len(group) <= 1:
            return single
        heads = [(n.key, n.messages[0].message) for n in group if n.messages]
        shown = {n.key for n in self.nodes()}
        index = next((i for i, (k, _) in enumerate(heads) if k in shown), len(heads) - 1)
        return Branch(tuple(m for _, m in heads), index, kind, self.tree.group_root(node.key))

    # --- navigation ----------------------------------------------------------------------------

    def select(self, codec_message_id: str, index: int) -> bool:
        """Show sibling ``index`` (clamped) of the group at that message; False if there is no group."""
        node = self.tree.node_by_codec_message_id(codec_message_id)
        if node is None:
            return False
        group = [n for n in self.tree.siblings(node.key) if n.messages]
        if len(group) <= 1:
            return False
        chosen = group[max(0, min(index, len(group) - 1))]
        root = self.tree.group_root(node.key)
        if isinstance(node, RunNode):
            self._regen_selection[root] = chosen.key
            self._pending_regen.discard(root)
        else:
            self._edit_selection[root] = chosen.key
        self._snapshot()
        return True

    def expect_edit(self, new_input_codec_message_id: str) -> None:
        """One's own edit was sent: show the new sibling (``applyForkAutoSelect``)."""
        self._edit_selection[self.tree.group_root(new_input_codec_message_id)] = new_input_codec_message_id
        self._snapshot()

    def expect_regenerate(self, target_codec_message_id: str) -> None:
        """One's own regenerate of a run's head message: show the newest run once it arrives."""
        node = self.tree.node_by_codec_message_id(target_codec_message_id)
        if isinstance(node, RunNode):
            root = self.tree.group_root(node.key)
            self._regen_selection.pop(root, None)
            self._pending_regen.add(root)

    # --- internals -----------------------------------------------------------------------------

    def _message(self, cmid: str) -> UIMessage | None:
        node = self.tree.node_by_codec_message_id(cmid)
        if node is None:
            return None
        found = node.projection.find(cmid)
        return found.message if found is not None else None

    def _pin(self, previous: list[str]) -> None:
        for key in previous:
            node = self.tree.node(key)
            if not isinstance(node, InputNode) or len(self.tree.siblings(key)) <= 1:
                continue
            self._edit_selection.setdefault(self.tree.group_root(key), key)

    def _roll_pending_regen(self) -> None:
        for root in list(self._pending_regen):
            group = [n for n in self.tree.siblings(root) if isinstance(n, RunNode)]
            if len(group) > 1:
                self._regen_selection[root] = group[-1].key

    def _snapshot(self) -> None:
        self._last_keys = [n.key for n in self.nodes()]
