"""Executing the encoder's WireOps on a channel: pipelined appends, coalescing, flush and recovery.

One :class:`StreamWriter` serves one encoder (one assistant message). It preserves the encoder's
operation order on the wire, with two liberties that change no text:

* **Coalescing** (leading edge, the rule Ably's server-side append rollup uses). A delta that comes
  at least ``window_s`` after the writer's last flush goes out at once; deltas that come sooner wait
  until one window after that flush and go out merged into one append (their data concatenated, the
  newest headers kept — appends repeat the full headers anyway). So a stream slower than one delta
  per window is never delayed, and a fast one costs at most one message per window — exactly what
  Ably would count for it with the same ``appendRollupWindow``. A stream's appends go a small margin
  more than the window apart (:func:`pacing_s`, 2 ms): Ably times its window from when *it* receives
  or publishes an append, so appends sent exactly one window apart arrive a little less apart
  whenever the network or an event loop delays the first more than the second; Ably then holds the
  second until its window ends, and times the next window from that later publish, so with no margin
  the holds persist (they drift, up to nearly a window each). With the margin each hold shrinks by it
  at every append, so it ends within a few. Any other operation first flushes
  every buffered delta, so order across messages is unchanged; a closing append carries the
  stream's last buffered text itself. While the connection's rate limiter makes a flush wait, more
  deltas join the buffer — that is how the writer stays under Ably's per-connection message rate
  without dropping or reordering text.
* **Opening chunks go together.** Discrete publishes (no stream: nobody needs their serial) made in
  one loop turn — a message's ``start`` and ``start-step`` chunks, before the model is called — go
  out as one atomic batch (``Channel.publish_batch``) once the caller yields, so the model call
  does not wait for their round trips; the writer's next operation waits for that batch's ACK
  first, so nothing overtakes it on the wire and its failure is raised there — except a stream's
  create once the batch's rate tokens are taken (``Channel.send_batch``): it follows the batch
  on the wire without waiting for its ACK (the model's first text, when it comes after the
  step-start's ACK let the batch go), and the batch's failure is raised once the stream is known,
  as a pipelined step-start's is. A stream's create written in the same turn (a pipelined
  step-start held them all for its ACK, see ``OutputMessage`` in runtime/run.py) goes last in
  that batch, its serial taken from the batch's ACK: one round trip before the stream's first
  append instead of two.
* **Pipelining.** Appends are submitted without awaiting their ACKs (``Channel.submit_append``).
  Publishes and updates are awaited (a stream's opening serial is needed for its appends). A stream
  with a failed append (NACKed, past its ACK deadline, not sent) gets the encoder's full-content
  update with status ``streaming`` before its next append or its close — for a live client a
  prefix extension carrying the missing text — and after a closing append, and on
  :meth:`StreamWriter.flush`, every pending append is awaited and a failure there gets the same
  update with the final status (error 104000 if that fails too).

Cancellation: an operation in flight is shielded, so a cancelled run still learns the serial of a
stream it just opened and can close it ``cancelled`` (:meth:`StreamWriter.cancel_streams`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from agent_worker.errors import NotSentError, TransportError
from agent_worker.logs import get_logger
from agent_worker.protocol.wire import AppendOp, OutboundMessage, PublishOp, UpdateOp, WireOp
from agent_worker.retry import backoff, retry

__all__ = [
    "ChannelWriter",
    "StreamEncoder",
    "StreamWriter",
    "WriterStats",
    "publish_reliably",
    "retrieve_exception",
]

log = get_logger("agent_worker.runtime.streaming")

ERROR_RECOVERY_FAILED = 104000
ERROR_TOO_LARGE = 40009  # Ably's maxMessageSize (64 KiB by default) counts an update's full text

T = TypeVar("T")


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, TransportError) and (exc.status_code == 429 or exc.status_code >= 500)


def _rate_limited(exc: BaseException) -> bool:
    # A 429 NACK means the message was refused, so publishing it again cannot duplicate it.
    return isinstance(exc, TransportError) and exc.status_code == 429


async def publish_reliably(channel: ChannelWriter, msg: OutboundMessage, *, attempts: int = 5) -> str | None:
    """Publish, retrying with backoff while the service refuses it for rate (HTTP 429)."""
    return await retry(lambda: channel.publish(msg), attempts=attempts, retry_if=_rate_limited)


class ChannelWriter(Protocol):
    """What the writer needs from a channel (``transport.ably.Channel`` provides it)."""

    async def publish(self, msg: OutboundMessage) -> str | None: ...

    async def acquire(self) -> None: ...

    def try_acquire(self) -> bool:
        """Take a rate token if one is free right now, without waiting."""
        ...

    def start_append(self, serial: str, msg: OutboundMessage) -> asyncio.Task[str | None]: ...

    async def update(self, serial: str, msg: OutboundMessage) -> str | None: ...


class StreamEncoder(Protocol):
    """The slice of ``protocol.vercel.UIMessageEncoder`` the writer uses."""

    def cancel_open_streams(self) -> list[AppendOp]: ...

    def recovery_update(self, stream_key: str, *, streaming: bool = False) -> UpdateOp: ...


@dataclass(slots=True)
class WriterStats:
    published: int = 0
    appends: int = 0
    deltas: int = 0
    updates: int = 0
    recoveries: int = 0


@dataclass(slots=True)
class _Buffer:
    parts: list[str]
    message: OutboundMessage


MAX_MESSAGE_BYTES = 65536
"""Ably's default ``maxMessageSize``: each message (an append too) counts name + data + extras."""


def _split(msg: OutboundMessage, max_bytes: int) -> list[OutboundMessage]:
    """``msg`` as appends each within ``max_bytes`` (its text cut at UTF-8 character boundaries).

    Only a buffer merged while the rate limiter made the writer wait can grow this large."""
    data = str(msg.data or "")
    if len(data) * 4 + 4096 <= max_bytes:  # cheap common case: cannot be over, whatever it holds
        return [msg]
    overhead = len(json.dumps(msg.extras or {})) + len(msg.name or "") + 256
    budget = max(1024, max_bytes - overhead)
    raw = data.encode()
    if len(raw) <= budget:
        return [msg]
    pieces: list[OutboundMessage] = []
    pos = 0
    while pos < len(raw):
        end = min(pos + budget, len(raw))
        while end < len(raw) and (raw[end] & 0xC0) == 0x80:  # not inside a character
            end -= 1
        pieces.append(OutboundMessage(name=msg.name, data=raw[pos:end].decode(), extras=msg.extras))
        pos = end
    return pieces


_Sent = tuple[str, "asyncio.Task[str | None]", OutboundMessage]
"""An append handed to the channel: its stream key, its task and the message."""


ROLLUP_MARGIN_S = 0.002
"""How much more than the rollup window apart a stream's appends go (at most window/8): absorbs a
little jitter between the writer and Ably, and undoes a hold Ably's rollup makes (module doc)."""


def pacing_s(window_s: float) -> float:
    """The spacing of one stream's appends for a coalescing window of ``window_s`` (0 stays 0)."""
    return window_s + min(ROLLUP_MARGIN_S, window_s / 8) if window_s > 0 else 0.0


def _failed(task: asyncio.Task[Any]) -> bool:
    return task.cancelled() or task.exception() is not None


def _not_sent(task: asyncio.Task[Any]) -> bool:
    return task.done() and not task.cancelled() and isinstance(task.exception(), NotSentError)


def _merged(buffer: _Buffer, tail: OutboundMessage | None = None) -> OutboundMessage:
    """One append carrying every buffered fragment (plus ``tail``'s data and headers if given)."""
    last = tail if tail is not None else buffer.message
    data = "".join(buffer.parts) + (str(tail.data or "") if tail is not None else "")
    return OutboundMessage(name=last.name, data=data, extras=last.extras)


_HOLD_MAX_MESSAGES = 8
_HOLD_MAX_DATA = 1024
"""Discrete publishes batched at once, and the largest data one may carry (opening chunks have none)."""


def retrieve_exception(task: asyncio.Future[Any]) -> BaseException | None:
    """Done callback for a task whose failure is raised elsewhere, or by nobody (a held batch of a
    dropped writer, a pipelined run-start of a cancelled run): never "exception never retrieved"."""
    if task.cancelled():
        return asyncio.CancelledError()
    return task.exception()


class StreamWriter:
    def __init__(
        self,
        channel: ChannelWriter,
        encoder: StreamEncoder,
        *,
        window_s: float = 0.04,
        on_first_publish: Callable[[], Awaitable[None]] | None = None,
        on_stream_open: Callable[[str, str, OutboundMessage], None] | None = None,
        on_stream_closed: Callable[[str], None] | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self._channel = channel
        self._max_bytes = max_message_bytes
        self._encoder = encoder
        self._window_s = pacing_s(window_s)
        self._on_first_publish = on_first_publish
        # The crash journal's view: a stream is open from its publish ACK until its close is ACKed.
        self._on_stream_open = on_stream_open
        self._on_stream_closed = on_stream_closed
        self._serials: dict[str, str] = {}
        self._closed_keys: set[str] = set()
        self._buffers: dict[str, _Buffer] = {}
        # Appends not yet seen done, in send order; done ones leave the head as the writer goes
        # (``_notice``), the failed ones into ``_failures`` until a repair covers their text.
        self._pending: collections.deque[_Sent] = collections.deque()
        self._failures: dict[str, list[_Sent]] = {}
        self._held: list[PublishOp] = []
        self._send_batch: Callable[[list[OutboundMessage]], Awaitable[list[str | None]]] | None = getattr(
            channel, "send_batch", None
        )
        self._held_task: asyncio.Task[None] | None = None
        self._held_sent = False
        """The held batch in flight has its frame ahead of anything started now (pipelined send)."""
        self._batch: Callable[[list[OutboundMessage]], Awaitable[Any]] | None = getattr(
            channel, "publish_batch", None
        )
        self._failed: set[str] = set()
        # Connection reconnects seen when each stream opened: ably-python re-sends what was in flight
        # after a reconnect without strict ordering, so a stream that spanned one is replaced by one
        # idempotent update when it closes (the exact text whatever order its appends landed in).
        # That repairs the stored message (history); a live client has already closed the stream
        # at its closing append and ignores the update, so the transport must keep appends in
        # order across a reconnect (``_Connection.ready`` in transport/ably.py).
        self._epochs: dict[str, int] = {}
        # Continuity losses (a new connection id, see ``_Connection`` in transport/ably.py) seen when
        # each stream opened or was last repaired. The appends in flight then are failed, not
        # re-sent (a re-sent append the server had applied would repeat its text for live
        # clients, who cannot be repaired once they have shown it), so the server holds a prefix
        # of the stream. Before its next append the stream gets one full-text update: for a live
        # client that is a prefix extension (the missing text, as a delta), for history the exact
        # text. ``_seen``/``_covered`` count the stream's text handed to the writer and covered by
        # such an update, so text the update already carried is not appended again.
        self._continuity: dict[str, int] = {}
        self._seen: dict[str, int] = {}
        self._covered: dict[str, int] = {}
        self._lock = asyncio.Lock()
        self._timer: asyncio.Task[None] | None = None
        self._timer_error: TransportError | None = None
        self._soon: asyncio.Handle | None = None
        self._turn_flushed = False
        self._inflight: asyncio.Future[Any] | None = None
        self._first_done = False
        self._last_flush = float("-inf")
        self.stats = WriterStats()

    # --- public API ------------------------------------------------------------------------------

    async def write(self, ops: Iterable[WireOp]) -> None:
        """Execute ``ops`` in order (appends may be merged with neighbours of the same stream)."""
        self._raise_timer_error()
        for op in ops:
            await self._settle_inflight()
            if (
                self._joins_held(op)
                and not self._buffers
                and (self._first_done or not self._on_first_publish)
            ):
                assert isinstance(op, PublishOp)
                # Held without yielding, so the caller's next discrete chunk of this turn joins it.
                if not self._held and self._held_task is not None:
                    await self._settle_held()  # a batch already in flight goes first
                self._hold(op)
                continue
            if self._held_task is not None:
                if self._creates_behind_held(op):
                    assert isinstance(op, PublishOp)
                    async with self._lock:
                        await self._create_behind_held(op)
                    continue
                await self._settle_held()
            if isinstance(op, AppendOp) and not op.closing:
                if self._buffer(op, self._trim(op)):
                    # Leading edge: the window since the last flush is over, send it now (inline,
                    # which spares a timer task per delta at model speeds below one per window).
                    async with self._lock:
                        await self._flush_buffers()
                continue
            async with self._lock:
                await self._execute(op)

    async def flush(self) -> None:
        """Send every buffered delta and wait for every pending append (recovering failures)."""
        self._raise_timer_error()
        await self._settle_inflight()
        await self._settle_held()
        async with self._lock:
            await self._flush_buffers()
            await self._drain()

    async def cancel_streams(self) -> None:
        """Close every open stream ``cancelled`` (buffered text is sent with the close), then flush.

        Safe to call from a cancelled task's cleanup (run it under :func:`asyncio.shield`)."""
        await self._settle_inflight()
        await self._settle_held()
        async with self._lock:
            for op in self._encoder.cancel_open_streams():
                await self._execute(op)
            await self._flush_buffers()
            await self._drain()

    async def aclose(self) -> None:
        if self._held_task is not None and not self._held_task.done():
            self._held_task.cancel()  # dropped before its held batch went out: it never will
        if self._soon is not None:
            self._soon.cancel()
            self._soon = None
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError, TransportError):
                await self._timer  # a failure was logged (and raised to a later write) already
            self._timer = None

    @property
    def open_serials(self) -> dict[str, str]:
        return {k: s for k, s in self._serials.items() if k not in self._closed_keys}

    # --- internals -------------------------------------------------------------------------------

    def _trim(self, op: AppendOp) -> str:
        """``op``'s text less what a repair update already carried (see ``_covered``)."""
        data = str(op.message.data or "")
        start = self._seen.get(op.stream_key, 0)
        self._seen[op.stream_key] = start + len(data)
        covered = self._covered.get(op.stream_key, 0)
        return data if start >= covered else data[covered - start :]

    def _damaged(self, key: str) -> bool:
        """``key``'s stream may lack text live clients should have: one of its appends failed
        (NACKed, timed out, not sent: see ``_notice``), or the connection lost continuity since
        the stream was last known whole."""
        self._notice()
        if key in self._failures:
            return True
        return key in self._continuity and self._continuity[key] != self._continuity_now()

    def _notice(self) -> None:
        """Take the done appends off the head of ``_pending``, keeping the failed ones in
        ``_failures``: their stream is repaired before its next append or close (``_repair``), not
        only after the close, when live clients ignore the repair. A failed append is either not
        applied or, when its outcome is unknown (an ACK deadline, a write into a dying socket),
        still in ably-python's queue and so applied before anything sent later: the repair, a
        full replace sent later, never lets its text land twice."""
        pending = self._pending
        while pending and pending[0][1].done():
            sent = pending.popleft()
            if _failed(sent[1]):
                log.warning("append_failed", stream_key=sent[0], error=repr(retrieve_exception(sent[1])))
                self._failures.setdefault(sent[0], []).append(sent)

    def _continuity_now(self) -> int:
        return int(getattr(self._channel, "continuity", 0))

    def _buffer(self, op: AppendOp, data: str) -> bool:
        """Buffer a delta; ``True`` = flush now (the caller does), else a timer will."""
        self.stats.deltas += 1
        buf = self._buffers.get(op.stream_key)
        if buf is None:
            self._buffers[op.stream_key] = _Buffer([data], op.message)
        else:
            buf.parts.append(data)
            buf.message = op.message
        if self._soon is None and (self._timer is None or self._timer.done()):
            loop = asyncio.get_running_loop()
            due = self._last_flush + self._window_s - loop.time()
            if due <= 0 and self._window_s > 0 and not self._lock.locked():
                return True
            if due <= 0 and not self._turn_flushed:
                # window 0, the first delta of this loop turn: out at once (paced tokens take no
                # extra loop turn); the deltas that follow it in the same turn merge (below)
                self._turn_flushed = True
                loop.call_soon(self._next_turn)
                self._flush_soon()
            elif due <= 0:
                # window 0: flush on the next loop turn, merging the deltas of this one
                self._soon = loop.call_soon(self._flush_soon)
            else:
                self._start_timer(due)
        return False

    def _next_turn(self) -> None:
        self._turn_flushed = False

    def _flush_soon(self) -> None:
        """The zero-delay flush, done in the callback when nothing is in the way (no task, lock or
        yield per delta: each append it starts is written at once, in order); else as a task."""
        self._soon = None
        if self._lock.locked():
            self._start_timer(0.0)
            return
        while self._buffers:
            key = next(iter(self._buffers))
            serial = self._serials.get(key)
            if serial is None:
                self._buffers.pop(key)
                continue
            msg = _merged(self._buffers[key])
            if self._damaged(key) or len(_split(msg, self._max_bytes)) > 1 or not self._channel.try_acquire():
                self._start_timer(0.0)  # a repair, several appends (async) or a rate token first
                return
            self._buffers.pop(key)
            self._start(key, serial, msg)

    def _start_timer(self, delay: float) -> None:
        if self._timer is not None and not self._timer.done():
            return

        async def fire() -> None:
            wait = delay
            while True:
                if wait > 0:
                    await asyncio.sleep(wait)
                async with self._lock:
                    await self._flush_buffers(paced=True)
                if not self._buffers:
                    return
                # a delta that came while this flush awaited: its stream's window starts now
                wait = self._last_flush + self._window_s - asyncio.get_running_loop().time()

        self._timer = asyncio.create_task(fire())
        self._timer.add_done_callback(self._timer_done)

    def _timer_done(self, task: asyncio.Task[None]) -> None:
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            log.warning("coalesce_flush_failed", error=str(exc))
            if isinstance(exc, TransportError) and self._timer_error is None:
                self._timer_error = exc  # a failed repair: the run learns it on its next write

    def _raise_timer_error(self) -> None:
        exc, self._timer_error = self._timer_error, None
        if exc is not None:
            raise exc

    def _joins_held(self, op: WireOp) -> bool:
        """A small discrete publish, while the batch stays small (Ably's size limit is per publish);
        or a stream's create, last, behind discrete chunks not yet sent (its serial comes from the
        batch's ACK: one round trip for the opening chunks and the first stream, not two)."""
        held = self._held
        return (
            isinstance(op, PublishOp)
            and (self._batch is not None or self._send_batch is not None)
            and len(held) < _HOLD_MAX_MESSAGES
            and len(str(op.message.data or "")) <= _HOLD_MAX_DATA
            and (op.stream_key is None or bool(held))
            and not (held and held[-1].stream_key is not None)
        )

    def _hold(self, op: PublishOp) -> None:
        """Queue a publish; the batch goes out on the next loop turn (see the module doc)."""
        self._held.append(op)
        if self._held_task is None:
            self._held_sent = False
            self._held_task = asyncio.create_task(self._send_held())
            self._held_task.add_done_callback(retrieve_exception)

    async def _send_held(self) -> None:
        # A task's first step runs after the caller's current one, so the caller's other chunks of
        # this turn have joined by now (no extra turn: in a burst each is a turn of a busy loop).
        held, self._held = self._held, []
        msgs = [op.message for op in held]
        send = self._send_batch
        if send is not None:
            for _ in msgs:  # Ably counts each message of a batch
                await self._channel.acquire()
            # Its tokens taken, the frame is written in ``send``'s first step (in this task's, no
            # extra loop turn) or first in line for the connection: nothing started later overtakes it.
            self._held_sent = True
            serials: Any = await send(msgs)
        else:
            batch = self._batch
            assert batch is not None
            serials = await retry(lambda: batch(msgs), attempts=5, retry_if=_rate_limited)
        self.stats.published += len(held)
        found = serials if isinstance(serials, list) else []
        for i, op in enumerate(held):
            if op.stream_key is not None:
                self._stream_opened(op, found[i] if i < len(found) else None)

    def _creates_behind_held(self, op: WireOp) -> bool:
        """A stream's create after a held batch whose frame is on its way: it need not wait for that
        batch's ACK (nobody needs the batch's serials, and the wire keeps their order), which in a
        message's opening is a round trip before its first text (the batch: the ``start`` chunks
        sent at the step-start's ACK, the create: the model's first text, often just after)."""
        task = self._held_task
        return (
            isinstance(op, PublishOp)
            and op.stream_key is not None
            and self._held_sent
            and task is not None
            and not task.done()
            and not self._buffers
            and (self._first_done or not self._on_first_publish)
            and getattr(self._channel, "start_publish", None) is not None
        )

    async def _create_behind_held(self, op: PublishOp) -> None:
        """Publish ``op`` (a stream's create) pipelined behind the held batch in flight; then settle
        the batch (its ACK comes first): the stream is known before the batch's failure is raised,
        so a failing run still closes it."""
        await self._channel.acquire()
        start: Callable[[OutboundMessage], asyncio.Future[str | None]] = self._channel.start_publish  # type: ignore[attr-defined]
        serial = await self._shielded(start(op.message))
        self.stats.published += 1
        self._stream_opened(op, serial)
        await self._settle_held()

    async def _settle_held(self) -> None:
        """Wait for the held batch's ACK (raising its failure) before anything else is sent."""
        task = self._held_task
        if task is None:
            return
        try:
            await asyncio.shield(task)
        finally:
            if task.done():
                self._held_task = None

    async def _settle_inflight(self) -> None:
        """Wait for a shielded operation that a cancellation interrupted (its serial matters)."""
        fut = self._inflight
        if fut is not None and not fut.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(fut)

    async def _shielded(self, coro: Awaitable[Any]) -> Any:
        fut = asyncio.ensure_future(coro)
        self._inflight = fut
        try:
            return await asyncio.shield(fut)
        finally:
            if fut.done():
                self._inflight = None

    async def _execute(self, op: WireOp) -> None:
        if isinstance(op, PublishOp):
            await self._flush_buffers()
            if not self._first_done:
                self._first_done = True
                if self._on_first_publish is not None:
                    await self._on_first_publish()
            await self._shielded(self._publish(op))
        elif isinstance(op, AppendOp):
            # A closing append: everything else first, then this stream's buffer rides along with it.
            if self._damaged(op.stream_key):
                await self._repair(op.stream_key)
            data = self._trim(op)
            buf = self._buffers.pop(op.stream_key, None)
            tail = OutboundMessage(name=op.message.name, data=data, extras=op.message.extras)
            msg = _merged(buf, tail) if buf is not None else tail
            if buf is not None and len(_split(msg, self._max_bytes)) > 1:
                self._buffers[op.stream_key] = buf  # too big to ride along: out first, in pieces
                msg = tail
            await self._flush_buffers()
            await self._submit(op.stream_key, msg)
            self._closed_keys.add(op.stream_key)
            await self._drain()
            if self._on_stream_closed is not None:
                self._on_stream_closed(op.stream_key)
        else:
            await self._flush_buffers()
            await self._update(op)

    async def _publish(self, op: PublishOp) -> None:
        serial = await publish_reliably(self._channel, op.message)
        self.stats.published += 1
        if op.stream_key is not None:
            self._stream_opened(op, serial)

    def _stream_opened(self, op: PublishOp, serial: str | None) -> None:
        assert op.stream_key is not None
        if serial is None:
            msg = "unable to start stream; the publish ACK carried no serial"
            raise TransportError(msg, code=50000)
        self._serials[op.stream_key] = serial
        self._epochs[op.stream_key] = self._reconnects()
        self._continuity[op.stream_key] = self._continuity_now()
        if self._on_stream_open is not None:
            self._on_stream_open(op.stream_key, serial, op.message)

    async def _submit(self, key: str, msg: OutboundMessage) -> None:
        serial = self._serials.get(key)
        if serial is None:
            # The stream never opened (its publish failed); nothing to append to.
            log.warning("append_without_stream", stream_key=key)
            return
        await self._channel.acquire()
        self._start(key, serial, msg)
        await asyncio.sleep(0)

    def _start(self, key: str, serial: str, msg: OutboundMessage) -> None:
        self._pending.append((key, self._channel.start_append(serial, msg), msg))
        self.stats.appends += 1
        self._last_flush = asyncio.get_running_loop().time()

    async def _flush_buffers(self, *, paced: bool = False) -> None:
        """Send every buffered delta. ``paced`` (the window's timer): a stream whose append this
        call has started and which got a new delta meanwhile (while it awaited a send) is left for
        the timer's next window, not sent again at once (one append per window)."""
        started: set[str] = set()
        while self._buffers:
            key = next(iter(self._buffers))
            if paced and self._window_s > 0:
                if key in started:
                    return
                started.add(key)
            serial = self._serials.get(key)
            if serial is None:
                self._buffers.pop(key)
                continue
            if self._damaged(key):
                await self._repair(key)
                continue
            # Take the rate token first: deltas arriving while we wait join this append. The buffer
            # is taken only once the token is ours, so a cancellation here loses no text (it goes
            # out with the cancelling close instead).
            await self._channel.acquire()
            buf = self._buffers.pop(key, None)
            if buf is None:
                continue
            for i, piece in enumerate(_split(_merged(buf), self._max_bytes)):
                if i:
                    await self._channel.acquire()
                self._start(key, serial, piece)
                await asyncio.sleep(0)

    async def _drain(self) -> None:
        pending, self._pending = self._pending, collections.deque()
        if pending:
            results = await asyncio.gather(*(t for _, t, _ in pending), return_exceptions=True)
            for (key, _, _), result in zip(pending, results, strict=True):
                if isinstance(result, BaseException):
                    log.warning("append_failed", stream_key=key, error=str(result))
                    self._failed.add(key)
        self._failed.update(self._failures)  # noticed, not yet repaired
        self._failures.clear()
        for key in [k for k in self._epochs if k in self._closed_keys]:
            if self._epochs.pop(key) != self._reconnects():
                log.info("stream_spanned_reconnect", stream_key=key)
                self._failed.add(key)
        failed, self._failed = self._failed, set()
        errors: list[str] = []
        for key in failed:
            try:
                await self._recover(key)
            except TransportError as exc:
                errors.append(f"{key}: {exc.message}")
        if errors:
            msg = f"unable to flush pending appends; recovery failed for stream(s): {'; '.join(errors)}"
            raise TransportError(msg, code=ERROR_RECOVERY_FAILED)

    def _reconnects(self) -> int:
        return int(getattr(self._channel, "reconnects", 0))

    async def _repair(self, key: str) -> None:
        """The full-text update of a stream still open whose appends failed (``_notice``) or a
        continuity loss may have cut short (``_continuity``); its buffered text goes with it."""
        log.info("stream_repaired", stream_key=key)
        buf = self._buffers.pop(key, None)
        self._continuity[key] = self._continuity_now()
        failures = self._failures.pop(key, [])
        try:
            repaired = await self._recover(key)
        except TransportError as exc:
            msg = f"unable to repair stream {key}: {exc.message}"
            raise TransportError(msg, code=ERROR_RECOVERY_FAILED) from exc
        if not repaired:
            await self._resend_unsent(key, buf, failures)

    async def _resend_unsent(self, key: str, buf: _Buffer | None, failures: list[_Sent]) -> None:
        """No update could carry the text: send what certainly never left as appends after all
        (the appends held back across the loss, then the buffer). What was in flight at the loss
        stays as the server has it (all, or a tail lost: the warning says so)."""
        mine = [(t, m) for _, t, m in failures] + [(t, m) for k, t, m in self._pending if k == key]
        await asyncio.gather(*(t for t, _ in mine), return_exceptions=True)
        unsent = [m for t, m in mine if _not_sent(t)]
        self._pending = collections.deque(p for p in self._pending if p[0] != key or not _not_sent(p[1]))
        serial = self._serials[key]
        for msg in unsent:
            await self._channel.acquire()
            self._start(key, serial, msg)
            await asyncio.sleep(0)
        if buf is not None:
            self._buffers[key] = buf

    async def _recover(self, key: str) -> bool:
        """The recovery update, retried with backoff when the failure is transient (a rate limit or
        a connection blip is what usually made the appends fail): a full replace is idempotent.

        A full text over the service's message size limit (40009: Ably counts each message, and an
        update is the whole text) cannot go as an update; see :meth:`_append_missing`. The official
        JS agent has no such case: its update fails (104000). ``False`` = not repaired."""
        op = self._encoder.recovery_update(key, streaming=key not in self._closed_keys)
        self.stats.recoveries += 1
        try:
            await retry(lambda: self._update(op), attempts=8, retry_if=_transient, wait=backoff(0.25))
        except TransportError as exc:
            if exc.code != ERROR_TOO_LARGE:
                raise
            if not await self._append_missing(key, op):
                return False
        self._covered[key] = len(str(op.message.data or ""))
        return True

    async def _append_missing(self, key: str, op: UpdateOp) -> bool:
        """Repair a stream too long for one update: read what the service holds (getMessage) and
        append the rest of the text (a prefix extension for live clients too), then the closing
        status if the stream is closed. When the stored text is not a prefix of ours (or cannot be
        read) the repair is skipped with a warning (the stored text may lack what the failed appends
        carried); a closed stream still gets an empty closing append, so it ends terminal."""
        text = str(op.message.data or "")
        serial = self._serials[key]
        reader = getattr(self._channel, "message_text", None)
        current = await reader(serial) if reader is not None else None
        closing = OutboundMessage(name=op.message.name, data="", extras=op.message.extras)
        pieces = [closing] if key in self._closed_keys else []
        ok = isinstance(current, str) and text.startswith(current)
        log.warning("recovery_update_too_large", stream_key=key, chars=len(text), appended=ok)
        if ok:
            assert isinstance(current, str)
            extras = self._encoder.recovery_update(key, streaming=True).message.extras
            missing = OutboundMessage(name=op.message.name, data=text[len(current) :], extras=extras)
            pieces[:0] = _split(missing, self._max_bytes) if len(text) > len(current) else []
        tasks = []
        for piece in pieces:
            await self._channel.acquire()
            tasks.append(self._channel.start_append(serial, piece))
            await asyncio.sleep(0)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        return ok and not any(isinstance(r, BaseException) for r in results)

    async def _update(self, op: UpdateOp) -> None:
        serial = self._serials.get(op.stream_key)
        if serial is None:
            return
        await self._shielded(self._channel.update(serial, op.message))
        self.stats.updates += 1
