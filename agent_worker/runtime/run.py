"""One run: lifecycle publishes, steps, assistant messages, steering and cancellation.

Mirrors the JS ``AgentRun`` (agent-session.ts, run-manager.ts, run-step-writer.ts) with Python
mechanics: a run is driven by one asyncio task; :meth:`Run.cancel` records *who* asked and calls
``task.cancel()``, so an authorised ``ai-cancel``, worker shutdown and a timeout share one teardown
path. Lifecycle publishes (``ai-run-start``/``-resume``/``-suspend``/``-end``, ``ai-step-*``) carry
no data and only the transport tier. Each :class:`OutputMessage` is one assistant message (one JS
``pipe``): its own codec-message-id, encoder and stream writer, bracketed by one implicit step that
opens at its first output.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal, Protocol

from agent_worker.errors import AgentWorkerError, CodecError, TransportError
from agent_worker.logs import get_logger
from agent_worker.protocol.branch import SteerTracker, select_branch_messages
from agent_worker.protocol.codecs import Codec, detect_codec
from agent_worker.protocol.headers import (
    AI_RUN_END,
    AI_RUN_RESUME,
    AI_RUN_START,
    AI_RUN_SUSPEND,
    AI_STEP_END,
    AI_STEP_START,
    H_STEER_CODEC_MESSAGE_IDS,
    H_STEP_START_SERIAL,
    RunEndReason,
    RunLifecycle,
    StepEndReason,
    build_lifecycle_headers,
    build_output_headers,
    build_step_headers,
    js_json,
    lifecycle_message,
)
from agent_worker.protocol.tree import ConversationTree
from agent_worker.protocol.wire import InboundMessage, OutboundMessage
from agent_worker.runtime.digest import RunDigest
from agent_worker.runtime.journal import RunRecorder
from agent_worker.runtime.streaming import ChannelWriter, StreamWriter, publish_reliably, retrieve_exception
from agent_worker.runtime.trigger import Trigger

__all__ = ["CancelHook", "CancelRequest", "OutputMessage", "Run", "RunHost", "RunPhase"]


class RunHost(Protocol):
    """The narrow interface a run needs from the session that hosts it (``AgentSession`` provides
    it); it keeps ``run`` independent of ``session``, which creates and routes runs."""

    @property
    def name(self) -> str: ...

    @property
    def channel(self) -> ChannelWriter: ...

    @property
    def tree(self) -> ConversationTree: ...

    def deregister(self, run: Run) -> None: ...


log = get_logger("agent_worker.runtime.run")

LONG_CONVERSATION_NODES = 200
"""From this many runs and inputs in the tree, a pipelined run-start's frame is written before the
handler builds its prompt (:meth:`Run.start`): building it costs more than the loop turn."""


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """What a cancel hook sees: the raw ``ai-cancel`` (its ``client_id`` is Ably-verified) and the run."""

    message: InboundMessage
    run: Run


CancelHook = Callable[[CancelRequest], "bool | Awaitable[bool | None] | None"]
"""Return True to honour, False to refuse, None to defer to the next policy (run → worker → default)."""


class RunPhase(Enum):
    CREATED = "created"
    LOCATED = "located"
    ACTIVE = "active"
    SUSPENDED = "suspended"
    ENDED = "ended"


CancelSource = Literal["client", "shutdown", "timeout", "session"]


class Run:
    """A run on one session. Created by :meth:`AgentSession.create_run`."""

    def __init__(
        self,
        session: RunHost,
        *,
        event_id: str,
        invocation_id: str | None = None,
        run_id: str | None = None,
        on_cancel: CancelHook | None = None,
        coalesce_window_s: float = 0.04,
    ) -> None:
        self.session = session
        self.event_id = event_id
        self.invocation_id = invocation_id or str(uuid.uuid4())
        self.run_id = run_id or str(uuid.uuid4())
        """Provisional until the trigger is located: a continuation adopts the trigger's run-id."""
        self.on_cancel = on_cancel
        self.coalesce_window_s = coalesce_window_s
        self.trigger: Trigger | None = None
        self.phase = RunPhase.CREATED
        self.outcome: RunEndReason | Literal["suspended"] | None = None
        self.error: AgentWorkerError | None = None
        self.task: asyncio.Task[Any] | None = None
        self.caller_client_id: str | None = None  # an authenticated invoker: must be the input's publisher
        self.cancel_source: CancelSource | None = None
        self.cancelled_by: str | None = None
        self.trigger_message: asyncio.Future[InboundMessage] = asyncio.get_running_loop().create_future()
        """Resolved by the session when a message with this run's ``event-id`` folds in."""
        self._start_published = False
        self._start_ack: asyncio.Future[str | None] | None = None
        """A pipelined run-start awaiting its ACK (see :meth:`start`)."""
        self._start_lost = False
        """A pipelined run-start failed: the run's terminal publishes it again first."""
        self.steers = SteerTracker()
        self._steers_seen: set[str] = set()
        self._step_index = 0
        self._step_client_id: str | None = None
        self._active_message: OutputMessage | None = None
        self._produced_output = False
        self.first_output_at: float | None = None
        self.on_steer: Callable[[], None] | None = None
        self.digest = RunDigest()
        """The reply's opening words and what waits for the user (for notifications)."""
        self.journal: RunRecorder | None = None
        """Set by a worker with a crash journal: what this run has open on the wire is recorded."""
        self.step_id_base: str | None = None
        """Set by a durable engine: step ids derive from it (stable across a retried activity, so
        the retry's output supersedes the lost attempt's) instead of a per-process counter."""

    def __repr__(self) -> str:
        return f"Run(run_id={self.run_id!r}, session={self.session.name!r}, phase={self.phase.value})"

    # --- identity ----------------------------------------------------------------------------------

    @property
    def owner_client_id(self) -> str | None:
        """The Ably-verified clientId that published the trigger (the cancel policy's run owner)."""
        return self.trigger.client_id if self.trigger is not None else None

    @property
    def run_client_id(self) -> str:
        """The client-asserted ``run-client-id`` re-stamped on every agent message (``""`` if none)."""
        return (self.trigger.run_client_id if self.trigger is not None else None) or ""

    @property
    def is_continuation(self) -> bool:
        return self.trigger is not None and self.trigger.run_id is not None

    @property
    def produced_output(self) -> bool:
        """Whether an assistant message was opened (a pass that opens none ends the run)."""
        return self._produced_output

    @property
    def started(self) -> bool:
        """Whether ``ai-run-start``/``ai-run-resume`` is on the wire."""
        return self._start_published

    # --- locating ----------------------------------------------------------------------------------

    def set_trigger(self, trigger: Trigger) -> None:
        """Called by the session when the trigger folds in: adopt a continuation's run-id."""
        self.trigger = trigger
        if trigger.run_id is not None:
            self.run_id = trigger.run_id
        self.phase = RunPhase.LOCATED

    # --- lifecycle ---------------------------------------------------------------------------------

    def _lifecycle_headers(self, **extra: Any) -> dict[str, str]:
        t = self.trigger
        return build_lifecycle_headers(
            run_id=self.run_id,
            run_client_id=self.run_client_id,
            invocation_id=self.invocation_id,
            input_client_id=t.client_id if t is not None else None,
            input_codec_message_id=t.codec_message_id if t is not None else None,
            **extra,
        )

    async def start(self, *, pipelined: bool = False) -> None:
        """Publish ``ai-run-start`` (fresh run or fork) or ``ai-run-resume`` (continuation).

        ``pipelined``: return once its send is under way (a task that writes the frame in its first
        step), not acknowledged, so the model call starts one round trip sooner; whatever the run
        publishes next follows it on the wire (same connection, sent in order). Its ACK is
        confirmed (:meth:`confirm_started`) with the run's first step and before its end; if it
        failed, the run is not started and a terminal publishes it again."""
        if self._start_published:
            return
        t = self.trigger
        if t is not None and t.run_id is not None:
            msg = lifecycle_message(AI_RUN_RESUME, self._lifecycle_headers())
        else:
            msg = lifecycle_message(
                AI_RUN_START,
                self._lifecycle_headers(
                    parent=t.structural_parent if t is not None else None,
                    fork_of=t.fork_of if t is not None else None,
                    regenerates=t.regenerates if t is not None else None,
                ),
            )
        if self.journal is not None:
            self.journal.run_opened(
                self.session.name,
                self.run_id,
                self.owner_client_id,
                {
                    "run_id": self.run_id,
                    "run_client_id": self.run_client_id,
                    "invocation_id": self.invocation_id,
                    "input_client_id": t.client_id if t is not None else None,
                    "input_codec_message_id": t.codec_message_id if t is not None else None,
                },
            )
        send: Callable[[OutboundMessage], asyncio.Future[str | None]] | None = (
            getattr(self.session.channel, "start_publish", None) if pipelined else None
        )
        if send is not None:
            await self.session.channel.acquire()
            self._start_published = True
            self._start_ack = send(msg)
            self._start_ack.add_done_callback(retrieve_exception)
            # The task writes its frame in its first step, before any task created after it takes
            # its own (the step-start's), and a publish this run makes itself waits for its ACK
            # first (:meth:`_start_before_end`). No yield for a short conversation (in a burst of
            # new ones each yield is a turn of a busy loop), but a long one's prompt is built next,
            # in this turn (~10 ms of CPU for 1,000 messages): the frame goes out before it, so
            # every device sees the run start that much sooner.
            if self.session.tree.node_count >= LONG_CONVERSATION_NODES:
                await asyncio.sleep(0)
        else:
            # Marked before awaiting, and shielded: if the run is cancelled while the ACK is
            # pending, the run-start is on the wire anyway, and the teardown must not publish a
            # second one.
            self._start_published = True
            try:
                await asyncio.shield(publish_reliably(self.session.channel, msg))
            except TransportError:
                self._start_published = False
                raise
        self.phase = RunPhase.ACTIVE
        if t is not None and t.run_id is None:
            # Optimistic local insert (as the JS agent does) so the prompt sees the run node even if
            # the echo of the run-start has not folded yet; the echo reconciles it.
            self.session.tree.apply_run_lifecycle(
                RunLifecycle(
                    type="start",
                    run_id=self.run_id,
                    client_id=self.run_client_id,
                    invocation_id=self.invocation_id,
                    serial=None,
                    parent=t.structural_parent,
                    fork_of=t.fork_of,
                    regenerates=t.regenerates,
                    input_codec_message_id=t.codec_message_id,
                )
            )
        elif t is not None:
            # Likewise the resume: a suspended status must not outlive it here (status gates read it).
            self.session.tree.apply_run_lifecycle(
                RunLifecycle(
                    type="resume",
                    run_id=self.run_id,
                    client_id=self.run_client_id,
                    invocation_id=self.invocation_id,
                    serial=None,
                )
            )
        log.info("run_started", resume=self.is_continuation)

    @property
    def start_sending(self) -> asyncio.Future[str | None] | None:
        """A pipelined run-start's publish until :meth:`confirm_started` (done once acknowledged or
        failed: its frame is on the wire by then); ``None`` otherwise."""
        return self._start_ack

    async def confirm_started(self) -> None:
        """Wait for a pipelined run-start's ACK. If it failed, the run counts as not started (so a
        terminal publishes the run-start again, acknowledged) and the error is raised."""
        task = self._start_ack
        if task is None:
            return
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                raise
            self._start_ack = None
            self._start_published = False
            self._start_lost = True
            msg = "unable to start run; the run-start publish was cancelled"
            raise TransportError(msg, code=80003) from None
        except Exception:
            self._start_ack = None
            self._start_published = False
            self._start_lost = True
            log.warning("run_start_failed", error=str(task.exception()))
            raise
        self._start_ack = None

    async def _start_before_end(self) -> None:
        """Before a terminal publish: the run-start is acknowledged (published again if the
        pipelined one failed, whether found failed here or by the run's first step)."""
        with contextlib.suppress(Exception):
            await self.confirm_started()
        if self._start_lost:
            self._start_lost = False
            await self.start()

    def adopt_started(self) -> None:
        """This run's ``ai-run-start``/``-resume`` is already on the wire (published by another
        process, e.g. a durable engine's open-run step): carry on as if this object had published it."""
        self._start_published = True
        self.phase = RunPhase.ACTIVE

    async def suspend(self) -> None:
        """Publish ``ai-run-suspend`` (the model is waiting for client tools or approvals)."""
        if self.phase is RunPhase.ENDED:
            return
        if self._active_message is not None:
            msg = "end the active output message before suspending the run"
            raise RuntimeError(msg)
        await self._start_before_end()
        await publish_reliably(
            self.session.channel, lifecycle_message(AI_RUN_SUSPEND, self._lifecycle_headers())
        )
        self.phase = RunPhase.ENDED
        self.outcome = "suspended"
        self.session.deregister(self)
        if self.journal is not None:
            self.journal.run_closed()
        log.info("run_suspended")

    async def end(self, reason: RunEndReason, error: AgentWorkerError | None = None) -> None:
        """Close any open message (its step ends to match), then publish ``ai-run-end``."""
        if self.phase is RunPhase.ENDED:
            return
        if self._active_message is not None:
            await self._active_message.close_after_abort(reason)
        await self._start_before_end()
        extra: dict[str, Any] = {"reason": reason}
        if reason == "error" and error is not None:
            extra["error_code"] = error.code
            extra["error_message"] = error.message
        try:
            await publish_reliably(
                self.session.channel, lifecycle_message(AI_RUN_END, self._lifecycle_headers(**extra))
            )
            if self.journal is not None:
                # Only once the run-end is ACKed: a run whose end failed stays for the journal's sweep.
                self.journal.run_closed()
        finally:
            self.phase = RunPhase.ENDED
            self.outcome = reason
            self.error = error
            self.session.deregister(self)
        log.info("run_ended", reason=reason, error_code=error.code if error else None)

    async def abandon(self, *, publish: bool = True) -> None:
        """Stop here without a terminal, for a durable engine whose terminal another step publishes:
        close what this process has open (streams ``cancelled``, the step ``failed``) and deregister.
        ``publish=False``: the step was handed to another attempt, whose step (same step id, higher
        serial) supersedes this one on every client — publish nothing more, as a dead worker would."""
        try:
            message = self._active_message
            if message is not None:
                if publish:
                    await message.close_after_abort("error")
                else:
                    await message.drop()
        finally:
            self.session.deregister(self)

    # --- cancellation ------------------------------------------------------------------------------

    def cancel(self, source: CancelSource, by: str | None = None) -> bool:
        """Cancel the run's task (idempotent). Returns False when there is nothing left to cancel."""
        if self.phase is RunPhase.ENDED or self.cancel_source is not None:
            return False
        self.cancel_source = source
        self.cancelled_by = by
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if not self.trigger_message.done():
            self.trigger_message.cancel()
        return True

    @property
    def cancel_requested(self) -> bool:
        return self.cancel_source is not None

    # --- steering ----------------------------------------------------------------------------------

    def add_steer(self, codec_message_id: str) -> None:
        """A steering ``ai-input`` folded into this run (the session calls this)."""
        t = self.trigger
        if t is not None and codec_message_id == t.codec_message_id:
            return
        if codec_message_id in self._steers_seen:
            return
        self._steers_seen.add(codec_message_id)
        self.steers.add_pending(codec_message_id)
        log.info("run_steered", steer=codec_message_id)
        if self.on_steer is not None:
            self.on_steer()

    def has_input(self) -> bool:
        """JS ``hasInput()``: true before any output, then only when steering arrived since the last
        call. Drains pending steers, so the next message stamps them and the prompt answers them."""
        if self.cancel_requested:
            return False
        had = self.steers.has_pending()
        if had:
            self.steers.drain_pending()
        if not self._produced_output:
            return True
        return had

    @property
    def codec(self) -> Codec:
        """The session's codec. A trigger in another codec (the session's messages would mix
        codecs) is a clear error; the session goes on serving its own codec."""
        selector = self.session.tree.codecs
        trigger = self.trigger_message
        tag = None
        if trigger.done() and not trigger.cancelled() and trigger.exception() is None:
            tag = detect_codec(trigger.result())
        if tag is not None and tag != selector.adapter_tag:
            msg = (
                f"session {self.session.name!r} speaks {selector.adapter_tag} but this input is "
                f"{tag}; a session's messages must not mix codecs"
            )
            raise CodecError(msg, field="codec", code=40003)
        return selector.codec

    def conversation(self) -> list[dict[str, Any]]:
        """The prompt branch as codec messages (§7.3; UIMessages or OpenAIMessages): leaf-pinned
        walk, unanswered steers last, truncated before a regenerated message."""
        t = self.trigger
        if t is None:
            return []
        selected = select_branch_messages(
            self.session.tree,
            t.leaf_anchor,
            self.run_id,
            regenerates=t.regenerates,
            unresponded_steers=self.steers,
        )
        return [m.message for m in selected]

    # --- steps and output --------------------------------------------------------------------------

    def _next_step_id(self) -> str:
        base = self.step_id_base
        if base is not None:
            sid = base if self._step_index == 0 else f"{base}.{self._step_index}"
        else:
            sid = f"{self.invocation_id}-step-{self._step_index}"
        self._step_index += 1
        return sid

    def _resolve_step_client_id(self) -> str:
        if self._step_client_id is None:
            self._step_client_id = (self.trigger.client_id if self.trigger is not None else None) or ""
        return self._step_client_id

    def _step_headers(self, step_id: str, **extra: Any) -> dict[str, str]:
        return build_step_headers(
            run_id=self.run_id,
            step_id=step_id,
            invocation_id=self.invocation_id,
            run_client_id=self.run_client_id,
            input_client_id=self.trigger.client_id if self.trigger is not None else None,
            step_client_id=self._resolve_step_client_id(),
            **extra,
        )

    def open_message(self) -> OutputMessage:
        """Begin one assistant message (a JS ``pipe``); its step opens at the first output."""
        if self.phase is not RunPhase.ACTIVE:
            msg = f"unable to publish output; the run is {self.phase.value}, call start() first"
            raise RuntimeError(msg)
        if self._active_message is not None:
            msg = "unable to open a message; another message of this run is still open"
            raise RuntimeError(msg)
        self._produced_output = True
        message = OutputMessage(self, self._next_step_id(), self.steers.consume_recently_processed())
        self._active_message = message
        return message

    def _message_closed(self, message: OutputMessage) -> None:
        if self._active_message is message:
            self._active_message = None


_EARLY_MAX = 8
"""Chunks held for a pipelined step-start's ACK before ``send`` waits for it (the opening ones)."""


class OutputMessage:
    """One assistant message: encoder + stream writer + its implicit step."""

    def __init__(self, run: Run, step_id: str, steer_ids: list[str]) -> None:
        self.run = run
        self.step_id = step_id
        self.codec_message_id = str(uuid.uuid4())
        t = run.trigger
        headers = build_output_headers(
            codec_message_id=self.codec_message_id,
            run_id=run.run_id,
            run_client_id=run.run_client_id,
            invocation_id=run.invocation_id,
            input_codec_message_id=t.codec_message_id if t is not None else None,
            parent=t.leaf_anchor if t is not None else None,
            fork_of=t.fork_of if t is not None else None,
            regenerates=t.regenerates if t is not None else None,
            input_client_id=t.client_id if t is not None else None,
            step_id=step_id,
            step_client_id=run._resolve_step_client_id(),
        )
        self.encoder = run.codec.new_encoder(headers)
        if steer_ids:
            self.encoder.set_default_header(H_STEER_CODEC_MESSAGE_IDS, js_json(steer_ids))
        self.steer_ids = tuple(steer_ids)
        journal = run.journal
        self.writer = StreamWriter(
            run.session.channel,
            self.encoder,
            window_s=run.coalesce_window_s,
            on_stream_open=(lambda k, s, m: journal.opened("stream", k, s, m)) if journal else None,
            on_stream_closed=(lambda k: journal.closed("stream", k)) if journal else None,
        )
        self._step_serial: str | None = None
        self._step_open = False
        self._closed = False
        self._opening: asyncio.Task[None] | None = None
        """The step-start sent, not yet acknowledged: the chunks in ``_early`` go out once it is."""
        self._early: list[Mapping[str, Any]] = []
        self._dropped = False

    @property
    def step_open(self) -> bool:
        return self._step_open

    async def _open_step(self) -> None:
        """Publish the step-start. Pipelined where the channel can (``start_publish``): it is sent,
        not acknowledged, when this returns, so the model call does not wait its round trip; the
        chunks sent meanwhile wait in ``_early`` (they carry its serial, ``step-start-serial``) and
        go out behind it once it is acknowledged (:meth:`_send_early`), in order."""
        self._step_open = True
        channel = self.run.session.channel
        msg = lifecycle_message(AI_STEP_START, self.run._step_headers(self.step_id))
        send: Callable[[OutboundMessage], asyncio.Future[str | None]] | None = getattr(
            channel, "start_publish", None
        )
        if send is None:
            await self._step_started(await publish_reliably(channel, msg))
            return
        await channel.acquire()
        ack = send(msg)
        ack.add_done_callback(retrieve_exception)
        # Everything of this message goes out from this task, after the step-start's ACK: no
        # yield is needed for the wire order.
        self._opening = asyncio.create_task(self._send_early(ack, msg))
        self._opening.add_done_callback(retrieve_exception)

    async def _step_started(self, serial: str | None) -> None:
        self._step_serial = serial
        await self.run.confirm_started()  # ACKs come in order: settled by now, unless it failed
        if serial is not None:
            self.encoder.set_default_header(H_STEP_START_SERIAL, serial)
            if self.run.journal is not None:
                self.run.journal.opened("step", self.step_id, serial, self._step_end("cancelled"))
        if self.run.first_output_at is None:
            self.run.first_output_at = asyncio.get_running_loop().time()

    async def _send_early(self, ack: asyncio.Future[str | None], msg: OutboundMessage) -> None:
        """Once the pipelined step-start is acknowledged: the chunks sent meanwhile, in order. A
        step-start refused for rate (429: not applied) is published again first; nothing of this
        message is sent before it is acknowledged."""
        try:
            serial = await ack  # (not shielded: an extra loop turn; a dropped message waits it out)
        except TransportError as exc:
            if exc.status_code != 429:
                raise
            # Not before the run-start: when it shared the step-start's frame (Channel.start_publish)
            # it was refused too, and the run fails here without anything of this message sent.
            await self.run.confirm_started()
            serial = await publish_reliably(self.run.session.channel, msg)
        if self._dropped:
            return
        await self._step_started(serial)
        early = self._early
        while early:
            await self.writer.write(self.encoder.encode(early.pop(0)))

    async def _settle_opening(self) -> None:
        """Wait until the chunks held for the step-start's ACK are handed to the writer (raising
        the failure that stopped them)."""
        task = self._opening
        if task is None:
            return
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                raise  # the caller was cancelled, not the step-start
            msg = "unable to open step; the step-start publish was cancelled"
            raise TransportError(msg, code=80003) from None

    async def send(self, chunk: Mapping[str, Any]) -> None:
        """Encode one codec output event (a UIMessageChunk, a Responses event) and put it on the
        wire (the step opens before the first). While a pipelined step-start awaits its ACK, up to
        ``_EARLY_MAX`` chunks are held and this returns at once (the handler calls the model
        meanwhile); the next ones wait for it."""
        if self._closed:
            msg = "unable to send; this output message is closed"
            raise RuntimeError(msg)
        if not self._step_open:
            await self._open_step()
        self.run.digest.observe(chunk)
        opening = self._opening
        if opening is not None:
            if not opening.done() and len(self._early) < _EARLY_MAX:
                self._early.append(chunk)
                return
            await self._settle_opening()
        await self.writer.write(self.encoder.encode(chunk))

    async def _close_step(self, reason: StepEndReason) -> None:
        if not self._step_open:
            return
        self._step_open = False
        if self._step_serial is None:
            log.warning("step_end_skipped_no_serial", step_id=self.step_id)
            return
        await publish_reliably(self.run.session.channel, self._step_end(reason))
        if self.run.journal is not None:
            self.run.journal.closed("step", self.step_id)

    def _step_end(self, reason: StepEndReason) -> OutboundMessage:
        return lifecycle_message(
            AI_STEP_END,
            self.run._step_headers(self.step_id, step_start_serial=self._step_serial, reason=reason),
        )

    async def close(self, reason: StepEndReason = "complete") -> None:
        """Finish normally: flush every append, close anything still streaming, end the step."""
        if self._closed:
            return
        await self._settle_opening()  # its failure is the run's: the teardown ends the step failed
        try:
            await self.writer.cancel_streams()
            await self.writer.flush()
        finally:
            self._closed = True
            await self.writer.aclose()
            try:
                await self._close_step(reason)
            finally:
                self.run._message_closed(self)

    async def drop(self) -> None:
        """Stop writing without closing anything on the wire (the step is superseded)."""
        self._closed = True
        self._step_open = False
        self._dropped = True  # superseded: nothing more of it goes out (see _send_early)
        try:
            await self.writer.aclose()
        finally:
            self.run._message_closed(self)

    async def close_after_abort(self, run_reason: RunEndReason) -> None:
        """Cancellation/error teardown: every open stream is closed ``cancelled`` (never left
        ``streaming``), pending appends are flushed, and the step ends cancelled/failed."""
        if self._closed:
            return
        step_reason: StepEndReason = "cancelled" if run_reason == "cancelled" else "failed"
        if run_reason == "complete":
            step_reason = "complete"
        opening = self._opening
        if opening is not None and not opening.done():
            # What the handler sent is handed to the writer first (so its streams close cancelled),
            # and the step-start's serial is known for the step's end; a failure was the run's.
            await asyncio.wait([opening])
        try:
            await self.writer.cancel_streams()
        except AgentWorkerError as exc:
            log.warning("stream_close_failed", error=exc.message)
        finally:
            self._closed = True
            await self.writer.aclose()
            try:
                await self._close_step(step_reason)
            finally:
                self.run._message_closed(self)
