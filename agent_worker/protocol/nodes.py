"""Tree node types and the per-node wire log (src/core/transport/tree.ts, wire-log.ts, types/tree.ts)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from agent_worker.protocol.codec_core import CodecMessage, Projection
from agent_worker.protocol.frozen import fast_init
from agent_worker.protocol.headers import RunEndError, RunLifecycle, StepLifecycle
from agent_worker.protocol.vercel.decoder import Chunk, InputEvent
from agent_worker.protocol.vercel.reducer import VercelProjection

__all__ = [
    "ApplyResult",
    "DeferredProjection",
    "Event",
    "InputNode",
    "Internal",
    "Node",
    "RunNode",
    "RunStatus",
    "StepInfo",
    "StepRecord",
    "StepState",
    "WireLog",
]

RunStatus = Literal["active", "suspended", "complete", "cancelled", "error"]
Event = tuple[Literal["input", "output"], dict[str, Any]]


@fast_init
@dataclass(frozen=True, slots=True)
class StepInfo:
    """Read model of one step (its canonical attempt = highest ``ai-step-start`` serial)."""

    step_id: str
    status: Literal["active", "complete", "failed", "cancelled"]
    attempt_count: int
    step_client_id: str | None


class LogEntry(list[dict[str, Any]]):
    """One serial's events. A message's events all go one way (``ai-input``: inputs, else outputs),
    so the direction is kept once per entry, not as a ``(direction, event)`` tuple per event.

    The entry is the list of its events (``events`` is the entry itself): one object kept per folded
    message, not an entry and its list, for every collection to walk."""

    __slots__ = ("decoded_through", "inputs", "message_id", "serial")
    # Built by _entry (list's own constructor copies the events; no Python __init__: one per message).
    serial: str
    message_id: str | None
    inputs: bool
    decoded_through: str

    @property
    def events(self) -> list[dict[str, Any]]:
        return self

    def __repr__(self) -> str:
        return (
            f"LogEntry(serial={self.serial!r}, message_id={self.message_id!r}, inputs={self.inputs!r}, "
            f"events={list(self)!r}, decoded_through={self.decoded_through!r})"
        )


def _entry(
    serial: str, message_id: str | None, inputs: bool, events: list[dict[str, Any]], decoded_through: str
) -> LogEntry:
    entry = LogEntry(events)
    entry.serial = serial
    entry.message_id = message_id
    entry.inputs = inputs
    entry.decoded_through = decoded_through
    return entry


class WireLog(list[LogEntry]):
    """Per-node serial-ordered event log with a per-serial version high-water mark (wire-log.ts).

    The log is the list itself (one object per node, not a wrapper and its list)."""

    __slots__ = ()

    def record(  # noqa: PLR0917 - called per message: positional is cheaper
        self,
        serial: str,
        message_id: str | None,
        inputs: bool,
        events: list[dict[str, Any]],
        version: str | None,
        streamed: bool,
    ) -> Literal["dropped", "incremental", "refold"]:
        """Records ``events`` (copied into the entry)."""
        if not self or self[-1].serial < serial:  # the usual case: a newer message, appended
            entry = LogEntry(events)  # _entry(...), inline
            entry.serial = serial
            entry.message_id = message_id
            entry.inputs = inputs
            entry.decoded_through = version or serial
            self.append(entry)
            return "incremental"
        last = len(self) - 1
        for i in range(last, -1, -1):
            entry = self[i]
            if entry.serial == serial:
                if version is not None and (version <= entry.decoded_through or not streamed):
                    return "dropped"
                if entry.inputs is inputs:
                    entry.extend(events)
                    if version is not None:
                        entry.decoded_through = version
                    return "incremental" if i == last else "refold"
                # The same serial now going the other way (a renamed update): a second entry right
                # after it keeps the fold order the events arrived in (and the entry's message id).
                through = version if version is not None else entry.decoded_through
                self.insert(i + 1, _entry(serial, entry.message_id, inputs, events, through))
                return "incremental" if i == last else "refold"
            if entry.serial < serial:
                self.insert(i + 1, _entry(serial, message_id, inputs, events, version or serial))
                return "incremental" if i == last else "refold"
        self.insert(0, _entry(serial, message_id, inputs, events, version or serial))
        return "incremental" if len(self) == 1 else "refold"


@dataclass(slots=True)
class StepRecord:
    started: bool = False
    canonical: str | None = None
    step_client_id: str | None = None
    # The step's ai-step-start serials: none yet, the lone one itself, or a set once there are two
    # (a set per step was one more tracked object per run).
    start_serials: str | set[str] | None = None
    end_reasons: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class StepState:
    steps: dict[str, StepRecord] = field(default_factory=dict)
    attribution: dict[str, tuple[str, str]] = field(
        default_factory=dict
    )  # output serial → (step, start serial)
    # step → the step-start serials its outputs named: the lone one itself, or a set (tree._add_key)
    output_attempts: dict[str, str | set[str]] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class InputNode:
    """A run-less user input (key = codec-message-id)."""

    codec_message_id: str
    parent: str | None
    fork_of: str | None
    serial: str | None
    projection: Projection = field(default_factory=VercelProjection)
    kind: Literal["input"] = "input"

    @property
    def key(self) -> str:
        return self.codec_message_id

    @property
    def sort_serial(self) -> str | None:
        return self.serial

    @property
    def messages(self) -> list[CodecMessage]:
        return self.projection.messages


@dataclass(slots=True, eq=False)
class RunNode:
    """A run (key = run-id) with its lifecycle status and folded assistant/steering messages."""

    run_id: str
    parent: str | None
    fork_of: str | None
    regenerates: str | None
    client_id: str
    invocation_id: str
    start_serial: str | None
    status: RunStatus = "active"
    error: RunEndError | None = None
    end_serial: str | None = None
    last_resume_invocation_id: str | None = None
    # ``parent`` of the folded ai-run-start: ``parent`` is taken from whichever wire created the node
    # (a continuation's output names the run's own message), so the agent's branch walk trusts this.
    start_parent: str | None = None
    steps: tuple[StepInfo, ...] = ()
    projection: Projection = field(default_factory=VercelProjection)
    kind: Literal["run"] = "run"

    @property
    def key(self) -> str:
        return self.run_id

    @property
    def sort_serial(self) -> str | None:
        return self.start_serial

    @property
    def messages(self) -> list[CodecMessage]:
        return self.projection.messages


Node = InputNode | RunNode


@dataclass(slots=True, eq=False)
class Internal:
    node: Node
    seq: int
    log: WireLog = field(default_factory=WireLog)
    run_start_seen: bool = False
    optimistic: bool = False
    step_state: StepState | None = None
    # A run's suspend/resume/end by serial, so a late older one refolds the status in serial order
    # (None until the first: an input node never has one).
    lifecycle: dict[str, RunLifecycle] | None = None
    # Where ConversationTree placed it in its serial order (its sort key then).
    sort_key: tuple[int, str, int] = (1, "", 0)


class DeferredProjection:
    """A node's projection while a refold of it is pending; its first use refolds the node.

    The tree refolds a node from its log when a wire lands before the log's newest entry — an
    append to a stream of a run that is not its newest (two streams interleaved, or one held open
    while other messages follow). Refolding at every such append was quadratic in the run's length;
    deferred to the next read, the appends between two reads cost one refold. The refold is the same
    function of the same log and step state, so a read sees what refolding at every append gave."""

    __slots__ = ("_entry", "_refold", "_resolved")

    def __init__(self, entry: Internal, refold: Callable[[Internal], None]) -> None:
        self._entry = entry
        self._refold = refold
        self._resolved: Projection | None = None

    def resolve(self) -> Projection:
        """The refolded projection (refolding the node now, the first time)."""
        real = self._resolved
        if real is None:
            node = self._entry.node
            if node.projection is self:
                self._refold(self._entry)  # sets node.projection
            real = node.projection  # (a holder of an older deferral gets the node's current one)
            if type(real) is DeferredProjection:
                real = real.resolve()
            self._resolved = real
        return real

    @property
    def messages(self) -> list[CodecMessage]:
        return self.resolve().messages

    def find(self, codec_message_id: str) -> CodecMessage | None:
        return self.resolve().find(codec_message_id)

    def fold_input(self, event: Mapping[str, Any], codec_message_id: str | None) -> None:
        self.resolve().fold_input(event, codec_message_id)

    def fold_output(self, event: Mapping[str, Any], codec_message_id: str | None) -> None:
        self.resolve().fold_output(event, codec_message_id)

    def __getattr__(self, name: str) -> Any:
        # A codec's own public members (beyond the Projection protocol). Never a private one: an
        # instance built without __init__ (a copy) would otherwise recurse looking up its slots.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.resolve(), name)


@fast_init
@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What one :meth:`ConversationTree.apply` did — the JS tree's ``run``/``output`` events in one value.

    A steering message is an ``ai-input`` folded into a run: ``run_id`` set and ``inputs`` non-empty.
    """

    run_lifecycle: RunLifecycle | None = None
    step_lifecycle: StepLifecycle | None = None
    folded: bool = False
    run_id: str | None = None
    codec_message_id: str | None = None
    input_codec_message_id: str | None = None
    serial: str | None = None
    step_id: str | None = None
    step_start_serial: str | None = None
    steer_codec_message_ids: tuple[str, ...] | None = None
    inputs: tuple[InputEvent, ...] = ()
    outputs: tuple[Chunk, ...] = ()
