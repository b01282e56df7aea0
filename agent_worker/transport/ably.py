"""The one transport adapter: ably-python's ``AblyRealtime``, pointed at Ably or the embedded server.

Everything above this module speaks :mod:`agent_worker.protocol.wire` types and catches only
:class:`~agent_worker.errors.TransportError`; :func:`map_ably_errors` is the single place SDK
exceptions are translated. Notes on ably-python 3.1.4 that shape this module:

* Its realtime WebSocket URL ignores the ``port`` option, so a ``host:port`` endpoint is passed as
  ``"host:port/"`` (the trailing slash makes both the WS URL and the REST base come out right).
* It refuses Basic auth over plain HTTP, so without TLS the key signs token requests instead
  (``use_token_auth``), or an ``auth_callback`` supplies tokens (the in-process embedded server).
* ``publish``/``append_message`` await the ACK. Appends are *pipelined* by :meth:`Channel.submit_append`:
  the operation is started as a task and run up to its first suspension — by then its ``msgSerial``
  is assigned and its frame written — so wire order equals submission order without awaiting ACKs.
* Realtime history has no ``untilAttach``; :meth:`Channel.history_pages` reads REST history with
  ``from_serial=<attach serial>`` (transport/history.py: a lean GET, ``client.request`` as fallback).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import json
import os
import re
import secrets
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote, quote_plus

import httpx
from ably import AblyRealtime, AblyRest
from ably.transport.websockettransport import ProtocolMessageAction
from ably.types.channeloptions import ChannelOptions
from ably.types.message import Message, MessageAction
from ably.types.tokendetails import TokenDetails
from ably.util.exceptions import AblyException
from ably.util.helper import validate_message_size
from websockets.exceptions import WebSocketException

from agent_worker.config import Secret
from agent_worker.errors import AppendNotSentError, NotSentError, TransportError
from agent_worker.gcpause import gc_paused
from agent_worker.logs import get_logger
from agent_worker.protocol.wire import InboundMessage, OutboundMessage
from agent_worker.retry import backoff, retry
from agent_worker.transport.ackwatch import AckWatch
from agent_worker.transport.clients import ClientFactory
from agent_worker.transport.eager import eager_task
from agent_worker.transport.history import (
    REST_VERSION,
    HistoryPage,
    HistoryReader,
    HistoryRefused,
    with_limit,
)
from agent_worker.transport.inbound import Undecodable, at_or_before, history_item, raw_inbound, to_inbound
from agent_worker.transport.local import LocalEcho, sdk_state
from agent_worker.transport.pool import ConnectionPool, PooledConnection, PoolPolicy
from agent_worker.transport.ratelimit import RateLimiter

__all__ = [
    "AblySettings",
    "AblyTransport",
    "Channel",
    "ChannelStateEvent",
    "Undecodable",
    "map_ably_errors",
    "to_inbound",
]

log = get_logger("agent_worker.transport")

# The agent identifier the official SDK sends on ATTACH (src/core/agent.ts); harmless for Ably and
# lets the embedded server's logs tell AIT traffic apart.
AGENT_PARAM = "ai-transport-python/0.1.0 vercel-ai-sdk-ui-message/0.8.0"
#: Ably's ``rewind`` on a worker's session channel (:meth:`AblyTransport.open_channel`): its newest
#: messages come right after ATTACHED, so a new conversation's trigger is located without reading a
#: history page (runtime/session.py). Other channels (the chat client's) attach without it.
REWIND_MESSAGES = 8
_REST_VERSION = REST_VERSION

TokenSource = Callable[[], Awaitable["str | Mapping[str, Any]"]]
"""Returns a token string, or an Ably TokenDetails dict (``token``, ``expires``, ``issued``,
``capability``, ``clientId``). ably-python needs the clientId of a token to match its own, so pass
TokenDetails when the client has a ``client_id``."""


_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def _host(endpoint: str) -> str:
    """The host of ``host``, ``host:port``, ``[v6]`` or ``[v6]:port``."""
    if endpoint.startswith("["):
        return endpoint[1:].split("]", 1)[0]
    return endpoint.split(":", 1)[0] if endpoint.count(":") == 1 else endpoint


@dataclass(frozen=True, slots=True)
class AblySettings:
    """How to reach Ably. ``endpoint`` may be ``host`` or ``host:port``; ``None`` = Ably itself."""

    endpoint: str | None = None
    key: Secret | None = None
    token_source: TokenSource | None = None
    """Async callable returning a token string; used instead of the key when given."""
    tls: bool | None = None
    client_id: str | None = None
    use_binary_protocol: bool = True
    max_messages_per_second: float = 45.0
    burst: int = 30
    """Messages a quiet connection may send at once, within ``max_messages_per_second`` in any second
    (transport/ratelimit.py; the same default as ``[worker] burst``)."""
    connections: int = 1
    """Connections kept open at all times (the pool's minimum)."""
    max_connections: int = 32
    """The pool opens connections up to this many as load grows (see transport/pool.py)."""
    target_messages_per_second: float = 36.0
    """Load placed on one connection before the pool grows (under ``max_messages_per_second``)."""
    spare_clients: int | None = None
    """SDK clients kept built ahead for the pool to grow with (~0.8 MB each, see
    transport/clients.py); ``None``: as many as it may still open (``max_connections`` - open)."""
    spare_clients_after_s: float = 5.0
    """Spares are built once the transport has been connected this long (and is quiet)."""
    warm_connections: int = 0
    """Connections kept open ahead of need with no session on them, opened one at a time while
    quiet once the transport has run ``spare_clients_after_s`` (see transport/pool.py): a burst of
    simultaneous starts is placed on them at once instead of waiting for connections to open.
    0 here (a terminal client needs one connection); the worker's ``[ably] warm_connections``
    ships 24."""
    append_rollup_window_ms: int | None = None
    """``appendRollupWindow`` transport parameter (Ably's server-side append rollup); ``None`` = the
    service's default (40 ms on Ably)."""
    realtime_request_timeout_ms: int = 15000
    yield_between_appends: bool | None = None
    """Before writing a running stream's append (not its first) when another append's frame was
    written in the same loop turn (a timer burst: many streams' tokens due in the same millisecond),
    give up the CPU once (``os.sched_yield()``), so that a process the previous frame woke on this
    machine reads it now instead of after the whole burst. ``None``: only when the endpoint is on
    this host (loopback: the embedded server in another process), where Linux queues the woken
    reader on the writer's CPU (a socket write's wake-up is *sync*) and lets it wait there, with
    the other CPU idle, until the writer's burst is written. One append per turn (a single stream)
    never yields, nor a stream's first append (a burst of new conversations needs the worker's CPU
    for its starts). Against a remote endpoint (Ably) a write wakes no local process: off. See
    docs/benchmarks.md, thirteenth round (w14)."""
    echo_messages: bool = True
    """``False``: the connections do not receive their own messages (transport parameter
    ``echo=false``, ably-js ``echoMessages: false``); each channel hands what it published to its
    local listener instead (:meth:`Channel.on_local`). The worker's default (``[ably]
    echo_messages``); the SDK's default (``True``) here, for any other user of the transport."""

    def __repr__(self) -> str:
        return (
            f"AblySettings(endpoint={self.endpoint!r}, tls={self.resolved_tls}, "
            f"client_id={self.client_id!r}, "
            f"key={'set' if self.key else 'unset'}, token_source={'set' if self.token_source else 'unset'})"
        )

    @property
    def resolved_tls(self) -> bool:
        if self.tls is not None:
            return self.tls
        host = (self.endpoint or "").split(":")[0]
        return host not in _LOOPBACK

    @property
    def resolved_yield_between_appends(self) -> bool:
        if self.yield_between_appends is not None:
            return self.yield_between_appends
        return _host(self.endpoint or "") in _LOOPBACK

    def client_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {
            "tls": self.resolved_tls,
            "use_binary_protocol": self.use_binary_protocol,
            "realtime_request_timeout": self.realtime_request_timeout_ms,
        }
        if self.endpoint:
            # Trailing slash: see the module docstring (ably-python drops the port for realtime).
            opts["endpoint"] = f"{self.endpoint}/" if ":" in self.endpoint else self.endpoint
            opts["fallback_hosts"] = []
        if self.client_id:
            opts["client_id"] = self.client_id
        params: dict[str, str] = {}
        if self.append_rollup_window_ms is not None:
            params["appendRollupWindow"] = str(self.append_rollup_window_ms)
        if not self.echo_messages:
            params["echo"] = "false"
        if params:
            opts["transport_params"] = params
        if self.token_source is not None:
            source = self.token_source

            async def auth_callback(_params: Any) -> Any:
                value = await source()
                if isinstance(value, Mapping):
                    capability = value.get("capability")
                    return TokenDetails(
                        token=value.get("token"),
                        expires=value.get("expires"),
                        issued=value.get("issued"),
                        capability=json.loads(capability) if isinstance(capability, str) else capability,
                        client_id=value.get("clientId"),
                    )
                return value

            opts["auth_callback"] = auth_callback
        elif self.key is not None:
            opts["key"] = self.key.get()
            if not self.resolved_tls:
                opts["use_token_auth"] = True
                if self.client_id:
                    # ably-python's first token request omits the clientId unless this carries it.
                    opts["default_token_params"] = {"client_id": self.client_id}
        else:
            msg = (
                "no Ably credentials: set [ably] key_env (or --key), "
                "or omit the endpoint to use the embedded server"
            )
            raise TransportError(msg, code=40101)
        return opts


MUTABLE_MESSAGES_NOT_ENABLED = 93002
_explained_namespaces: set[str] = set()


def _mutable_rule_hint(channel: str) -> str:
    """What to do about a 93002 on ``channel`` (logged once per namespace, as an error)."""
    namespace = channel.split(":", 1)[0]
    hint = (
        f"Ably refused it because channel namespace {namespace!r} does not have the 'Message annotations, "
        "updates, deletes and appends' channel rule (mutableMessages) that AI Transport's streaming needs; "
        f"enable it for {namespace!r} in your Ably app's settings (Channel rules)"
    )
    if namespace not in _explained_namespaces:
        _explained_namespaces.add(namespace)
        log.error("mutable_messages_rule_missing", namespace=namespace, channel=channel, hint=hint)
    return hint


class map_ably_errors:
    """Translate ably-python (and socket) exceptions into :class:`TransportError`.

    A class, not a generator-based context manager: it wraps every append, so entering and leaving
    it must cost next to nothing when nothing is raised."""

    __slots__ = ("channel", "operation")

    def __init__(self, operation: str, *, channel: str | None = None) -> None:
        self.operation = operation
        self.channel = channel

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, _type: type[BaseException] | None, exc: BaseException | None, _tb: Any
    ) -> Literal[False]:
        if exc is None:
            return False
        translated = _translate(exc, self.operation, self.channel)
        if translated is None:
            return False
        raise translated from exc


def _translate(exc: BaseException, operation: str, channel: str | None) -> TransportError | None:
    if isinstance(exc, AblyException):
        code = exc.code if isinstance(exc.code, int) else 80003
        status = exc.status_code if isinstance(exc.status_code, int) else None
        msg = f"{operation} failed: {exc.message}"
        if code == MUTABLE_MESSAGES_NOT_ENABLED and channel is not None:
            msg = f"{operation} failed (93002): {_mutable_rule_hint(channel)}"
        return TransportError(msg, code=code, status_code=status)
    if isinstance(exc, TimeoutError | OSError | WebSocketException | httpx.HTTPError):
        # A socket cut mid-send surfaces from ably-python as websockets' ConnectionClosedError;
        # httpx errors come from ably-python's REST client.
        return TransportError(f"{operation} failed: {exc!r}", code=80003, status_code=503)
    if type(exc) is Exception:
        # ably-python raises a bare ``Exception()`` when it has no socket to write to.
        return TransportError(f"{operation} failed: no active transport", code=80003, status_code=503)
    return None


HISTORY_READS = 64
"""REST history requests in flight at once per transport (see :meth:`Channel._with_retries`): under
httpx's pool of 100 connections, so it never opens more or scans them per request; not lower, or
sessions starting under load wait for each other (the loop, not the server, is the bottleneck)."""


def _sdk_message(msg: OutboundMessage, *, serial: str | None = None, id: str | None = None) -> Message:
    return Message(name=msg.name, data=msg.data, extras=msg.extras or None, serial=serial, id=id)


def _append_frame(channel: str, serial: str, msg: OutboundMessage) -> dict[str, Any] | None:
    """The ProtocolMessage ably-python's ``append_message`` sends for a text append, built directly:
    the same keys in the same order (``Message.as_dict`` drops ``None`` values; ``params`` stays,
    as ``None``), so the encoded frame is byte-for-byte the SDK's (``tests/worker/test_lean_append.py``
    compares them on the wire). ``None`` when the SDK must encode it (data other than text)."""
    data = msg.data
    if not isinstance(data, str) or not serial:
        return None
    body: dict[str, Any] = {} if msg.name is None else {"name": msg.name}
    if msg.extras:
        body["extras"] = msg.extras
    body["serial"] = serial
    body["action"] = _APPEND
    body["data"] = data
    return {"action": ProtocolMessageAction.MESSAGE, "channel": channel, "messages": [body], "params": None}


_APPEND = int(MessageAction.MESSAGE_APPEND)


def _publish_frame(
    channel: str, msgs: Sequence[OutboundMessage], ids: Sequence[str]
) -> dict[str, Any] | None:
    """The ProtocolMessage ably-python's ``publish`` sends for messages with text (or no) data,
    built directly as :func:`_append_frame` is: the keys ``Message.as_dict`` keeps, in its order, so
    the frame is byte-for-byte the SDK's (``tests/worker/test_lean_publish.py``) without a
    ``Message`` and an ``as_dict`` per message (~7 µs each, five messages before a run's first
    token). A new dict per attempt: the connection manager keeps the one it sent (msgSerial set)
    to resend on resume. ``None`` when the SDK must encode the data."""
    bodies: list[dict[str, Any]] = []
    for msg, id_ in zip(msgs, ids, strict=True):
        data = msg.data
        body: dict[str, Any] = {} if msg.name is None else {"name": msg.name}
        body["id"] = id_
        if msg.extras:
            body["extras"] = msg.extras
        if data is not None:
            if not isinstance(data, str):
                return None
            body["data"] = data
        bodies.append(body)
    return {"action": ProtocolMessageAction.MESSAGE, "channel": channel, "messages": bodies}


_JOIN_MAX = 4
"""Messages of :meth:`Channel.start_publish` sharing one frame at most."""
_JOIN_MAX_BYTES = 8 * 1024
"""... and their rough size at most (:func:`_rough_size`): far under Ably's 64 KiB per
ProtocolMessage, so a batch is never refused where its messages sent one by one would not be."""


def _rough_size(msg: OutboundMessage) -> int:
    """The size of a message without data, roughly (its name and its header names and values);
    over :data:`_JOIN_MAX_BYTES` when its extras are of another shape (never joined)."""
    size = len(msg.name or "")
    extras = msg.extras
    if not extras:
        return size
    ai = extras.get("ai") if len(extras) == 1 else None
    if type(ai) is not dict:
        return _JOIN_MAX_BYTES + 1
    for section in ai.values():
        if type(section) is not dict:
            return _JOIN_MAX_BYTES + 1
        for key, value in section.items():
            if type(value) is not str:
                return _JOIN_MAX_BYTES + 1
            size += len(key) + len(value) + 4
    return size


@dataclass(slots=True)
class _Forming:
    """A :meth:`Channel.start_publish` whose frame is not written yet: ``msgs[0]`` is the task's
    own message, ``msgs[1:]`` joined it (one future each, in ``futures``)."""

    task: asyncio.Task[Any]
    msgs: list[OutboundMessage]
    size: int
    futures: list[asyncio.Future[str | None]] = field(default_factory=list)


def _settle_joined(futures: Sequence[asyncio.Future[Any]], exc: BaseException | None) -> None:
    """The messages that joined a publish share its failure (or its cancellation)."""
    for joined in futures:
        if joined.done():
            continue
        if exc is None or isinstance(exc, asyncio.CancelledError):
            joined.cancel()
        else:
            joined.set_exception(exc)


_PLAIN = re.compile(r"[A-Za-z0-9_.~:-]*")


def _quoted(text: str, *, plus: bool = False) -> str:
    """``quote(text, safe="")`` (``quote_plus(text)`` with ``plus``), for a channel name or a serial
    of letters, digits, ``_.~-`` and ``:`` at a tenth of the cost (a character class and one
    replace; urllib encodes and joins per character); other text goes through urllib."""
    if _PLAIN.fullmatch(text) is not None:
        return text.replace(":", "%3A")
    return quote_plus(text) if plus else quote(text, safe="")


def _transient(exc: TransportError) -> bool:
    return exc.status_code >= 500 and exc.code != 40160


@dataclass(frozen=True, slots=True)
class ChannelStateEvent:
    current: str
    previous: str
    resumed: bool
    reason: str | None


class Channel:
    """One realtime channel: attach, subscribe, publish/append/update, history, presence."""

    def __init__(
        self,
        transport: AblyTransport,
        name: str,
        conn: _Connection,
        limiter: RateLimiter,
        rest: AblyRest,
        *,
        rewind: int = 0,
    ) -> None:
        self._transport = transport
        self._rest = rest
        self.name = name
        self._conn = conn
        self.client = conn.client
        self.limiter = limiter
        client = conn.client
        self.rewind = rewind
        """Messages from before the attach point delivered with a fresh attach (Ably's ``rewind``)."""
        params = {"agent": AGENT_PARAM, "rewind": str(self.rewind)} if self.rewind else {"agent": AGENT_PARAM}
        self._sdk = client.channels.get(name, ChannelOptions(params=params))
        self._listeners: list[Callable[[Any], None]] = []
        self._state_handlers: list[Callable[[Any], None]] = []
        # An ACK that never comes (a server that died with the message in flight: ably-python
        # resends it on the next connection, where it may never be ACKed) must fail the operation,
        # not hang the run forever; then the run ends, or the crash journal's sweep ends it.
        self.ack_timeout_s = 2 * transport.settings.realtime_request_timeout_ms / 1000
        self._acks = AckWatch()
        self._append_op = f"append on {name}"
        self._yield_between_appends = transport.settings.resolved_yield_between_appends
        self._appended_to: str | None = None
        """The serial of this channel's latest append (a stream's first append never yields)."""
        self._pipelined: asyncio.Task[Any] | None = None
        """The latest :meth:`start_publish` still in flight."""
        self._forming: _Forming | None = None
        """The latest :meth:`start_publish` whose frame is not written yet (others may join it)."""
        self.local: LocalEcho | None = None
        """Echo off: what this channel sends, folded from its ACKs (transport/local.py)."""
        if not transport.settings.echo_messages:
            manager = conn._manager
            fallback_id = transport.settings.client_id
            self.local = LocalEcho(
                name, lambda: client.auth.client_id or fallback_id, lambda: manager.connection_id
            )
            local = self.local
            # Registered before any session handler: the epoch moves before the session resets.
            self._sdk.on(lambda change: local.on_state(*sdk_state(change)))

    def on_local(self, listener: Callable[[InboundMessage], None], doubt: Callable[[str], None]) -> bool:
        """With echo off, ``listener`` gets each message this channel sent, when acknowledged (and
        ``doubt`` when one cannot be folded exactly, see transport/local.py); ``False`` (nothing
        registered) when the connection receives its own messages anyway."""
        if self.local is None:
            return False
        self.local.listen(listener, doubt)
        return True

    @property
    def local_gaps(self) -> set[str]:
        return self.local.gaps if self.local is not None else set()

    @property
    def state(self) -> str:
        return str(self._sdk.state.value)

    @property
    def connection_state(self) -> str:
        """This channel's connection's state (the SDK's: ``connected``, ``disconnected``, ...)."""
        return str(self.client.connection.state.value)

    @property
    def reconnects(self) -> int:
        """How often this channel's connection has reconnected (see :class:`StreamWriter`)."""
        return self._conn.reconnects

    @property
    def continuity(self) -> int:
        """How often this channel's connection lost continuity (see :class:`StreamWriter`)."""
        return self._conn.continuity

    @property
    def attach_serial(self) -> str | None:
        # ably-python keeps the ATTACHED channelSerial private; it is exactly REST's ``from_serial``.
        value = getattr(self._sdk, "_RealtimeChannel__attach_serial", None)
        return value if isinstance(value, str) else None

    async def subscribe(self, listener: Callable[[InboundMessage], None]) -> None:
        """Register ``listener`` for every message (called synchronously, in delivery order) and
        attach. A listener exception is logged, never propagated into the SDK."""

        local = self.local
        sdk = self._sdk

        def on_message(msg: Message) -> None:
            if local is not None and local.own(msg.connection_id):
                # Folded from its ACK already (a server that ignored echo=false), unless it is from
                # before the attach point (the rewind: history, which the ACKs did not fold).
                attach = getattr(sdk, "_RealtimeChannel__attach_serial", None)
                serial = getattr(msg.version, "serial", None) or msg.serial
                if not (isinstance(attach, str) and serial and at_or_before(serial, attach)):
                    return
            try:
                inbound = to_inbound(msg)
            except Exception:  # a malformed SDK message must not stop the subscription
                log.warning("inbound_message_unreadable", channel=self.name, exc_info=True)
                return
            try:
                listener(inbound)
            except Exception:
                log.exception("inbound_listener_failed", channel=self.name)

        self._listeners.append(on_message)
        with map_ably_errors(f"attach {self.name}"):
            await self._sdk.subscribe(on_message)

    def on_state_change(self, callback: Callable[[ChannelStateEvent], None]) -> None:
        def handler(change: Any) -> None:
            reason = getattr(change, "reason", None)
            callback(
                ChannelStateEvent(
                    current=str(getattr(change.current, "value", change.current)),
                    previous=str(getattr(change.previous, "value", change.previous)),
                    resumed=bool(getattr(change, "resumed", False)),
                    reason=None if reason is None else str(reason),
                )
            )

        self._state_handlers.append(handler)
        self._sdk.on(handler)

    def unsubscribe(self) -> None:
        """Drop the message and state listeners, staying attached (and present): a stale session
        hands the channel over to its replacement (worker/pool.py)."""
        for listener in self._listeners:
            self._sdk.unsubscribe(listener)
        self._listeners.clear()
        for handler in self._state_handlers:
            self._sdk.off(handler)
        self._state_handlers.clear()

    async def detach(self) -> None:
        self.unsubscribe()
        with contextlib.suppress(AblyException, asyncio.TimeoutError):
            await self._sdk.detach()

    async def publish(self, msg: OutboundMessage) -> str | None:
        """Publish one message; returns its serial from the ACK."""
        serials = await self.publish_batch([msg])
        return serials[0] if serials else None

    async def publish_batch(self, msgs: Sequence[OutboundMessage], *, attempts: int = 8) -> list[str | None]:
        """Atomic batch publish (one ProtocolMessage); one serial per message, in order.

        Idempotent: the messages carry ids fixed for this call, so a retry after a transport fault
        (the first attempt may still be delivered when ably-python resends it on resume) or after
        an ACK that came back without serials is deduplicated by Ably (and the embedded server),
        which answers with the original serials. Ably counts each message of a batch against the
        connection's inbound rate, so the batch takes one rate token per message."""
        for _ in msgs:
            await self.limiter.acquire()
        return await self._publish_attempts(msgs, attempts, self._pipelined)

    async def _publish_attempts(
        self, msgs: Sequence[OutboundMessage], attempts: int, ahead: asyncio.Task[Any] | None
    ) -> list[str | None]:
        """``publish_batch``'s attempts. ``ahead``: a pipelined publish sent before this one; a retry
        waits for it to settle (its own retries included), so a re-send never overtakes it."""
        base = secrets.token_urlsafe(12)
        ids = [f"{base}:{i}" for i in range(len(msgs))]
        delay = 0.1
        local = self.local
        for attempt in range(1, attempts + 1):
            try:
                await self._conn.ready()
                epoch = local.epoch if local is not None else 0
                with map_ably_errors(f"publish on {self.name}"):
                    async with asyncio.timeout(self.ack_timeout_s):
                        result = await self._send_publish(msgs, ids)
            except TransportError as exc:
                if attempt == attempts or not _transient(exc):
                    raise
                log.warning("publish_retry", channel=self.name, attempt=attempt, error=exc.message)
                if ahead is not None and not ahead.done():
                    await asyncio.wait([ahead])
            else:
                serials = [s if isinstance(s, str) else None for s in getattr(result, "serials", None) or []]
                if (len(serials) == len(msgs) and all(serials)) or attempt == attempts:
                    if local is not None and local.active:
                        padded = serials + [None] * (len(msgs) - len(serials))
                        local.created(epoch, list(zip(msgs, padded, ids, strict=True)))
                    return serials
                log.warning("publish_ack_without_serials", channel=self.name, attempt=attempt)
            await asyncio.sleep(delay)
            delay = min(2.0, delay * 2)
        return []  # pragma: no cover - the loop returns or raises

    async def _send_publish(self, msgs: Sequence[OutboundMessage], ids: Sequence[str]) -> Any:
        """One publish attempt: text (or empty) messages as a frame built directly
        (:func:`_publish_frame`), with the SDK's own size and state checks (and errors), handed to
        the connection manager's send path, so msgSerial, pending queue, ACK/NACK and re-send on
        resume apply exactly as for ``publish``; anything else (other data, an encrypted channel)
        goes through ``publish``."""
        sdk = self._sdk
        frame = None if sdk.cipher else _publish_frame(self.name, msgs, ids)
        if frame is None:
            return await sdk.publish([_sdk_message(m, id=i) for m, i in zip(msgs, ids, strict=True)])
        options = self.client.options
        binary = options.use_binary_protocol
        validate_message_size(frame["messages"], binary, getattr(options, "max_message_size", 65536))
        sdk._throw_if_unpublishable_state()
        return await self._conn._manager.send_protocol_message(frame)

    async def append(self, serial: str, msg: OutboundMessage) -> str | None:
        await self.limiter.acquire()
        await self._conn.ready()
        local = self.local
        epoch = local.epoch if local is not None else 0
        try:
            with map_ably_errors(f"append on {self.name}", channel=self.name):
                async with asyncio.timeout(self.ack_timeout_s):
                    version = await self._send_append(serial, msg)
        except BaseException:
            if local is not None:
                local.append_failed(serial)
            raise
        if local is not None:
            local.appended(epoch, serial, msg, version)
        return version

    async def _send_append(self, serial: str, msg: OutboundMessage) -> str | None:
        """One append, awaiting its ACK: a text append's frame built directly (:func:`_append_frame`)
        and handed to the connection manager's own send path, so its msgSerial, pending queue,
        ACK/NACK, re-send on resume and :meth:`_Connection._lose_continuity` apply exactly as for
        ``append_message``, without its per-append ``Message``, ``as_dict`` and log line; anything
        else (non-text data, an encrypted channel) goes through ``append_message``."""
        sdk = self._sdk
        frame = None if sdk.cipher else _append_frame(self.name, serial, msg)
        if frame is None:
            result = await sdk.append_message(_sdk_message(msg, serial=serial))
            return getattr(result, "version_serial", None)
        sdk._throw_if_unpublishable_state()  # the same state checks (and errors) as append_message
        result = await self._conn._manager.send_protocol_message(frame)
        serials = getattr(result, "serials", None)
        return serials[0] if serials else None

    async def acquire(self, *, defer: bool = False) -> None:
        """Take one token from the connection's rate limiter (for :meth:`start_append`); ``defer``:
        a running stream's next append, which urgent operations may go before (transport/ratelimit.py)."""
        await self.limiter.acquire(defer=defer)

    def hasten(self, task: asyncio.Task[Any]) -> None:
        """``task``'s deferrable rate-token waits become urgent (see :meth:`RateLimiter.promote`)."""
        self.limiter.promote(task)

    def try_acquire(self) -> bool:
        """A rate token if one is free right now (see :meth:`RateLimiter.try_acquire`)."""
        return self.limiter.try_acquire()

    def start_append(self, serial: str, msg: OutboundMessage) -> asyncio.Task[str | None]:
        """Start an append without waiting for its ACK (pipelining); the caller has taken a rate
        token with :meth:`acquire`. The frame is written before this returns (msgSerial assigned,
        in the caller's turn: :func:`~agent_worker.transport.eager.eager_task`), unless the
        connection is not ready: then the task sends it once it is, after the sends already
        waiting (:meth:`_Connection.ready`), which an append started later waits behind. Either way
        wire order equals call order."""

        epoch = self._conn.continuity
        local = self.local
        task: asyncio.Task[str | None] | None = None
        watched = False

        async def run() -> str | None:
            nonlocal watched
            await self._conn.ready()
            self._conn.caught_up(task)
            attach_epoch = local.epoch if local is not None else 0
            try:
                if self._conn.continuity != epoch:
                    # Queued across a continuity loss: the appends before it may be lost, so sending
                    # it now could leave a gap in the stream; the writer repairs the stream instead.
                    why = f"append on {self.name} not sent: the connection lost continuity (80008)"
                    raise AppendNotSentError(why)
                with map_ably_errors(self._append_op, channel=self.name):
                    # The ACK deadline runs from the send (not an asyncio.timeout per append); taken
                    # eagerly, the task does not exist yet: it is watched as soon as it does.
                    watched = True
                    if task is not None:
                        self._acks.watch(task, self.ack_timeout_s)
                    try:
                        version = await self._send_append(serial, msg)
                    except asyncio.CancelledError:
                        if task is not None and self._acks.timed_out(task):
                            raise TimeoutError from None
                        raise
            except BaseException:
                if local is not None:
                    local.append_failed(serial)
                raise
            if local is not None:
                local.appended(attach_epoch, serial, msg, version)
            return version

        # Eager only when the send can go at once: a first step that has to wait (``ready``'s
        # ``wait_for``) belongs in a task of its own, not in the caller's (see transport/eager.py).
        if self._conn.ready_now:
            if self._yield_between_appends:
                # A running stream's token may yield; its first text never does.
                self._transport.before_append_write(may_yield=self._appended_to == serial)
                self._appended_to = serial
            task = eager_task(run())
        else:
            task = asyncio.create_task(run())
            self._conn.behind(task)
        if watched and not task.done():
            self._acks.watch(task, self.ack_timeout_s)
        return task

    def start_publish(self, msg: OutboundMessage) -> asyncio.Future[str | None]:
        """Publish one message without waiting for its ACK (the future's result is its serial): the
        caller has taken a rate token; a task's first step writes the frame, so what the caller
        sends next from a task created after this one, or after yielding once, follows this
        message on the wire (tasks take their first steps in creation order).
        Retried like :meth:`publish_batch` (same message id: Ably deduplicates a first attempt that did land);
        a publish sent after it retries only once it has settled. (A publish sent after it whose
        *first* attempt goes out on a new connection, after this one failed on a dropped one that
        could not be resumed, can still land first.)

        Calls in the same turn share a frame: a small message without data (a run-start, a
        step-start) started while an earlier one's frame is not written yet joins it, after it, as
        one ProtocolMessage (one frame out and one ACK back instead of two; in a burst of new
        conversations each frame costs ably-python a task and a timer per ACK, and the server and
        every subscriber a frame). The wire order is the same, and a subscriber reads the same
        messages: a batch is delivered as its messages, in order, each with its own serial. They
        succeed or fail together (one ACK or NACK), and are retried together."""
        size = _rough_size(msg) if msg.data is None else _JOIN_MAX_BYTES + 1
        forming = self._forming
        if (
            forming is not None
            and forming.size + size <= _JOIN_MAX_BYTES
            and len(forming.msgs) < _JOIN_MAX
            and not forming.task.done()
        ):
            joined: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
            forming.msgs.append(msg)
            forming.futures.append(joined)
            forming.size += size
            return joined

        async def run() -> str | None:
            if self._forming is batch:
                self._forming = None  # its frame is being written: later calls start their own
            followers = batch.futures
            try:
                serials = await self._publish_attempts(batch.msgs, 8, ahead)
            except BaseException as exc:
                _settle_joined(followers, exc)
                raise
            for i, joined in enumerate(followers, start=1):
                if not joined.done():
                    joined.set_result(serials[i] if i < len(serials) else None)
            return serials[0] if serials else None

        ahead = self._pipelined
        task = asyncio.create_task(run())
        batch = _Forming(task, [msg], size)
        self._forming = batch
        self._pipelined = task
        task.add_done_callback(functools.partial(self._pipelined_done, batch))
        return task

    async def send_batch(self, msgs: Sequence[OutboundMessage]) -> list[str | None]:
        """:meth:`publish_batch` whose rate tokens the caller has taken (one per message): its frame
        is written in this coroutine's first step, or, while the connection is not ready, queued
        first in line (:meth:`_Connection.ready`), so a publish or append started after the call
        follows it on the wire without waiting for its ACK."""
        return await self._publish_attempts(msgs, 8, self._pipelined)

    def _pipelined_done(self, batch: _Forming, task: asyncio.Task[Any]) -> None:
        if self._pipelined is task:
            self._pipelined = None
        if self._forming is batch:
            self._forming = None
        if batch.futures and not all(f.done() for f in batch.futures):
            # Cancelled before its first step: the messages that joined it were not sent either.
            _settle_joined(batch.futures, asyncio.CancelledError() if task.cancelled() else task.exception())

    async def update(self, serial: str, msg: OutboundMessage) -> str | None:
        await self.limiter.acquire()
        await self._conn.ready()
        local = self.local
        epoch = local.epoch if local is not None else 0
        with map_ably_errors(f"update on {self.name}", channel=self.name):
            async with asyncio.timeout(self.ack_timeout_s):
                result = await self._sdk.update_message(_sdk_message(msg, serial=serial))
        version = getattr(result, "version_serial", None)
        if local is not None:
            local.updated(epoch, serial, msg, version if isinstance(version, str) else None)
        return version

    async def message_text(self, serial: str) -> str | None:
        """The text of the latest version of message ``serial`` (REST getMessage); ``None`` when
        it is not text or cannot be read."""
        path = f"/channels/{quote(self.name, safe='')}/messages/{quote(serial, safe='')}"
        try:
            page = await rest_request(self._rest, "GET", path, f"get message on {self.name}")
        except TransportError as exc:
            log.warning("message_read_failed", channel=self.name, error=exc.message)
            return None
        raw = page.items[0] if isinstance(page.items, list) and page.items else page.items
        if not isinstance(raw, Mapping):
            return None
        data = self._decode_history_item(raw).data
        return data if isinstance(data, str) else None

    async def history_pages(
        self, *, page_size: int = 100, from_serial: str | None = None, later_page_size: int = 1000
    ) -> AsyncGenerator[list[InboundMessage], None]:
        """REST history newest-first, one list per page (each list newest-first too, the caller's
        to consume: the session pops each message as it folds it).

        ``from_serial`` (the attach serial) bounds it to what was published before the attach, which
        the live subscription cannot have delivered (ably-js's ``untilAttach``). The first page has
        ``page_size`` messages (the trigger is usually among the newest); a caller that asks for more
        is rebuilding a long conversation, so later pages ask for ``later_page_size`` (Ably's maximum
        is 1000): one round trip per 1,000 messages instead of ten."""
        # urlencode's output for these three, built directly (~10 µs less per session start)
        query = f"limit={page_size}&direction=backwards"
        if from_serial:
            query += f"&from_serial={_quoted(from_serial, plus=True)}"
        reader = self._transport.history_reader
        first = f"/channels/{_quoted(self.name)}/messages?{query}"
        page = await self._with_retries(functools.partial(reader.page, first))
        ahead: asyncio.Task[HistoryPage] | None = None
        try:
            for index in itertools.count():
                if page.next is not None:
                    following = functools.partial(reader.page, with_limit(page.next, later_page_size))
                    if index > 0:
                        # Past the first page the caller is rebuilding a long conversation: the next
                        # page is requested now (one loop turn puts the GET on the wire) and read
                        # while this one is decoded and folded (the server prepares it meanwhile).
                        ahead = asyncio.ensure_future(self._with_retries(following))
                        await asyncio.sleep(0)
                with gc_paused():
                    items = page.messages(self._decode_history_item)
                if page.next is None:
                    yield items
                    return
                yield items
                if ahead is None:
                    page = await self._with_retries(following)
                else:
                    page, ahead = await ahead, None
        finally:
            if ahead is not None:  # the caller stopped reading: drop the page read ahead
                ahead.add_done_callback(lambda t: t.cancelled() or t.exception())
                ahead.cancel()

    def _decode_history_item(self, raw: Mapping[str, Any]) -> InboundMessage:
        """One history item; an undecodable payload (say ``encoding: json`` over garbled text) stays
        in the page with :class:`Undecodable` data, so a trigger lookup still finds it and refuses it
        with a reason instead of one bad message breaking the whole history read."""
        try:
            return history_item(raw)
        except Exception as exc:
            log.warning(
                "history_message_unreadable", channel=self.name, serial=raw.get("serial"), error=repr(exc)
            )
            return raw_inbound(raw, Undecodable(raw.get("data"), str(raw.get("encoding") or "")))

    async def _with_retries(self, fetch: Callable[[], Awaitable[Any]], retries: int = 3) -> Any:
        """One history page, retried 3 times (100 ms doubling) like the JS hydrator, then 104011."""

        async def once() -> Any:
            # Bounded per transport (HISTORY_READS): the HTTP pool neither queues internally nor
            # grows past it.
            async with self._transport.history_reads:
                with map_ably_errors(f"history of {self.name}"):
                    return await fetch()

        def log_retry(failures: int, exc: BaseException, _wait: float) -> None:
            log.warning(
                "history_page_retry", channel=self.name, attempt=failures, error=getattr(exc, "message", exc)
            )

        try:
            return await retry(
                once,
                attempts=retries + 1,
                retry_if=lambda exc: isinstance(exc, TransportError) and not isinstance(exc, HistoryRefused),
                wait=backoff(0.1, max_wait=60.0),
                on_retry=log_retry,
            )
        except HistoryRefused as exc:  # an error answer, as the server gave it
            msg = f"history of {self.name} failed: {exc.message}"
            raise TransportError(msg, code=exc.code, status_code=exc.status_code) from exc
        except TransportError as exc:
            msg = f"unable to fetch history page; {exc.message}"
            raise TransportError(msg, code=104011) from exc

    async def presence_enter(self, data: Mapping[str, Any]) -> None:
        await self.limiter.acquire()
        await self._conn.ready()
        with map_ably_errors(f"presence enter on {self.name}"):
            await self._sdk.presence.enter(dict(data))

    async def presence_update(self, data: Mapping[str, Any]) -> None:
        await self.limiter.acquire()
        await self._conn.ready()
        with map_ably_errors(f"presence update on {self.name}"):
            await self._sdk.presence.update(dict(data))

    async def presence_leave(self) -> None:
        await self.limiter.acquire()
        await self._conn.ready()
        with map_ably_errors(f"presence leave on {self.name}"):
            await self._sdk.presence.leave()

    async def present_connections(self, client_id: str) -> int:
        """How many presence members ``client_id`` has on this channel now (its open devices), by
        REST: the server's current set, not this connection's possibly still-syncing copy.

        Read with the history reader's lean GET (transport/history.py: ~0.3 ms of CPU where the
        SDK's ``request()`` costs ~2 ms per call, at every run's end under the ``absent`` push
        policy), the SDK as its fallback; at most :data:`REST_IN_FLIGHT` at once, as
        :func:`rest_request` bounds them, so run ends never crowd out history reads."""
        path = f"/channels/{_quoted(self.name)}/presence?clientId={_quoted(client_id, plus=True)}"
        what = f"presence of {self.name}"
        reader = self._transport.history_reader
        async with _rest_slots(self._rest):
            try:
                with map_ably_errors(what):
                    items = await reader.items(path)
            except TransportError as exc:
                msg = f"{what} failed: {exc.message}"
                raise TransportError(msg, code=exc.code, status_code=exc.status_code) from exc
        return len(items)


REST_IN_FLIGHT = 16
_REST_SLOTS: weakref.WeakKeyDictionary[AblyRest, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def _rest_slots(client: AblyRest) -> asyncio.Semaphore:
    slots = _REST_SLOTS.get(client)
    if slots is None:
        slots = _REST_SLOTS[client] = asyncio.Semaphore(REST_IN_FLIGHT)
    return slots


async def rest_request(
    client: AblyRest,
    method: str,
    path: str,
    what: str,
    *,
    params: dict[str, Any] | None = None,
    body: Any = None,
) -> Any:
    """One REST request; a failed one is a :class:`TransportError` with Ably's code.

    At most :data:`REST_IN_FLIGHT` per client are handed to the SDK at once: its httpx/httpcore
    pool re-matches every queued request against every connection on each state change, so 500
    run ends doing their presence lookup at once cost seconds of CPU (21M ``can_handle_request``
    calls in the 500-stream benchmark) where a short queue of our own costs nothing."""
    async with _rest_slots(client):
        with map_ably_errors(what):
            page = await client.request(method, path, _REST_VERSION, params=params, body=body)
    if not page.success:
        code = page.error_code
        msg = f"{what} failed: HTTP {page.status_code} {page.error_message or ''}".strip()
        raise TransportError(msg, code=int(code) if code and str(code).isdigit() else 50000)
    return page


def _is_append(protocol_message: Mapping[str, Any]) -> bool:
    messages = protocol_message.get("messages")
    return isinstance(messages, list) and any(
        isinstance(m, Mapping) and m.get("action") == MessageAction.MESSAGE_APPEND for m in messages
    )


class _Connection:
    """One realtime client of the pool (its rate limiter is the pool's, see transport/pool.py).

    :meth:`ready` works around an ably-python 3.1.4 ordering bug: its ACK bookkeeping assumes the
    messages awaiting an ACK are queued in ``msgSerial`` order, but a message sent while
    disconnected is queued at once, ahead of the earlier messages it re-sends after the reconnect
    (and a send just after CONNECTED also beats the re-send tasks); ACK results are then handed to
    the wrong messages (an ACK "without serials", or another message's serial: a stream's appends
    then target a serial naming no message, 104000). So sends wait until the connection is
    CONNECTED and its re-sends are queued; one that waited ``wait_s`` in vain fails as not sent
    (:class:`~agent_worker.errors.NotSentError`) rather than be handed to the SDK while it is down.

    Waiters go on in the order they came (a FIFO handed on one at a time): the msgSerial, and so
    the wire order of one stream's appends, is assigned when a waiter goes on, and a send that
    arrived just after the re-connect must not overtake earlier ones still waking up (a reordered
    stream cannot be repaired for a live client: its closing append ends the stream there)."""

    def __init__(self, client: AblyRealtime, wait_s: float = 15.0) -> None:
        self.client = client
        self._wait_s = wait_s
        self._settled = False
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._queued: list[asyncio.Task[Any]] = []
        self.reconnects = 0  # transitions to CONNECTED since this client connected
        self.continuity = 0  # of those, how many came with a new connection id (continuity lost)
        self._manager = client.connection.connection_manager
        self._connection_id: str | None = self._manager.connection_id
        if str(client.connection.state.value) == "connected":
            self._settled = True
        # The manager's emitter is synchronous (the public one defers), so this runs before the
        # re-send tasks are created; the doubly deferred set() runs after their first step.
        client.connection.connection_manager.on("connectionstate", self._on_state)

    def _on_state(self, change: Any) -> None:
        self._settled = False
        if str(getattr(change.current, "value", change.current)) == "connected":
            self.reconnects += 1
            previous, self._connection_id = self._connection_id, self._manager.connection_id
            if previous is not None and previous != self._connection_id:
                self._lose_continuity()
            loop = asyncio.get_running_loop()
            loop.call_soon(loop.call_soon, self._settle)

    def _lose_continuity(self) -> None:
        """A new connection id: fail every append still awaiting its ACK instead of letting the SDK
        re-send it. ably-python (like ably-js, RTN19a2) re-sends them on the new connection, where
        nothing can deduplicate an append: one the server applied just before the drop (its ACK
        lost with the socket) would be applied twice, a repeat no later update can take back from
        a live client. Failed, the stream writer repairs each stream (one full-text update).
        Publishes (fixed ids), updates (full replace) and presence are idempotent: re-sent as the
        SDK does. This runs in the manager's synchronous state event, before the SDK takes its
        queue to re-send it (a public ``connection.on`` listener runs too late)."""
        self.continuity += 1
        error = AblyException("connection not resumed; unacknowledged append failed", 500, 80008)
        manager = self._manager
        appends = [p for p in manager.queued_messages if _is_append(p.message)]
        for pending in appends:
            manager.queued_messages.remove(pending)
            with contextlib.suppress(ValueError):
                manager.pending_message_queue.messages.remove(pending)
            if pending.future is not None and not pending.future.done():
                pending.future.set_exception(error)
        # ably-python resets its msgSerial counter here but re-sends the rest with their old serials,
        # so the new connection would see e.g. 5, 6, then 0, 1, ...: msgSerials must rise on a
        # connection (Ably may take a lower one for a repeat: ably-ruby#179, ably-js#2153). Like
        # ably-js (RTN19a2, resetSendAttempted) they get new serials from 0, in the order they go
        # out (the manager sends its queue from the right).
        for pending in reversed(manager.queued_messages):
            if pending.ack_required:
                pending.message["msgSerial"] = manager.msg_serial
                manager.msg_serial += 1

    def _settle(self) -> None:
        if str(self.client.connection.state.value) == "connected":
            self._settled = True
            self._wake_head()

    def _wake_head(self) -> None:
        if self._settled and self._waiters and not self._waiters[0].done():
            self._waiters[0].set_result(None)

    @property
    def ready_now(self) -> bool:
        """A send may go out now, synchronously: :meth:`ready` would return at once, and no append
        started earlier (:meth:`behind`) is still to pass it."""
        queued = self._queued
        return self._settled and not self._waiters and (not queued or all(t.done() for t in queued))

    def behind(self, task: asyncio.Task[Any]) -> None:
        """``task``, an append started while not :attr:`ready_now`, has yet to pass :meth:`ready`:
        until it has (:meth:`caught_up`) or is done, no later append goes out eagerly ahead of it."""
        self._queued = [t for t in self._queued if not t.done()]
        self._queued.append(task)

    def caught_up(self, task: asyncio.Task[Any] | None) -> None:
        if task in self._queued:
            self._queued.remove(task)

    async def ready(self) -> None:
        """Return when the caller may send (synchronously, right away); :class:`NotSentError`
        after ``wait_s`` without that. Never returns while not settled: handed to ably-python
        then, the send would be queued ahead of the re-sends in its ACK queue (see above)."""
        if self._settled and not self._waiters:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait_s
        fut: asyncio.Future[None] = loop.create_future()
        self._waiters.append(fut)
        self._wake_head()
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(fut), max(0.0, deadline - loop.time()))
                if self._settled:
                    return  # the caller sends now; the finally hands the turn to the next waiter
                if loop.time() >= deadline:
                    msg = f"not sent: the connection did not come back within {self._wait_s:g} s"
                    raise NotSentError(msg, code=80003, status_code=503)
                # Woken, but the connection dropped again before this task ran: wait again, first.
                index = self._waiters.index(fut)
                fut = self._waiters[index] = loop.create_future()
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(fut)
            self._wake_head()


def _log_state(change: Any) -> None:
    """Logs connection state changes after start-up (continuity loss: ``_Connection``)."""
    state = str(getattr(change.current, "value", change.current))
    reason = getattr(change, "reason", None)
    log.info("transport_state", state=state, reason=str(reason) if reason is not None else None)


class AblyTransport:
    """The worker's realtime connections: a :class:`~agent_worker.transport.pool.ConnectionPool`
    that opens connections as load grows (``settings.connections`` to ``max_connections``) and
    places each session channel on the least-loaded one, each connection under Ably's 50 messages/s.
    """

    def __init__(self, settings: AblySettings) -> None:
        self.settings = settings
        self._appended_this_turn = False
        self._channels: dict[str, Channel] = {}
        self._rest: AblyRest | None = None
        self._history_reader: HistoryReader | None = None
        self.history_reads = asyncio.Semaphore(HISTORY_READS)
        policy = PoolPolicy(
            min_connections=max(1, settings.connections),
            max_connections=max(settings.connections, settings.max_connections),
            max_messages_per_second=settings.max_messages_per_second,
            burst=settings.burst,
            target_rate=min(settings.target_messages_per_second, settings.max_messages_per_second),
            warm=max(0, settings.warm_connections),
            warm_after_s=settings.spare_clients_after_s,
        )
        self.pool: ConnectionPool[_Connection] = ConnectionPool(
            policy, self._connect_one, self._close_client, quiet=self._quiet
        )
        self._clients = ClientFactory(
            settings.client_options,
            spares=self._spares,
            quiet=self._quiet,
            after_s=settings.spare_clients_after_s,
        )
        self._started = False

    def _spares(self) -> int:
        room = self.pool.policy.max_connections - len(self.pool.connections)
        wanted = self.settings.spare_clients
        return room if wanted is None else min(wanted, room)

    def _quiet(self) -> bool:
        """No connection opening and less traffic than one connection is given (36 messages/s): a
        good time to build a spare client (~20 ms of CPU)."""
        conns = self.pool.connections
        sent = sum(c.limiter.recent_rate() for c in conns)
        return all(c.client is not None for c in conns) and sent < self.pool.policy.target_rate

    def __repr__(self) -> str:
        return f"AblyTransport({self.settings!r}, connections={len(self.pool.connections)})"

    def before_append_write(self, *, may_yield: bool) -> None:
        """An append's frame is about to be written (``settings.yield_between_appends``): if one
        was already written in this loop turn, and ``may_yield``, let whatever it woke on this CPU
        run first."""
        if self._appended_this_turn:
            if may_yield:
                os.sched_yield()
            return
        self._appended_this_turn = True
        asyncio.get_running_loop().call_soon(self._turn_over)

    def _turn_over(self) -> None:
        self._appended_this_turn = False

    def _first(self) -> Any:
        ready = self.pool.ready_connections
        if not ready:
            msg = "transport is not connected; call await transport.connect() first"
            raise RuntimeError(msg)
        return ready[0]

    @property
    def client(self) -> AblyRealtime:
        """The first connection's client."""
        client: AblyRealtime = self._first().client.client
        return client

    @property
    def clients_built(self) -> int:
        """SDK clients this transport has built: one per connection it opened, and any spares."""
        return self._clients.built

    @property
    def spare_clients_wanted(self) -> int:
        """Spare SDK clients it keeps built ahead now (0: a client is built only to connect)."""
        return self._clients.spares()

    @property
    def limiter(self) -> RateLimiter:
        limiter: RateLimiter = self._first().limiter
        return limiter

    async def connect(self, wait_s: float = 15.0) -> None:
        if self._started:
            return
        self._wait_s = wait_s
        rest_options = self.settings.client_options()
        rest_options.pop("realtime_request_timeout", None)
        rest_options.pop("transport_params", None)
        with map_ably_errors("create REST client"):
            self._rest = AblyRest(**rest_options)
        if rest_options.get("use_token_auth"):  # a key over plain HTTP: one token for every connection
            self._clients.share_token(self._rest)
        self._history_reader = HistoryReader(
            self._rest, binary=self.settings.use_binary_protocol, max_connections=HISTORY_READS
        )
        try:
            await self.pool.start()
        except BaseException:
            await self.close()
            raise
        self._started = True
        self._clients.wake()
        log.info(
            "transport_connected",
            endpoint=self.settings.endpoint or "ably",
            connections=len(self.pool.connections),
            max_connections=self.pool.policy.max_connections,
        )

    _wait_s = 15.0

    async def _close_client(self, conn: _Connection) -> None:
        with contextlib.suppress(AblyException, asyncio.TimeoutError, OSError):
            await asyncio.wait_for(conn.client.close(), 10)
        if self._started:
            self._clients.wake()  # the pool shrank: room for spares again

    async def _connect_one(self) -> _Connection:
        wait_s = self._wait_s
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def on_change(change: Any) -> None:
            state = str(getattr(change.current, "value", change.current))
            if done.done():
                return
            if state == "connected":
                done.set_result(None)
            elif state in {"failed", "suspended", "closed"}:
                reason = getattr(change, "reason", None)
                code = getattr(reason, "code", None)
                msg = f"could not connect to {self.settings.endpoint or 'Ably'}: {reason or state}"
                done.set_exception(TransportError(msg, code=code if isinstance(code, int) else 80000))

        with map_ably_errors("connect"):
            client = await self._clients.take()  # a spare built ahead, or one built now
            client.connection.on(on_change)
            client.connect()
            try:
                await asyncio.wait_for(done, wait_s)
            except BaseException:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.close(), 5)
                raise
            finally:
                client.connection.off(on_change)
        client.connection.on(_log_state)
        return _Connection(client, wait_s)

    async def push_publish(self, recipient: dict[str, Any], payload: dict[str, Any]) -> Any:
        """``POST /push/publish`` (Ably's push admin API; the key needs ``push-admin``); returns
        the response body's items (the embedded server reports each delivery there)."""
        if self._rest is None:
            msg = "transport is not connected; call await transport.connect() first"
            raise RuntimeError(msg)
        page = await rest_request(
            self._rest, "POST", "/push/publish", "push publish", body={**payload, "recipient": recipient}
        )
        return page.items

    def channel(self, name: str) -> Channel:
        """The channel, placed on an open connection if new (see :meth:`open_channel`)."""
        ch = self._channels.get(name)
        if ch is None:
            ch = self._make_channel(name, self.pool.place(name))
        return ch

    async def open_channel(self, name: str) -> Channel:
        """The channel, placed by load; may open a new connection for it and wait for it. A worker's
        session channel: a new one attaches with ``rewind`` (:data:`REWIND_MESSAGES`)."""
        ch = self._channels.get(name)
        if ch is None:
            conn = await self.pool.acquire(name)
            ch = self._channels.get(name) or self._make_channel(name, conn, rewind=REWIND_MESSAGES)
        return ch

    @property
    def history_reader(self) -> HistoryReader:
        if self._history_reader is None:
            msg = "transport is not connected; call await transport.connect() first"
            raise RuntimeError(msg)
        return self._history_reader

    def _make_channel(self, name: str, conn: PooledConnection[_Connection], *, rewind: int = 0) -> Channel:
        if self._rest is None or conn.client is None:
            msg = "transport is not connected; call await transport.connect() first"
            raise RuntimeError(msg)
        ch = Channel(self, name, conn.client, conn.limiter, self._rest, rewind=rewind)
        self._channels[name] = ch
        return ch

    async def release(self, name: str) -> None:
        ch = self._channels.pop(name, None)
        self.pool.release(name)
        if ch is not None:
            await ch.detach()
            with contextlib.suppress(Exception):
                ch.client.channels.release(name)

    @property
    def connected(self) -> bool:
        ready = self.pool.ready_connections
        return bool(ready) and all(
            c.client is not None and str(c.client.client.connection.state.value) == "connected" for c in ready
        )

    async def close(self) -> None:
        self._started = False
        self._channels.clear()
        rest, self._rest = self._rest, None
        reader, self._history_reader = self._history_reader, None
        await self.pool.close()
        if reader is not None:
            with contextlib.suppress(Exception):
                await reader.close()
        await self._clients.close()
        if rest is not None:
            with contextlib.suppress(Exception):
                await rest.close()
