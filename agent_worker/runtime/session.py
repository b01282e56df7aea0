"""One session (= one Ably channel): subscribe, fold, locate triggers, route cancels and steers.

The session subscribes to the whole channel and folds every message — live, and from REST history
pages read backwards from the attach serial — into one :class:`ConversationTree` shared by all of
its runs (agent-session.ts). With echo off (the worker's default) its own messages are not
delivered: the channel hands them over from their ACKs (transport/local.py). A session whose
channel lost continuity, or whose own messages could not all be folded exactly, is marked
:attr:`AgentSession.stale` (the pool replaces it when idle). On top of the fold it:

* resolves runs waiting for their trigger ``event-id`` (live arrival or a history page);
* pages history until a run's branch is complete (every ``parent`` on the walk is in the tree);
* routes live ``ai-cancel`` by ``run-id`` or ``input-codec-message-id``, buffering early cancels by
  the latter (at most 200, FIFO), and authorises each one: per-run hook → worker hook → policy;
* notices steering ``ai-input``\\ s for its active runs;
* reports fresh run-less ``ai-input``\\ s to the worker (channel-watch mode).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any, Literal

from agent_worker import telemetry
from agent_worker.errors import InputEventNotFound, ProtocolError
from agent_worker.gcpause import gc_paused
from agent_worker.logs import get_logger
from agent_worker.protocol.branch import missing_ancestor
from agent_worker.protocol.headers import (
    AI_CANCEL,
    AI_INPUT,
    AI_RUN_END,
    AI_RUN_RESUME,
    AI_RUN_START,
    AI_RUN_SUSPEND,
    AI_STEP_END,
    AI_STEP_START,
    H_EVENT_ID,
    H_INPUT_CODEC_MESSAGE_ID,
    H_RUN_ID,
    H_STREAM,
)
from agent_worker.protocol.tree import ConversationTree
from agent_worker.protocol.wire import InboundMessage
from agent_worker.runtime.folding import AppendDeferral, OpenStreams
from agent_worker.runtime.run import CancelHook, CancelRequest, Run, RunPhase
from agent_worker.runtime.trigger import Trigger
from agent_worker.transport.ably import Channel, ChannelStateEvent
from agent_worker.transport.inbound import at_or_before

__all__ = ["AgentSession", "CancelDecision", "CancelPolicy", "RunAlreadyActive"]

log = get_logger("agent_worker.runtime.session")

DEFERRED_CANCEL_LIMIT = 200
#: History pages read back for the cancels (and, watched, inputs) missed while the channel lost
#: continuity: the first of GAP_PAGE_SIZE messages, the others of GAP_LATER_PAGE_SIZE (Ably's
#: maximum), 9,100 messages in all — more than two minutes (Ably's connectionStateTtl) of a channel
#: at its 50 messages/s limit. A longer gap is read from its newest end only (logged).
GAP_PAGES = 10
GAP_PAGE_SIZE = 100
GAP_LATER_PAGE_SIZE = 1000
#: How much longer than ``trigger_wait_s`` a run may wait for its trigger while its channel is
#: down (Ably's connectionStateTtl: a connection down longer cannot be resumed anyway).
OUTAGE_WAIT_S = 120.0
#: While the channel is down, how often a run waiting for its trigger checks whether it is back.
OUTAGE_POLL_S = 0.1
#: History messages folded between two yields to the event loop.
FOLD_SLICE = 200
#: Early cancels kept per input (one per canceller: a bystander's cancel cannot replace the owner's)
#: and per canceller (one flooder cannot evict everyone else's).
DEFERRED_PER_INPUT = 4
DEFERRED_PER_CLIENT = 16
_LIFECYCLE = frozenset((AI_RUN_START, AI_RUN_RESUME, AI_RUN_SUSPEND, AI_RUN_END, AI_STEP_START, AI_STEP_END))
# Connection and channel states that the SDK leaves by itself, back to connected / attached.
_COMING_BACK = frozenset(("initialized", "connecting", "disconnected", "suspended", "attaching", "detached"))
CancelDecision = Literal["honoured", "refused", "buffered", "unmatched", "dropped"]


class RunAlreadyActive(ProtocolError):
    """A continuation names a run this worker is already running; nothing is published for it."""

    code = 40900
    status_code = 409


class CancelPolicy:
    """The default cancel authorisation: the run owner's verified clientId, or an admin."""

    def __init__(self, mode: Literal["owner", "any"] = "owner", admins: Sequence[str] = ()) -> None:
        self.mode = mode
        self.admins = frozenset(admins)

    def allows(self, message: InboundMessage, run: Run) -> bool:
        if self.mode == "any":
            return True
        who = message.client_id
        if not who:
            return False  # an unidentified canceller cannot be proven to be anyone
        return who in self.admins or (run.owner_client_id is not None and who == run.owner_client_id)


class AgentSession:
    def __init__(
        self,
        channel: Channel,
        *,
        history_page_size: int = 100,
        policy: CancelPolicy | None = None,
        worker_on_cancel: CancelHook | None = None,
        on_fresh_input: Callable[[AgentSession, InboundMessage], None] | None = None,
        on_cancel_decision: Callable[[CancelDecision], None] | None = None,
        codec: str | None = None,
        agent_client_id: str | None = None,
    ) -> None:
        self.channel = channel
        self.codec = codec
        """Adapter tag pinned for this session; None lets its messages choose (protocol/codecs.py)."""
        # Lifecycle messages are the agent's to publish: others' (forged) ones are not folded.
        self.agent_client_id = agent_client_id
        self.name = channel.name
        self.history_page_size = history_page_size
        self.policy = policy or CancelPolicy()
        self.worker_on_cancel = worker_on_cancel
        self.on_fresh_input = on_fresh_input
        self.on_cancel_decision = on_cancel_decision
        self._tree = ConversationTree(codec=self.codec)
        self._appends = AppendDeferral()
        self._forgers: set[str | None] = set()
        """Client ids whose forged lifecycle was already logged (once each, not per message)."""
        self.open_streams = OpenStreams()
        """Streams of this channel still ``streaming`` (a dead writer's, to close when its run ends)."""
        self.runs: dict[str, Run] = {}
        self._by_input_cmid: dict[str, str] = {}
        self._deferred: OrderedDict[str, list[InboundMessage]] = OrderedDict()
        self._waiting: dict[str, list[Run]] = {}
        self._history: AsyncIterator[list[InboundMessage]] | None = None
        self._history_exhausted = False
        self._history_lock = asyncio.Lock()
        self._oldest_loaded: str | None = None
        self._rewind_of: str | None = None
        """The attach serial the messages counted below came with (its rewind, see :meth:`_fold_rewound`)."""
        self._rewound = 0
        self._rewind_oldest: str | None = None
        self._rewind_head = False
        self._connected = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.last_active = time.monotonic()
        self.watch = False
        self.truncated_branches = 0
        self._seen: str | None = None
        """The newest serial this session has seen live (a continuity gap starts after it)."""
        self._gap_from: str | None = None
        self._gap_reads = 0
        self._gaps_read = asyncio.Event()
        self._gaps_read.set()
        self.history_until_attach = True
        """History is read back from the attach point (RTL15b). A session handed an attached
        channel (a stale session's replacement, worker/pool.py) reads it from the newest message
        instead: its subscription started after the attach, and the fold tolerates duplicates."""
        self.stale = False
        """The tree may not be the history fold: the channel lost continuity, or (echo off) one of
        this session's own messages could not be folded exactly (see transport/local.py). The
        session pool replaces the session (a history read; on the same attachment while it is
        attached, so presence carries over) when it is next idle."""

    def __repr__(self) -> str:
        return f"AgentSession(name={self.name!r}, runs={len(self.runs)})"

    @property
    def tree(self) -> ConversationTree:
        """The session's fold, with any deferred appends folded first (see runtime/folding.py)."""
        if len(self._appends):
            for msg in self._appends.drain():
                self._fold_now(msg)
        return self._tree

    # --- connection --------------------------------------------------------------------------------

    async def connect(self) -> None:
        if self._connected:
            return
        self.channel.on_state_change(self._on_state)
        on_local = getattr(self.channel, "on_local", None)
        if on_local is not None:
            # Echo off: the channel hands over what it sent, as its echo would have been.
            on_local(self._on_message, self._doubt)
        await self.channel.subscribe(self._on_message)
        if self._seen is None:
            self._seen = self.channel.attach_serial
        self._connected = True
        log.info("session_attached", session=self.name, attach_serial=self.channel.attach_serial)

    def _on_state(self, change: ChannelStateEvent) -> None:
        lost = change.current in {"failed", "suspended", "detached"} or (
            change.current == "attached" and not change.resumed
        )
        if not lost or not self._connected:
            if change.current == "attached":
                self._gap_from = None  # resumed: nothing was missed since
            return
        if self._gap_from is None:
            self._gap_from = self._seen
        if change.current == "attached":
            gap_from, self._gap_from = self._gap_from, None
            attach_serial = self.channel.attach_serial
            if (self.runs or self._watching) and gap_from is not None and attach_serial is not None:
                self._gap_reads += 1  # not idle (not replaced) until read: see `idle`
                self._gaps_read.clear()
                self._spawn(self._read_gap(gap_from, attach_serial))
        # Messages may have been missed: start a fresh fold, so a run located before the session is
        # idle again re-reads history from the new attach point. That fold is not exact for a
        # message straddling the attach point (a run in flight: created before it, appended and
        # ended after; echo off, one sent before and acknowledged after), so the session is also
        # stale: the pool replaces it (a new session reading history) once its runs are over.
        # Runs in flight keep their prompt and their cancel routing (by run-id / input id); the
        # cancels published while the channel was down are read back from history (re-attached),
        # and so, on a watched channel, are the user inputs (else their turns would get no run).
        log.warning("session_continuity_lost", session=self.name, state=change.current, reason=change.reason)
        self.stale = True
        self._appends.drain()
        self._tree = ConversationTree(codec=self.codec)
        self._history = None
        self._history_exhausted = False
        self._oldest_loaded = None

    def _doubt(self, why: str) -> None:
        if not self.stale:
            log.warning("session_fold_doubtful", session=self.name, reason=why)
        self.stale = True

    # --- inbound -----------------------------------------------------------------------------------

    def _on_message(self, msg: InboundMessage) -> None:
        serial = msg.version_serial or msg.serial
        attach = self.channel.attach_serial
        if serial is not None and attach is not None and at_or_before(serial, attach):
            self._fold_rewound(msg, serial, attach)
            return
        if serial is not None and (self._seen is None or serial > self._seen):
            self._seen = serial
        self.fold(msg)
        if msg.name == AI_CANCEL:
            self._route_cancel(msg)
        elif msg.name == AI_INPUT and self.on_fresh_input is not None and self.watch and _fresh_input(msg):
            self.on_fresh_input(self, msg)

    def _fold_rewound(self, msg: InboundMessage, serial: str, attach: str) -> None:
        """A message from before the attach point: the channel's ``rewind`` (transport/ably.py),
        delivered after ATTACHED, oldest first. It is history, not news: folded as a history page's
        message is (a cancel or an input in it is not acted on, as none read from history is), and
        counted so that :meth:`locate` knows whether the rewind holds a trigger whole."""
        if self._rewind_of != attach:
            self._rewind_of, self._rewound, self._rewind_oldest, self._rewind_head = attach, 0, None, False
        self._rewound += 1
        if self._rewind_oldest is None:
            self._rewind_oldest = msg.serial
        if not at_or_before(serial, attach, strictly=True):
            self._rewind_head = True  # the attach point's own message: the rewind is all in
        self.fold(msg)

    def _rewind_holds(self, found: InboundMessage) -> bool:
        """Whether a trigger the rewind delivered is located without reading history: everything
        after it up to the attach point is folded (the attach point's own message came: the rewind
        arrives oldest first), and none of its parts can be older than the rewind (it is not the
        rewind's oldest message, or the rewind held fewer messages than asked: the whole channel)."""
        attach = self.channel.attach_serial
        serial = found.version_serial or found.serial
        if attach is None or serial is None or not at_or_before(serial, attach):
            return True  # arrived live, after the attach point: nothing newer is missing
        return (
            self._rewind_of == attach
            and self._rewind_head
            and (found.serial != self._rewind_oldest or self._rewound < getattr(self.channel, "rewind", 0))
        )

    @property
    def _watching(self) -> bool:
        return self.watch and self.on_fresh_input is not None

    def fold(self, msg: InboundMessage) -> None:
        """Fold one message (live or history) and wake whatever waits on it; a string append is
        deferred and folded together with the appends that follow it to the same message."""
        if (
            msg.name in _LIFECYCLE
            and self.agent_client_id is not None
            and msg.client_id != self.agent_client_id
        ):
            if msg.client_id not in self._forgers and len(self._forgers) < 64:
                self._forgers.add(msg.client_id)
                log.warning("lifecycle_ignored", session=self.name, name=msg.name, by=msg.client_id)
            return
        appends = self._appends
        if msg.action == "message.append" and appends.offer(msg):
            return
        if len(appends):  # the deferred appends fold first, keeping the channel's order
            for held in appends.drain():
                self._fold_now(held)
        self._fold_now(msg)

    def _fold_now(self, msg: InboundMessage) -> None:
        result = self._tree.apply(msg)
        headers = msg.transport_headers
        if headers.get(H_STREAM) == "true":  # observe() ignores the rest: no call per discrete message
            self.open_streams.observe(msg)
        event_id = headers.get(H_EVENT_ID)
        if event_id and event_id in self._waiting:
            for run in self._waiting.pop(event_id):
                if not run.trigger_message.done():
                    run.trigger_message.set_result(msg)
        if (
            msg.name == AI_INPUT
            and result.run_id is not None
            and result.codec_message_id is not None
            and any(e.get("kind") == "user-message" for e in result.inputs)
        ):
            steered = self.runs.get(result.run_id)
            if steered is not None and steered.phase in (RunPhase.LOCATED, RunPhase.ACTIVE):
                steered.add_steer(result.codec_message_id)

    # --- runs --------------------------------------------------------------------------------------

    def create_run(
        self,
        event_id: str,
        *,
        invocation_id: str | None = None,
        run_id: str | None = None,
        on_cancel: CancelHook | None = None,
        coalesce_window_s: float = 0.04,
    ) -> Run:
        """``run_id``: pinned (a durable engine pins it to the invocation id, so a retry re-enters
        the same run); a continuation still adopts its trigger's run-id."""
        run = Run(
            self,
            event_id=event_id,
            invocation_id=invocation_id,
            run_id=run_id,
            on_cancel=on_cancel,
            coalesce_window_s=coalesce_window_s,
        )
        self.runs[run.run_id] = run
        self.last_active = time.monotonic()
        return run

    def deregister(self, run: Run) -> None:
        if self.runs.get(run.run_id) is run:
            del self.runs[run.run_id]
        if run.trigger is not None:
            cmid = run.trigger.codec_message_id
            if self._by_input_cmid.get(cmid) == run.run_id:
                del self._by_input_cmid[cmid]
            self._deferred.pop(cmid, None)
        waiting = self._waiting.get(run.event_id)
        if waiting is not None and run in waiting:
            waiting.remove(run)
            if not waiting:
                del self._waiting[run.event_id]
        self.last_active = time.monotonic()
        if not self.runs and getattr(self.channel, "local_gaps", None):
            self._doubt("an append's text was never covered by a repair")

    async def locate(
        self,
        run: Run,
        *,
        max_pages: int = 20,
        max_branch_pages: int = 10_000,
        wait_s: float = 5.0,
        max_input_bytes: int = 64 * 1024,
        outage_wait_s: float | None = None,
        branch: bool = True,
    ) -> Trigger:
        """Find the run's trigger (already folded, live, or in history; then ``wait_s`` more for a
        live arrival, not counting the time the channel is down: see :meth:`_await_trigger`),
        validate it, re-key a continuation, and load the branch's history.

        ``branch=False``: a fresh run's branch is left to the caller's :meth:`load_branch`, after its
        ``ai-run-start``. Nothing older than the trigger goes into that: its headers come from the
        trigger (folded), and whatever the channel holds about this run or its input (an earlier
        attempt's run-start, a cancel) is newer than the trigger, so folded once it is located (history
        reads newest first). A continuation's branch is loaded here all the same: its run's older
        lifecycle (a suspend) must fold before the resume is applied.

        Raises :class:`InputEventNotFound` (104010) or :class:`ProtocolError` for a refused input."""
        found = self.tree.find_event(run.event_id)
        if (
            found is not None
            and self._oldest_loaded is None
            and not self._history_exhausted
            and not self._rewind_holds(found)
        ):
            found = None  # from a rewind that may not hold all it needs: read history as usual
        if found is None:
            self._waiting.setdefault(run.event_id, []).append(run)
            pages = 0
            while not run.trigger_message.done() and pages < max_pages:
                if not await self._load_page():
                    break
                pages += 1
            outage = OUTAGE_WAIT_S if outage_wait_s is None else outage_wait_s
            if not await self._await_trigger(run, wait_s, outage):
                self.deregister(run)
                msg = (
                    f"unable to open run; trigger event {run.event_id} not located within "
                    f"{pages} history pages and {wait_s:g}s"
                )
                raise InputEventNotFound(msg)
            found = run.trigger_message.result()
        elif not run.trigger_message.done():
            run.trigger_message.set_result(found)
        # A user message's parts share the event-id and may straddle a history page boundary.
        if self._oldest_loaded is not None and found.serial == self._oldest_loaded:
            await self._load_page()
        trigger = Trigger.from_message(found, self.tree, max_bytes=max_input_bytes)
        if trigger.run_id is not None and trigger.run_id != run.run_id:
            other = self.runs.get(trigger.run_id)
            if other is not None and other is not run:
                # Two continuations of one run at once (e.g. two approval responses POSTed together):
                # the active one carries on; this one must not publish anything for that run.
                self.deregister(run)
                msg = f"run {trigger.run_id} is already being continued by this worker"
                raise RunAlreadyActive(msg)
            self.runs.pop(run.run_id, None)
            self.runs[trigger.run_id] = run
        run.set_trigger(trigger)
        self._by_input_cmid[trigger.codec_message_id] = run.run_id
        if branch or trigger.run_id is not None:
            await self.load_branch(trigger.leaf_anchor, max_pages=max_branch_pages)
        self._pull_deferred_cancel(run)
        return trigger

    async def _await_trigger(self, run: Run, wait_s: float, outage_wait_s: float) -> bool:
        """Wait for the run's trigger to arrive live: ``wait_s`` of the channel being up and caught
        up. While it is not (:meth:`_behind`: an input published meanwhile is delivered, or read back
        from the gap, only once it is back) the wait does not run out; it starts again in full once
        the channel is back, within ``wait_s + outage_wait_s`` in all. False: not located."""
        trigger = run.trigger_message
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadline, limit = now + wait_s, now + wait_s + outage_wait_s
        while not trigger.done():
            if self._behind():
                if now >= limit:
                    return False
                deadline = max(deadline, now + wait_s)
                step = min(OUTAGE_POLL_S, limit - now)
            elif now >= deadline:
                return False
            else:
                step = deadline - now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(trigger), step)
            now = loop.time()
        return True

    def _behind(self) -> bool:
        """The channel may have missed messages it has not folded yet: its connection or the channel
        is down (and may come back: not failed nor closed), or it lost continuity and has not read
        the gap back."""
        return (
            getattr(self.channel, "connection_state", "connected") in _COMING_BACK
            or self.channel.state in _COMING_BACK
            or self._gap_from is not None
            or self._gap_reads > 0
        )

    # --- history -----------------------------------------------------------------------------------

    async def _load_page(self) -> bool:
        """Fold the next (older) history page; False once history is exhausted."""
        async with self._history_lock:
            if self._history_exhausted:
                return False
            if self._history is None:
                until = self.channel.attach_serial if self.history_until_attach else None
                self._history = self.channel.history_pages(
                    page_size=self.history_page_size, from_serial=until
                )
            cursor = self._history
            try:
                page = await anext(cursor)
                size = len(page)
                oldest = page[-1].serial if page else None
                # Oldest first (pages are newest-first: popped from the end), yielding to the loop
                # every FOLD_SLICE messages: other streams keep flowing, and the next page (read
                # ahead by the transport) is requested while this one folds. The GC waits for each
                # slice; a message popped is released once folded (unless the tree keeps it), so
                # the collections between slices don't walk the rest of the page again.
                pop = page.pop
                for start in range(0, size, FOLD_SLICE):
                    if start:
                        await asyncio.sleep(0)
                    with gc_paused():
                        for _ in range(min(FOLD_SLICE, size - start)):
                            self.fold(pop())
            except StopAsyncIteration:
                if self._history is not cursor:
                    return True  # see below
                self._history_exhausted = True
                return False
            except BaseException:
                # A failed or cancelled page read (or fold) closes the cursor: restart it next time
                # (re-folding pages is idempotent).
                self._history = None
                raise
            if self._history is not cursor:
                # The channel re-attached without resume while this page was read (`_on_state`):
                # history before the new attach point is still unread, whatever the old cursor says.
                return True
            if size:
                self._oldest_loaded = oldest
            else:
                self._history_exhausted = True
            return size > 0

    def missing_ancestor(self, anchor: str | None) -> str | None:
        """The first ancestor on the walk up from ``anchor`` that the tree has not seen yet."""
        return missing_ancestor(self.tree, anchor)

    async def load_branch(self, anchor: str | None, *, max_pages: int = 10_000) -> None:
        """Page history until the branch from ``anchor`` reaches its root (or history runs out).

        Unlike locating the trigger (bounded like the JS ``pageUntilLocated``), the prompt needs the
        whole branch, as the JS agent's ``while (view.hasOlder()) loadOlder()``; ``max_pages`` is only
        a safety net, and hitting it is logged."""
        pages = 0
        while (missing := self.missing_ancestor(anchor)) is not None:
            if pages >= max_pages:
                log.warning("prompt_history_truncated", session=self.name, pages=pages, missing=missing)
                self.truncated_branches += 1
                return
            if not await self._load_page():
                # History ends before the branch's root (retention, or a run whose ai-run-start was
                # pruned): the prompt starts at the oldest turn still readable, as the JS agent's.
                log.info("prompt_history_incomplete", session=self.name, missing=missing)
                return
            pages += 1

    # --- cancel routing ----------------------------------------------------------------------------

    def _decide(self, decision: CancelDecision) -> None:
        if self.on_cancel_decision is not None:
            self.on_cancel_decision(decision)

    def _route_cancel(self, msg: InboundMessage) -> None:
        h = msg.transport_headers
        run_id = h.get(H_RUN_ID) or None
        icmid = h.get(H_INPUT_CODEC_MESSAGE_ID) or None
        if run_id is None and icmid is None:
            log.warning("cancel_dropped", session=self.name, reason="no run-id or input-codec-message-id")
            self._decide("dropped")
            return
        target = run_id if run_id is not None else self._by_input_cmid.get(icmid or "")
        run = self.runs.get(target) if target is not None else None
        if run is None or run.trigger is None:
            if icmid is not None:
                self._defer_cancel(icmid, msg)
            else:
                self._decide("unmatched")
            return
        self._spawn(self._authorise_and_cancel(run, msg))

    async def _read_gap(self, after: str, attach_serial: str) -> None:
        """After a continuity loss with runs in flight, or on a watched channel: the ``ai-cancel``\\ s
        (and, watched, the fresh ``ai-input``\\ s) published while the channel was not attached
        (after ``after``, the newest serial seen live, up to the new attach point) are in history
        only (RTL15b); handle them as if they had arrived live. An input is admitted as a live one
        is (the worker's dedup by event-id, so a turn already answered is not run again). An input
        a run waits for (its invocation came during the outage, and it had already paged the
        history it could see) is folded as a live one is, which wakes that run."""
        found: list[InboundMessage] = []
        pages = 0
        watching = self._watching
        waiting = self._waiting

        def wanted(m: InboundMessage) -> bool:
            if (m.serial or "") <= after:
                return False
            if m.name == AI_CANCEL or (watching and m.name == AI_INPUT and _fresh_input(m)):
                return True
            return m.transport_headers.get(H_EVENT_ID, "") in waiting  # as live: whatever it names

        read = 0
        try:
            reader = self.channel.history_pages(
                page_size=GAP_PAGE_SIZE, from_serial=attach_serial, later_page_size=GAP_LATER_PAGE_SIZE
            )
            oldest: str | None = None
            async with contextlib.aclosing(reader) as history:
                async for page in history:
                    if pages >= GAP_PAGES:
                        if not page or (page[0].serial or "") <= after:
                            break  # the gap ended just at the bound
                        # The gap's oldest part stays unread: a cancel or (watched) input published
                        # that early in the outage is missed.
                        log.warning(
                            "continuity_gap_truncated",
                            session=self.name,
                            pages=pages,
                            messages=read,
                            gap_from=after,
                            read_back_to=oldest,
                            attach_serial=attach_serial,
                        )
                        break
                    pages += 1
                    read += len(page)
                    found += [m for m in page if wanted(m)]
                    if not page or (oldest := page[-1].serial or "") <= after:
                        break
        except Exception as exc:  # a background read: logged, and the runs go on as before
            log.warning("continuity_gap_unread", session=self.name, error=repr(exc))
            return
        finally:
            self._gap_reads -= 1
            if not self._gap_reads:
                self._gaps_read.set()
        cancels = sum(1 for m in found if m.name == AI_CANCEL)
        if cancels:
            log.info("continuity_gap_cancels", session=self.name, count=cancels)
        if len(found) > cancels:
            log.info("continuity_gap_inputs", session=self.name, count=len(found) - cancels)
        # Every part of an awaited input (the first one folded wakes its run, and ends the wait).
        awaited = {e for m in found if (e := m.transport_headers.get(H_EVENT_ID, "")) in waiting}
        for msg in reversed(found):  # oldest first, as they would have arrived (an input, its cancel)
            if msg.transport_headers.get(H_EVENT_ID, "") in awaited:
                # Folded (into the tree reset at the re-attach) like a history page's message: the
                # run then reads its branch from history before the new attach point, as usual.
                self.fold(msg)
            if msg.name == AI_CANCEL:
                self._route_cancel(msg)
            elif watching and msg.name == AI_INPUT and _fresh_input(msg) and self._connected:
                on_fresh = self.on_fresh_input
                if on_fresh is not None:  # (watching: it is)
                    on_fresh(self, msg)

    def _defer_cancel(self, icmid: str, msg: InboundMessage) -> None:
        """Keep an early cancel until its run is located (each is authorised then)."""
        by = msg.client_id
        mine = sum(1 for kept in self._deferred.values() for m in kept if m.client_id == by)
        if mine >= DEFERRED_PER_CLIENT:
            log.warning("cancel_buffer_full", session=self.name, by=by)
            self._decide("dropped")
            return
        kept = [m for m in self._deferred.pop(icmid, []) if m.client_id != by][-(DEFERRED_PER_INPUT - 1) :]
        self._deferred[icmid] = [*kept, msg]
        while len(self._deferred) > DEFERRED_CANCEL_LIMIT:
            evicted, _ = self._deferred.popitem(last=False)
            log.warning("cancel_buffer_full", session=self.name, evicted=evicted)
        self._decide("buffered")

    def _pull_deferred_cancel(self, run: Run) -> None:
        if run.trigger is None:
            return
        for msg in self._deferred.pop(run.trigger.codec_message_id, []):
            self._spawn(self._authorise_and_cancel(run, msg))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _authorise_and_cancel(self, run: Run, msg: InboundMessage) -> None:
        request = CancelRequest(message=msg, run=run)
        allowed: bool | None = None
        try:
            for hook in (run.on_cancel, self.worker_on_cancel):
                if hook is None:
                    continue
                verdict = hook(request)
                if inspect.isawaitable(verdict):
                    verdict = await verdict
                if verdict is not None:
                    allowed = bool(verdict)
                    break
        except Exception as exc:
            log.error(
                "cancel_hook_failed", run_id=run.run_id, session=self.name, error=repr(exc), code=104002
            )
            self._decide("refused")
            telemetry.cancel_decision(run, msg.client_id, allowed=False)
            return
        if allowed is None:
            allowed = self.policy.allows(msg, run)
        if not allowed:
            log.warning(
                "cancel_refused",
                run_id=run.run_id,
                session=self.name,
                by=msg.client_id,
                owner=run.owner_client_id,
            )
            self._decide("refused")
            telemetry.cancel_decision(run, msg.client_id, allowed=False)
            return
        telemetry.cancel_decision(run, msg.client_id, allowed=True)
        if run.cancel("client", by=msg.client_id):
            log.info("cancel_honoured", run_id=run.run_id, session=self.name, by=msg.client_id)
            self._decide("honoured")

    # --- teardown ----------------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        return not self.runs and not self._waiting and not self._gap_reads

    async def gaps_read(self) -> None:
        """Return once no continuity-gap read is in flight (what it found has been handed on)."""
        await self._gaps_read.wait()

    async def close(self, *, detach: bool = True) -> None:
        """Detach (runs must have ended; the worker cancels them first). ``detach=False``: only stop
        listening, the channel staying attached for the session that replaces this one."""
        for task in list(self._tasks):
            task.cancel()
        self._connected = False
        self._waiting.clear()
        self._deferred.clear()
        if detach:
            await self.channel.detach()
        else:
            self.channel.unsubscribe()


def _fresh_input(msg: InboundMessage) -> bool:
    """A user's new turn (channel-watch mode starts a run for it): not a steer of a run in flight."""
    h = msg.transport_headers
    return not h.get(H_RUN_ID) and bool(h.get(H_EVENT_ID)) and msg.action == "message.create"
