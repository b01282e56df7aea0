"""The conversation tree (src/core/transport/tree.ts, decode-fold.ts, wire-log.ts).

Every channel message folds into a tree of *input nodes* (run-less user inputs, keyed by
codec-message-id) and *run nodes* (keyed by run-id). Each node keeps a serial-ordered log of its
decoded events and refolds from scratch when a wire arrives out of order (at the node's next read,
so the appends to an interleaved stream between two reads refold it once: ``DeferredProjection``);
outputs of a superseded step attempt are gated out. The same tree serves the agent (branch walk,
trigger lookup, steering) and a client (visible branch with default sibling selection).

Not ported: the JS event-log retention sweep (a memory optimisation; without it a very late wire still
refolds in serial order, which is the correct result). Deliberately different: a run's suspend/resume/end
folded before any other wire of the run (history pages arrive newest first) is held until the run node
appears instead of being dropped, and a run's status refolds in serial order — so run statuses after a
paged history read equal those of an in-order fold, where the JS tree can leave such a run ``active``.
Likewise the rest of a run does not depend on the order its wires fold in (a run's later messages can
fold before its ``ai-run-start``: live after a continuity loss, history newest page first): its fields
come from its oldest wire (the run-start), a step-end folded first is kept, steps are in start order,
and a decoder repair for a stream folded before its opening chunks is kept only where the serial-ordered
fold needs it (``tests/protocol/test_fold_order.py``). A run whose ``ai-run-start`` never folds
(history pruned or read only back to after it) takes its parent and owner from its oldest wire naming
them, where the JS tree keeps those of whichever wire created its node (a step-start names neither).
"""

from __future__ import annotations

import json
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping
from operator import attrgetter
from typing import Any, TypeVar

from agent_worker.protocol.codec_core import CodecMessage, DecoderCore, Projection, Repair
from agent_worker.protocol.codecs import CodecSelector
from agent_worker.protocol.frozen import fast_make
from agent_worker.protocol.headers import (
    AI_INPUT,
    H_CODEC_MESSAGE_ID,
    H_EVENT_ID,
    H_FORK_OF,
    H_INPUT_CODEC_MESSAGE_ID,
    H_INVOCATION_ID,
    H_MSG_REGENERATE,
    H_PARENT,
    H_ROLE,
    H_RUN_CLIENT_ID,
    H_RUN_ID,
    H_STEER_CODEC_MESSAGE_IDS,
    H_STEP_ID,
    H_STEP_START_SERIAL,
    H_STREAM,
    H_SUPERSEDES,
    RUN_LIFECYCLE_NAMES,
    STEP_LIFECYCLE_NAMES,
    RunLifecycle,
    StepLifecycle,
    parse_run_lifecycle,
    parse_step_lifecycle,
)
from agent_worker.protocol.nodes import (
    ApplyResult,
    DeferredProjection,
    InputNode,
    Internal,
    Node,
    RunNode,
    RunStatus,
    StepInfo,
    StepRecord,
    StepState,
)
from agent_worker.protocol.vercel.decoder import Chunk, InputEvent
from agent_worker.protocol.wire import InboundMessage

__all__ = [
    "ApplyResult",
    "ConversationTree",
    "InputNode",
    "Node",
    "RunNode",
    "RunStatus",
    "StepInfo",
]


_PLACED_BY = attrgetter("sort_key")
_P = TypeVar("_P", str, str | None)
_NOTHING = ApplyResult()  # what a message that folds nothing returns (immutable: shared)
# ApplyResult(...) positionally, every field, without the class call and its __init__ (~1 µs less per
# folded message): run_lifecycle, step_lifecycle, folded, run_id, codec_message_id,
# input_codec_message_id, serial, step_id, step_start_serial, steer_codec_message_ids, inputs, outputs.
_result = fast_make(ApplyResult)
_NO_EVENTS: list[Any] = []  # an output message's inputs (read only, never kept: shared)


class ConversationTree:
    """The folded conversation of one channel (session). Pure: feed it every message with :meth:`apply`."""

    #: Lifecycle events held for runs not seen yet, at most (oldest runs evicted first).
    EARLY_LIFECYCLE_LIMIT = 10_000

    def __init__(self, decoder: DecoderCore | None = None, *, codec: str | None = None) -> None:
        # ``codec`` pins the adapter tag; by default the first message whose codec headers tell
        # chooses it (see :class:`CodecSelector`). An explicit ``decoder`` pins its codec too.
        self.codecs = CodecSelector(codec)
        if decoder is not None:
            self.codecs.locked = True
            self.codecs.decoder = decoder
        self._nodes: dict[str, Internal] = {}
        self._cmid_to_key: dict[str, str] = {}
        self._sorted: list[Internal] = []
        self._last_placed = 0  # the index after the entry placed last (a hint: see _insert_sorted)
        # Keys by parent (see _add_key): the children of each parent, and runs replying to an input.
        self._children: dict[str | None, str | set[str]] = {}
        self._reply_runs: dict[str, str | set[str]] = {}
        self._superseded: set[str] = set()
        self._event_index: dict[str, InboundMessage] = {}
        self._seq = 0
        # Structural version: bumped whenever sibling grouping can change; keys the siblings cache.
        self._version = 0
        self._sibling_cache: dict[str, list[Node]] = {}
        self._sibling_cache_version = -1
        self._listeners: list[Callable[[InboundMessage, ApplyResult], None]] = []
        # Lifecycle of runs with no node yet (run-id → serial → event), oldest run first.
        self._early: OrderedDict[str, dict[str, RunLifecycle]] = OrderedDict()
        self._early_count = 0
        # Nodes holding outputs the decoder repaired (a mid-stream join): refolded through its filter.
        self._repaired: set[Internal] = set()
        # Nodes whose log has not only grown at its end (a wire folded out of serial order, or one
        # without a serial): only for these can the decoder's repairs (chosen in arrival order)
        # differ from what a serial-order refold keeps.
        self._disordered: set[Internal] = set()
        # Refolds done and the events they folded (a refold is deferred to the node's next read:
        # see DeferredProjection); read through refold_stats.
        self._refolds = 0
        self._refolded_events = 0

    # --- feeding -------------------------------------------------------------------------------

    def apply(self, msg: InboundMessage) -> ApplyResult:
        """Fold one delivery (live or history, any order, duplicates tolerated) and index its event-id."""
        result = self._apply_wire(msg)
        event_id = msg.transport_headers.get(H_EVENT_ID)
        if isinstance(event_id, str) and event_id not in self._event_index:
            self._event_index[event_id] = msg
        if self._listeners:  # usually none: skip the per-message copy
            for listener in list(self._listeners):
                listener(msg, result)
        return result

    def apply_all(self, messages: Iterable[InboundMessage]) -> None:
        """Fold many messages (e.g. a history page reversed to oldest-first)."""
        for m in messages:
            self.apply(m)

    def on_apply(self, listener: Callable[[InboundMessage, ApplyResult], None]) -> Callable[[], None]:
        """Call ``listener(msg, result)`` after every apply; returns an unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def _apply_wire(self, msg: InboundMessage) -> ApplyResult:
        if msg.name in RUN_LIFECYCLE_NAMES:
            ev = parse_run_lifecycle(msg)
            if ev is not None:
                self.apply_run_lifecycle(ev)
            return _result(ev, None, False, None, None, None, None, None, None, None, (), ())
        if msg.name in STEP_LIFECYCLE_NAMES:
            sev = parse_step_lifecycle(msg)
            if sev is not None:
                self._apply_step_lifecycle(sev)
            return _result(None, sev, False, None, None, None, None, None, None, None, (), ())
        codecs = self.codecs
        admitted, switched = codecs.admit(msg)
        if switched:
            self._switch_codec()
        if not admitted:
            return _NOTHING
        events = codecs.decoder.decode_events(msg)
        headers = msg.transport_headers  # read only below: no per-message copy
        if events or headers.get(H_RUN_ID):
            if msg.name == AI_INPUT:
                return self._apply_message(events, _NO_EVENTS, headers, msg.serial, msg.version_serial)
            return self._apply_message(_NO_EVENTS, events, headers, msg.serial, msg.version_serial)
        return _NOTHING

    # --- queries -------------------------------------------------------------------------------

    def find_event(self, event_id: str) -> InboundMessage | None:
        """The first message seen carrying transport ``event-id`` (any name) — the trigger lookup."""
        return self._event_index.get(event_id)

    def run(self, run_id: str) -> RunNode | None:
        """The run node with that run-id."""
        entry = self._nodes.get(run_id)
        return entry.node if entry is not None and isinstance(entry.node, RunNode) else None

    def runs(self) -> list[RunNode]:
        """All run nodes in serial order."""
        return [e.node for e in self._sorted if isinstance(e.node, RunNode)]

    def node(self, key: str) -> Node | None:
        """A node by its key (run-id or input codec-message-id)."""
        entry = self._nodes.get(key)
        return entry.node if entry is not None else None

    def node_by_codec_message_id(self, codec_message_id: str) -> Node | None:
        """The node holding (or keyed by) a codec-message-id."""
        key = self._cmid_to_key.get(codec_message_id)
        return self.node(key) if key is not None else None

    def nodes(self) -> list[Node]:
        """Every node in serial order (serial-less optimistic nodes last)."""
        return [e.node for e in self._sorted]

    def reply_runs(self, input_codec_message_id: str) -> list[RunNode]:
        """Runs whose structural parent is that codec-message-id (superseded runs excluded)."""
        out: list[RunNode] = []
        for rid in _keys(self._reply_runs, input_codec_message_id):
            if rid in self._superseded:
                continue
            node = self.run(rid)
            if node is not None:
                out.append(node)
        return out

    def delete(self, key: str) -> None:
        """Remove a node (e.g. an optimistic input whose publish failed); its index entries go too."""
        entry = self._nodes.pop(key, None)
        if entry is None:
            return
        self._version += 1
        node = entry.node
        self._repaired.discard(entry)
        self._disordered.discard(entry)
        _discard_key(self._children, node.parent, key)
        if entry in self._sorted:
            self._sorted.remove(entry)
        if isinstance(node, RunNode) and node.parent is not None:
            _discard_key(self._reply_runs, node.parent, key)
        for cmid, owner in list(self._cmid_to_key.items()):
            if owner == key:
                del self._cmid_to_key[cmid]

    @property
    def node_count(self) -> int:
        """How many runs and inputs the tree holds (what a prompt built from it scales with)."""
        return len(self._nodes)

    @property
    def refold_stats(self) -> tuple[int, int]:
        """(refolds, events they folded) so far: the work beyond folding each event once."""
        return self._refolds, self._refolded_events

    @property
    def version(self) -> int:
        """Structural version: changes whenever nodes, parents, ordering or the id index change."""
        return self._version

    def run_start_seen(self, run_id: str) -> bool:
        """Whether the run's ``ai-run-start`` (or the agent's optimistic local one) has folded."""
        entry = self._nodes.get(run_id)
        return entry is not None and isinstance(entry.node, RunNode) and entry.run_start_seen

    def is_superseded(self, run_id: str) -> bool:
        """Whether a client tool-result fork superseded that run."""
        return run_id in self._superseded

    # --- message application (tree.ts applyMessage) -------------------------------------------

    def _apply_message(
        self,
        inputs: list[InputEvent],
        outputs: list[Chunk],
        headers: Mapping[str, str],
        serial: str | None,
        version: str | None,
    ) -> ApplyResult:
        wire_run_id = headers.get(H_RUN_ID)
        cmid = headers.get(H_CODEC_MESSAGE_ID)
        role = headers.get(H_ROLE)
        run_less_input = wire_run_id is None and cmid is not None and len(inputs) > 0
        input_cmid = cmid if run_less_input and role == "user" else None
        fork_cmid = cmid if run_less_input and role != "user" else None
        if wire_run_id is None and input_cmid is None and fork_cmid is None:
            return _NOTHING
        existing_key = input_cmid if input_cmid is not None else wire_run_id
        if not inputs and not outputs and existing_key is not None and existing_key not in self._nodes:
            return _NOTHING
        if fork_cmid is not None:
            supersedes = headers.get(H_SUPERSEDES)
            if supersedes is not None and supersedes not in self._superseded:
                self._superseded.add(supersedes)
                self._version += 1
        if input_cmid is not None:
            streamed = headers.get(H_STREAM) == "true"
            entry = self._nodes.get(input_cmid)
            if entry is None:
                node = InputNode(
                    input_cmid, headers.get(H_PARENT), headers.get(H_FORK_OF), serial, self.new_projection()
                )
                entry = self._wrap(node)
                self._insert(input_cmid, entry, node.parent)
                self._cmid_to_key[input_cmid] = input_cmid
                self._version += 1
            elif isinstance(entry.node, InputNode) and serial and not entry.node.serial:
                entry.node.serial = serial
                self._promote(entry)
            self._record_and_fold(entry, True, inputs, serial, input_cmid, version, streamed)
            return _result(
                None, None, True, None, input_cmid, input_cmid, serial, None, None, None, tuple(inputs), ()
            )
        if fork_cmid is not None:
            mapped_key = self._cmid_to_key.get(fork_cmid)
            mapped = self._nodes.get(mapped_key) if mapped_key is not None else None
            run_key = (
                mapped_key
                if mapped is not None and isinstance(mapped.node, RunNode) and mapped_key
                else fork_cmid
            )
            return self._apply_run_message(run_key, inputs, outputs, headers, serial, version)
        assert wire_run_id is not None
        return self._apply_run_message(wire_run_id, inputs, outputs, headers, serial, version)

    def _apply_run_message(  # noqa: PLR0917 - called per message: positional is cheaper
        self,
        run_id: str,
        inputs: list[InputEvent],
        outputs: list[Chunk],
        headers: Mapping[str, str],
        serial: str | None,
        version: str | None,
    ) -> ApplyResult:
        cmid = headers.get(H_CODEC_MESSAGE_ID)
        input_cmid = headers.get(H_INPUT_CODEC_MESSAGE_ID)
        self._link_fork_input(input_cmid, run_id)
        run = self._nodes.get(run_id)
        if run is None and cmid is not None:
            indexed_key = self._cmid_to_key.get(cmid)
            indexed = self._nodes.get(indexed_key) if indexed_key is not None else None
            if (
                indexed is not None
                and isinstance(indexed.node, RunNode)
                and indexed.node.start_serial is None
            ):
                run = indexed
        if run is None:
            fork_of = headers.get(H_FORK_OF)
            node = RunNode(
                run_id=run_id,
                parent=headers.get(H_PARENT),
                fork_of=self._cmid_to_key.get(fork_of) if fork_of else None,
                regenerates=headers.get(H_MSG_REGENERATE),
                client_id=headers.get(H_RUN_CLIENT_ID, ""),
                invocation_id=headers.get(H_INVOCATION_ID, ""),
                start_serial=serial,
                projection=self.new_projection(),
            )
            run = self._wrap(node)
            self._insert(run_id, run, node.parent)
            self._index_reply_run(node)
        elif serial and isinstance(run.node, RunNode):
            start = run.node.start_serial
            if not start or serial < start:  # the run's oldest wire so far (any arrival order)
                run.node.start_serial = serial
                self._promote(run)
                if not run.run_start_seen:
                    self._adopt_wire_fields(run.node, headers)
        owner_key = run.node.key
        if cmid and self._cmid_to_key.get(cmid) != owner_key:
            self._cmid_to_key[cmid] = owner_key
            self._version += 1
        step_id = headers.get(H_STEP_ID)
        step_start_serial = headers.get(H_STEP_START_SERIAL)
        if step_id is not None and step_start_serial is not None and serial is not None:
            ss = run.step_state if run.step_state is not None else StepState()
            run.step_state = ss
            ss.attribution[serial] = (step_id, step_start_serial)
            attempts = ss.output_attempts.get(step_id)
            if attempts is None:
                ss.output_attempts[step_id] = step_start_serial  # a lone attempt: itself (see _add_key)
            elif attempts != step_start_serial:
                _add_key(ss.output_attempts, step_id, step_start_serial)
        stamp = headers.get(H_STEER_CODEC_MESSAGE_IDS)
        steer_ids = _parse_steer_stamp(stamp) if stamp is not None else None
        # Gating depends on the step attribution recorded above only (folding changes neither):
        # checked once here, not again by the fold.
        gated = serial is not None and run.step_state is not None and self._is_gated(run, serial)
        # A message's events go one way (the caller passes one of the two lists empty).
        is_input = bool(inputs)
        events = inputs if is_input else outputs
        streamed = headers.get(H_STREAM) == "true"
        in_order = self._record_and_fold(run, is_input, events, serial, cmid, version, streamed, gated)
        if outputs and type(outputs[0]) is Repair:
            # The decoder repaired a join it saw out of order: the refold keeps a repair only where
            # the run's outputs in serial order need it. A run folded in serial order throughout
            # already has exactly those (the decoder's phases then are the filter's), so it is not
            # refolded: an agent sending finish-step without start-step got a repair, and a refold
            # of its whole run, per step (quadratic in the run's length).
            self._repaired.add(run)
            if len(run.log) > 1 and not (in_order and headers.get(H_RUN_ID) == run_id):
                self._refold_later(run)
        return _result(
            None, None, not gated, owner_key, cmid, input_cmid, serial, step_id, step_start_serial,
            steer_ids, tuple(inputs) if not gated else (), tuple(outputs) if not gated else (),
        )  # fmt: skip

    # --- folding -------------------------------------------------------------------------------

    @property
    def decoder(self) -> DecoderCore:
        return self.codecs.decoder

    def _switch_codec(self) -> None:
        # Only lifecycle-created nodes can exist before the first classifiable message: give them
        # the chosen codec's projection (refolding whatever their logs hold).
        for entry in self._nodes.values():
            self._refold(entry)

    def new_projection(self) -> Projection:
        return self.codecs.codec.new_projection()

    def _record_and_fold(  # noqa: PLR0917 - called per message: positional is cheaper
        self,
        entry: Internal,
        inputs: bool,
        events: list[dict[str, Any]],
        serial: str | None,
        message_id: str | None,
        version: str | None,
        streamed: bool,
        gated: bool | None = None,
    ) -> bool:
        """``inputs``: whether ``events`` are inputs (else outputs); ``gated``: whether ``serial`` is
        gated out, when the caller already knows. Records ``events`` in the node's log. True: they
        were folded at the end of a log that has only ever grown in serial order."""
        if serial is None or not events:
            if serial is None and events:
                entry.optimistic = True
                self._disordered.add(entry)
            self._fold_into(entry, inputs, events, serial, message_id, gated)
            return False
        outcome = entry.log.record(serial, message_id, inputs, events, version, streamed)
        if outcome == "dropped":
            return False
        if entry.optimistic:
            # The echo of an optimistic fold: rebuild from the log so the seed never doubles up.
            entry.optimistic = False
            self._refold(entry)
            return False
        if outcome == "refold":
            self._disordered.add(entry)
            self._refold_later(entry)
            return False
        self._fold_into(entry, inputs, events, serial, message_id, gated)
        return entry not in self._disordered

    def _fold_into(  # noqa: PLR0917 - called per message: positional is cheaper
        self,
        entry: Internal,
        inputs: bool,
        events: list[dict[str, Any]],
        serial: str | None,
        message_id: str | None,
        gated: bool | None = None,
    ) -> None:
        if gated is None:
            gated = serial is not None and self._is_gated(entry, serial)
        if gated:
            return
        projection = entry.node.projection
        if type(projection) is DeferredProjection:
            if serial is not None:
                return  # recorded in the log: the pending refold folds it
            projection = projection.resolve()  # not in the log: folded onto the refolded node
        fold = projection.fold_input if inputs else projection.fold_output
        for payload in events:
            fold(payload, message_id)

    def _refold_later(self, entry: Internal) -> None:
        """Refold ``entry`` at the next read of its projection (at most once however often this is
        called before it): N appends to a stream before its run's newest wire cost one refold per
        read, not one per append (quadratic in the run's length)."""
        if type(entry.node.projection) is not DeferredProjection:
            entry.node.projection = DeferredProjection(entry, self._refold)

    def _refold(self, entry: Internal) -> None:
        self._refolds += 1
        self._refolded_events += sum(map(len, entry.log))
        projection = self.new_projection()
        settle = self.codecs.decoder.repair_filter() if entry in self._repaired else None
        for log_entry in entry.log:
            events = log_entry.events
            if settle is not None and not log_entry.inputs:
                events = settle(events)  # sees every output in serial order, gated or not
            if self._is_gated(entry, log_entry.serial):
                continue
            fold = projection.fold_input if log_entry.inputs else projection.fold_output
            for payload in events:
                fold(payload, log_entry.message_id)
        entry.node.projection = projection

    @staticmethod
    def _is_gated(entry: Internal, serial: str) -> bool:
        ss = entry.step_state
        if ss is None:
            return False
        attr = ss.attribution.get(serial)
        if attr is None:
            return False
        rec = ss.steps.get(attr[0])
        if rec is None or rec.canonical is None:
            return False
        return attr[1] != rec.canonical

    # --- structure -----------------------------------------------------------------------------

    def _wrap(self, node: Node, *, run_start_seen: bool = False) -> Internal:
        """``node`` was built with this tree's :meth:`new_projection` (not the default one)."""
        self._seq += 1
        return Internal(node=node, seq=self._seq, run_start_seen=run_start_seen)

    @staticmethod
    def _sort_key(entry: Internal) -> tuple[int, str, int]:
        s = entry.node.sort_serial
        return (1, "", entry.seq) if s is None else (0, s, entry.seq)

    def _insert(self, key: str, entry: Internal, parent: str | None) -> None:
        self._nodes[key] = entry
        _add_key(self._children, parent, key)
        self._insert_sorted(entry)
        self._version += 1
        if isinstance(entry.node, RunNode):
            self._adopt_early(entry)

    def _insert_sorted(self, entry: Internal) -> None:
        # Each entry keeps the key it was placed by (re-placed by _promote when it changes), so the
        # bisection compares stored keys in C instead of calling _sort_key per probe. History folds
        # each page oldest first, so a new entry usually goes right after the previous one: that slot
        # is tried first (two comparisons; the same index bisect_right gives when they hold).
        entry.sort_key = k = self._sort_key(entry)
        placed = self._sorted
        i = self._last_placed
        if not (
            0 < i <= len(placed)
            and placed[i - 1].sort_key <= k
            and (i == len(placed) or k < placed[i].sort_key)
        ):
            i = bisect_right(placed, k, key=_PLACED_BY)
        placed.insert(i, entry)
        self._last_placed = i + 1

    def _promote(self, entry: Internal) -> None:
        self._version += 1
        if entry in self._sorted:
            self._sorted.remove(entry)
        self._insert_sorted(entry)

    def _reparent(self, key: str, old: str | None, new: str | None) -> None:
        self._version += 1
        _discard_key(self._children, old, key)
        _add_key(self._children, new, key)

    def _index_reply_run(self, node: Node) -> None:
        if isinstance(node, RunNode) and node.parent is not None:
            _add_key(self._reply_runs, node.parent, node.run_id)

    # --- lifecycle -----------------------------------------------------------------------------

    def apply_run_lifecycle(self, ev: RunLifecycle) -> None:
        """Apply a parsed run-lifecycle event; serial None = the agent's optimistic local run-start.

        Unlike the JS tree, a suspend/resume/end for a run not seen yet is kept (history arrives newest
        page first, so a run-end can fold before every other wire of its run) and applied when the node
        appears; a node's lifecycle is refolded in serial order when an older event arrives late."""
        if ev.type == "start":
            self._run_start(ev)
            return
        entry = self._nodes.get(ev.run_id)
        if entry is None:
            if ev.serial is not None:
                self._hold_early(ev)
            return
        if isinstance(entry.node, RunNode):
            self._record_lifecycle(entry, ev)

    def _hold_early(self, ev: RunLifecycle) -> None:
        assert ev.serial is not None
        held = self._early.get(ev.run_id)
        if held is None:
            held = self._early[ev.run_id] = {}
        if ev.serial not in held:
            held[ev.serial] = ev
            self._early_count += 1
        while self._early_count > self.EARLY_LIFECYCLE_LIMIT:
            _, evicted = self._early.popitem(last=False)
            self._early_count -= len(evicted)

    def pending_lifecycle_count(self) -> int:
        """How many lifecycle events wait for a run node that has not appeared yet."""
        return self._early_count

    def _adopt_early(self, entry: Internal) -> None:
        """A run node appeared (or was re-keyed onto its run-id): apply its held lifecycle."""
        held = self._early.pop(entry.node.key, None)
        if held is None:
            return
        self._early_count -= len(held)
        for serial in sorted(held):
            self._record_lifecycle(entry, held[serial])

    def _record_lifecycle(self, entry: Internal, ev: RunLifecycle) -> None:
        node = entry.node
        assert isinstance(node, RunNode)
        if ev.serial is None:
            _apply_status(node, ev)
            return
        held = entry.lifecycle
        if held is None:
            entry.lifecycle = {ev.serial: ev}
            _apply_status(node, ev)
            return
        if ev.serial in held:
            return  # a duplicate delivery
        newest = max(held)
        held[ev.serial] = ev
        if ev.serial > newest:
            _apply_status(node, ev)
            return
        # An older event after newer ones (history pages, or a held event adopted mid-page): refold.
        node.status = "active"
        node.error = None
        node.end_serial = None
        node.last_resume_invocation_id = None
        for serial in sorted(held):
            _apply_status(node, held[serial])

    def _backfill(self, entry: Internal, ev: RunLifecycle) -> None:
        node = entry.node
        assert isinstance(node, RunNode)
        # A run-start older than every wire the node was built from (they folded first: live after a
        # continuity loss, newest history page first) is the run's origin: its fields win, as they
        # do when it folds first. A later one only fills what is missing.
        origin = ev.serial is not None and (not node.start_serial or ev.serial < node.start_serial)
        if ev.parent is not None and (node.parent is None or (origin and node.parent != ev.parent)):
            if node.parent is not None:
                _discard_key(self._reply_runs, node.parent, node.run_id)
            self._reparent(node.run_id, node.parent, ev.parent)
            node.parent = ev.parent
            self._index_reply_run(node)
        if ev.fork_of is not None and (node.fork_of is None or origin):
            fork_key = self._cmid_to_key.get(ev.fork_of)
            if fork_key is not None and fork_key != ev.run_id:
                node.fork_of = fork_key
        if ev.regenerates is not None and (node.regenerates is None or origin):
            node.regenerates = ev.regenerates
        if ev.invocation_id != "" and (node.invocation_id == "" or origin):
            node.invocation_id = ev.invocation_id
        if ev.client_id != "" and (node.client_id == "" or origin):
            node.client_id = ev.client_id
        if origin:
            node.start_serial = ev.serial
            self._promote(entry)
        if not entry.run_start_seen or ev.parent is not None:
            node.start_parent = ev.parent
        entry.run_start_seen = True

    def _run_start(self, ev: RunLifecycle) -> None:
        existing = self._nodes.get(ev.run_id)
        if existing is not None:
            if not isinstance(existing.node, RunNode):
                return
            self._link_fork_input(ev.input_codec_message_id, ev.run_id)
            # Only a suspended run reactivates, and never on a start older than its recorded lifecycle
            # (history folds newest page first, so the start of a suspended run often comes last).
            newest = max(existing.lifecycle) if existing.lifecycle else None
            stale = ev.serial is not None and newest is not None and newest > ev.serial
            if existing.node.status == "suspended" and not stale:
                existing.node.status = "active"
            self._backfill(existing, ev)
            return
        fork_entry = self._rekey_fork_run(ev.input_codec_message_id, ev.run_id)
        if fork_entry is not None:
            self._backfill(fork_entry, ev)
            return
        node = RunNode(
            run_id=ev.run_id,
            parent=ev.parent,
            fork_of=self._cmid_to_key.get(ev.fork_of) if ev.fork_of else None,
            regenerates=ev.regenerates,
            client_id=ev.client_id,
            invocation_id=ev.invocation_id,
            start_serial=ev.serial,
            start_parent=ev.parent,
            projection=self.new_projection(),
        )
        entry = self._wrap(node, run_start_seen=True)
        self._insert(ev.run_id, entry, node.parent)
        self._index_reply_run(node)
        self._link_fork_input(ev.input_codec_message_id, ev.run_id)

    def _rekey_fork_run(self, fork_cmid: str | None, run_id: str) -> Internal | None:
        """Re-key an optimistic fork run (keyed by its codec-message-id) onto the agent-minted run-id."""
        if fork_cmid is None or fork_cmid == run_id:
            return None
        entry = self._nodes.get(fork_cmid)
        if entry is None or not isinstance(entry.node, RunNode) or entry.node.run_id != fork_cmid:
            return None
        other = self._nodes.get(run_id)
        if other is not None and other is not entry:
            return None
        node = entry.node
        self._version += 1
        del self._nodes[fork_cmid]
        node.run_id = run_id
        self._nodes[run_id] = entry
        _discard_key(self._children, node.parent, fork_cmid)
        _add_key(self._children, node.parent, run_id)
        if node.parent is not None:
            _discard_key(self._reply_runs, node.parent, fork_cmid)
            _add_key(self._reply_runs, node.parent, run_id)
        self._cmid_to_key[fork_cmid] = run_id
        for cmid, key in list(self._cmid_to_key.items()):
            if key == fork_cmid:
                self._cmid_to_key[cmid] = run_id
        self._adopt_early(entry)
        return entry

    def _adopt_wire_fields(self, node: RunNode, headers: Mapping[str, str]) -> None:
        """A run whose ``ai-run-start`` has not folded (maybe never will: history read only back to
        after it) takes its parent and owner from its oldest wire naming them, as if that wire had
        created it — so they do not depend on whether its step-start (naming neither) folded first.
        Only called for a wire older than every other of the run: not per message."""
        parent = headers.get(H_PARENT)
        if parent is not None and parent != node.parent:
            if node.parent is not None:
                _discard_key(self._reply_runs, node.parent, node.run_id)
            self._reparent(node.run_id, node.parent, parent)
            node.parent = parent
            self._index_reply_run(node)
        client_id = headers.get(H_RUN_CLIENT_ID)
        if client_id:
            node.client_id = client_id
        invocation_id = headers.get(H_INVOCATION_ID)
        if invocation_id:
            node.invocation_id = invocation_id

    def _link_fork_input(self, fork_cmid: str | None, run_id: str) -> None:
        if fork_cmid is None or fork_cmid == run_id:
            return
        # Only an optimistic run keyed by that codec-message-id is re-keyed: every output names its
        # input's codec-message-id, usually an input node's (no re-key call for those).
        keyed = self._nodes.get(fork_cmid)
        if (
            keyed is not None
            and type(keyed.node) is RunNode
            and self._rekey_fork_run(fork_cmid, run_id) is not None
        ):
            return
        if fork_cmid not in self._cmid_to_key:
            self._cmid_to_key[fork_cmid] = run_id
            self._version += 1

    def _apply_step_lifecycle(self, ev: StepLifecycle) -> None:
        entry = self._nodes.get(ev.run_id)
        if entry is None:  # a step-end too: it can fold before every other wire of its run
            node = RunNode(ev.run_id, None, None, None, "", "", None, projection=self.new_projection())
            entry = self._wrap(node)
            self._insert(ev.run_id, entry, None)
        if entry is None or not isinstance(entry.node, RunNode):
            return
        ss = entry.step_state if entry.step_state is not None else StepState()
        entry.step_state = ss
        rec = ss.steps.get(ev.step_id)
        if rec is None:
            rec = ss.steps[ev.step_id] = StepRecord()
        start_serial = ev.serial if ev.type == "step-start" else ev.step_start_serial
        if start_serial is not None:
            have = rec.start_serials
            if have is None:
                rec.start_serials = start_serial  # a lone attempt: itself, as in _add_key
            elif isinstance(have, str):
                if have != start_serial:
                    rec.start_serials = {have, start_serial}
            else:
                have.add(start_serial)
        if ev.type == "step-start":
            serial = ev.serial
            canonical = (
                not rec.started
                or (rec.canonical is None and serial is not None)
                or (rec.canonical is not None and serial is not None and serial > rec.canonical)
            )
            rec.started = True
            if canonical:
                rec.canonical = serial
                rec.step_client_id = ev.step_client_id
                if any(s != serial for s in _keys(ss.output_attempts, ev.step_id)):
                    self._refold_later(entry)
        elif ev.step_start_serial is not None:
            rec.end_reasons[ev.step_start_serial] = ev.reason or "complete"
        steps: list[StepInfo] = []
        records: Iterable[tuple[str, StepRecord]] = ss.steps.items()
        if len(ss.steps) > 1:  # in the order the steps started, whatever order they folded in
            records = sorted(records, key=_first_start)
        for step_id, r in records:
            status: Any = "active"
            if r.started and r.canonical is not None:
                status = r.end_reasons.get(r.canonical, "active")
            steps.append(StepInfo(step_id, status, len(_serials(r.start_serials)), r.step_client_id))
        entry.node.steps = tuple(steps)

    # --- client-side view (tree.ts visibleNodes + conversation-projection.ts) ------------------

    def _parent_key(self, node: Node) -> str | None:
        return self._cmid_to_key.get(node.parent) if node.parent is not None else None

    def _input_group_root(self, node: InputNode) -> InputNode:
        current = node
        visited = {current.key}
        while current.fork_of is not None and current.fork_of not in visited:
            target = self._nodes.get(current.fork_of)
            if (
                target is None
                or not isinstance(target.node, InputNode)
                or target.node.parent != current.parent
            ):
                break
            current = target.node
            visited.add(current.key)
        return current

    def _is_sibling(self, node: Node, original: Node) -> bool:
        if node.kind != original.kind or node.parent != original.parent:
            return False
        if isinstance(node, RunNode) or node.key == original.key:
            return True
        current: Node = node
        visited = {current.key}
        while isinstance(current, InputNode) and current.fork_of is not None:
            if current.fork_of == original.key:
                return True
            if current.fork_of in visited:
                break
            target = self._nodes.get(current.fork_of)
            if target is None:
                break
            current = target.node
            visited.add(current.key)
        return False

    def siblings(self, key: str) -> list[Node]:
        """Edit siblings (inputs linked by ``fork-of``) or regenerate siblings (runs sharing a parent)."""
        if self._sibling_cache_version != self._version:
            self._sibling_cache.clear()
            self._sibling_cache_version = self._version
        cached = self._sibling_cache.get(key)
        if cached is not None:
            return list(cached)
        entry = self._nodes.get(key)
        if entry is None:
            return []
        original = entry.node
        if isinstance(original, InputNode):
            original = self._input_group_root(original)
        group = [
            self._nodes[k]
            for k in _keys(self._children, original.parent)
            if k not in self._superseded
            and k in self._nodes
            and self._is_sibling(self._nodes[k].node, original)
        ]
        group.sort(key=self._sort_key)
        nodes = [e.node for e in group]
        self._sibling_cache[key] = nodes
        return list(nodes)

    def group_root(self, key: str) -> str:
        """The key identifying a sibling group (the input edited first, or the earliest run)."""
        entry = self._nodes.get(key)
        if entry is None:
            return key
        if isinstance(entry.node, InputNode):
            return self._input_group_root(entry.node).key
        group = self.siblings(key)
        return group[0].key if group else key

    def visible_nodes(self, selections: Mapping[str, str] | None = None) -> list[Node]:
        """The branch a client shows: per sibling group the selected key (default the latest serial)."""
        chosen = selections or {}
        result: list[Node] = []
        path: set[str] = set()
        resolved: dict[str, str] = {}
        for entry in self._sorted:
            node = entry.node
            key = node.key
            if key in self._superseded:
                continue
            parent_key = self._parent_key(node)
            if parent_key is not None and parent_key not in path:
                continue
            group = self.siblings(key)
            if len(group) > 1:
                root = self.group_root(key)
                selected = resolved.get(root)
                if selected is None:
                    preferred = chosen.get(root)
                    selected = preferred if preferred in {n.key for n in group} else group[-1].key
                    resolved[root] = selected
                if key != selected:
                    continue
            path.add(key)
            result.append(node)
        return result

    def _non_head_regenerators(self, target: str, predecessor: str) -> list[RunNode]:
        runs = [r for r in self.reply_runs(predecessor) if r.regenerates == target]
        runs.sort(key=lambda r: r.start_serial if r.start_serial is not None else "\uffff")
        return runs

    def visible_messages(self, selections: Mapping[str, str] | None = None) -> list[CodecMessage]:
        """The flattened messages of :meth:`visible_nodes`, splicing in the latest non-head regenerate."""
        nodes = self.visible_nodes(selections)

        def emit(node: Node, out: list[CodecMessage]) -> None:
            own = node.messages
            if isinstance(node, InputNode):
                out.extend(own)
                return
            for i, m in enumerate(own):
                if i > 0:
                    regens = self._non_head_regenerators(m.codec_message_id, own[i - 1].codec_message_id)
                    if regens:
                        emit(regens[-1], out)
                        return
                out.append(m)

        skip: set[str] = set()
        for node in nodes:
            if isinstance(node, RunNode):
                own = node.messages
                for i in range(1, len(own)):
                    for r in self._non_head_regenerators(
                        own[i].codec_message_id, own[i - 1].codec_message_id
                    ):
                        skip.add(r.run_id)
        out: list[CodecMessage] = []
        for node in nodes:
            if isinstance(node, RunNode) and node.run_id in skip:
                continue
            emit(node, out)
        return out


# Most parents have one child (a conversation is mostly a chain), so a parent's keys are the lone key
# itself until a second one arrives: a set per parent was one more tracked object per node.


def _add_key(index: dict[_P, str | set[str]], parent: _P, key: str) -> None:
    have = index.get(parent)
    if have is None:
        index[parent] = key
    elif isinstance(have, str):
        if have != key:
            index[parent] = {have, key}
    else:
        have.add(key)


def _discard_key(index: dict[_P, str | set[str]], parent: _P, key: str) -> None:
    have = index.get(parent)
    if have is None:
        return
    if isinstance(have, str):
        if have == key:
            del index[parent]
        return
    have.discard(key)
    if not have:
        del index[parent]


def _keys(index: dict[_P, str | set[str]], parent: _P) -> Collection[str]:
    have = index.get(parent)
    if have is None:
        return ()
    return (have,) if isinstance(have, str) else have


def _first_start(item: tuple[str, StepRecord]) -> str:
    """A step's place: its oldest ``ai-step-start`` serial (a step-end names its start's)."""
    serials = _serials(item[1].start_serials)
    return min(serials) if serials else "\uffff"


def _serials(have: str | set[str] | None) -> Collection[str]:
    """A step's start serials (``StepRecord.start_serials``: none, the lone one, or a set)."""
    if have is None:
        return ()
    return (have,) if isinstance(have, str) else have


def _apply_status(node: RunNode, ev: RunLifecycle) -> None:
    """One suspend/resume/end on a run's status (tree.ts ``_applyRunSuspend/Resume/End``)."""
    match ev.type:
        case "suspend":
            last = node.last_resume_invocation_id
            if last is not None and ev.invocation_id not in ("", last):
                return  # a late suspend from an invocation older than the latest resume
            node.status = "suspended"
            node.end_serial = ev.serial
        case "resume":
            if ev.invocation_id != "":
                node.last_resume_invocation_id = ev.invocation_id
            if node.status == "suspended":
                node.status = "active"
        case "end":
            reason = ev.reason or "complete"
            node.status = reason
            node.error = ev.error if reason == "error" else None
            node.end_serial = ev.serial
        case _:
            pass


def _parse_steer_stamp(stamp: str | None) -> tuple[str, ...] | None:
    if stamp is None:
        return None
    try:
        parsed = json.loads(stamp)
    except ValueError:
        return None
    if not isinstance(parsed, list):
        return None
    ids = tuple(i for i in parsed if isinstance(i, str))
    return ids or None
