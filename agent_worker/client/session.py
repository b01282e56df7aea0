"""The client side of an AI Transport 0.8.0 session, over ably-python (src/core/transport/client-session.ts).

One :class:`ChatSession` per device and conversation: it subscribes and attaches, hydrates the
history up to the attach point, folds every delivery (live or history, duplicates tolerated) into the
protocol layer's :class:`~agent_worker.protocol.tree.ConversationTree`, and publishes exactly the
inputs the official ``ChatTransport`` publishes (§4.1): a user message batch, a ``regenerate``
signal, an edit (``fork-of``), and ``ai-cancel``. After publishing, :meth:`ChatSession.invoke` POSTs
``{inputEventId, sessionName}`` to the agent.

Continuity: when the channel re-attaches without ``resumed`` (messages may have been missed while the
connection was down) the session hydrates again from the new attach point; the tree drops whatever it
already folded (``version.serial`` replay guard), so no text is lost or repeated.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import string
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from agent_worker.errors import ProtocolError, TransportError
from agent_worker.logs import get_logger
from agent_worker.protocol import openai as openai_codec
from agent_worker.protocol.codec_core import CodecMessage
from agent_worker.protocol.codecs import OPENAI_RESPONSES
from agent_worker.protocol.headers import (
    AI_INPUT,
    H_CODEC_MESSAGE_ID,
    H_RUN_CLIENT_ID,
    build_cancel_headers,
    build_input_headers,
    cancel_message,
)
from agent_worker.protocol.tree import ApplyResult, ConversationTree, InputNode, Node, RunNode
from agent_worker.protocol.vercel.encoder import encode_regenerate, encode_user_message
from agent_worker.protocol.wire import InboundMessage, OutboundMessage
from agent_worker.transport.ably import AblyTransport, Channel, ChannelStateEvent

__all__ = [
    "ChatSession",
    "SentInput",
    "SessionEvent",
    "generate_message_id",
]

log = get_logger("agent_worker.client")

_ID_ALPHABET = string.ascii_letters + string.digits


def generate_message_id() -> str:
    """A UIMessage id in the AI SDK's ``generateId`` shape (16 alphanumerics)."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(16))


@dataclass(slots=True)
class SentInput:
    """One send of this device (the JS ``ClientRun``): keyed by its trigger's codec-message-id.

    ``run_id`` fills in when the agent's ``ai-run-start`` (or ``-resume``) echoes
    ``input-codec-message-id``; until then a cancel can only name the codec-message-id.
    """

    kind: Literal["message", "regenerate", "edit"]
    codec_message_id: str
    event_id: str
    headers: dict[str, str]
    run_id: str | None = None
    continuation_run_id: str | None = None
    failed: bool = False
    """The agent could not be woken (the invocation POST failed): no run will start."""
    started: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """Something a device shows besides the conversation itself (a notice line)."""

    kind: Literal["connection", "error", "info"]
    text: str


class ChatSession:
    """A device on one session (channel). Not thread-safe; use from one event loop."""

    def __init__(
        self,
        transport: AblyTransport,
        channel_name: str,
        *,
        client_id: str | None,
        agent_url: str | None = None,
        agent_headers: Mapping[str, str] | None = None,
        history_page_size: int = 100,
        codec: str | None = None,
    ) -> None:
        self.transport = transport
        self.channel_name = channel_name
        # The JS client stamps `run-client-id` only for a concrete identity (not anonymous, not `*`).
        self.client_id = client_id if client_id and client_id != "*" else None
        self.agent_url = agent_url
        self._agent_headers = dict(agent_headers or {})
        self._page_size = history_page_size
        # ``codec`` pins the session's codec; by default the session's own messages choose it.
        self.tree = ConversationTree(codec=codec)
        self.authors: dict[str, str] = {}
        """codec-message-id of a user input → who sent it (Ably-verified clientId when present)."""
        self.sent: list[SentInput] = []
        self._pending_starts: dict[str, SentInput] = {}
        self._channel: Channel | None = None
        self._listeners: list[Callable[[], None]] = []
        self._event_listeners: list[Callable[[SessionEvent], None]] = []
        self._hydrated = False
        self._replaying = False
        self._attached_once = False
        self._rehydrate: asyncio.Task[None] | None = None
        self._http: Any = None  # aiohttp.ClientSession, created lazily (only devices that POST need it)
        self.hydrations = 0
        self.tree.on_apply(self._observe)

    # --- lifecycle -----------------------------------------------------------------------------

    @property
    def channel(self) -> Channel:
        if self._channel is None:
            msg = "session is not connected; call await session.connect() first"
            raise RuntimeError(msg)
        return self._channel

    async def connect(self, *, presence_data: Mapping[str, Any] | None = None) -> None:
        """Subscribe before attach (RTL7g), hydrate history, then (optionally) enter presence."""
        channel = self.transport.channel(self.channel_name)
        self._channel = channel
        channel.on_state_change(self._on_channel_state)
        await channel.subscribe(self._on_message)
        self._attached_once = True
        await self.hydrate()
        if presence_data is not None and self.client_id is not None:
            await channel.presence_enter(presence_data)

    async def close(self) -> None:
        if self._rehydrate is not None:
            self._rehydrate.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._rehydrate
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self._channel is not None:
            with contextlib.suppress(TransportError):
                if self.client_id is not None:
                    await asyncio.wait_for(self._channel.presence_leave(), 5)
            with contextlib.suppress(Exception):
                await self.transport.release(self.channel_name)
            self._channel = None

    async def hydrate(self) -> int:
        """Fold the channel's history up to the attach point (newest-first pages, oldest first).

        Returns how many messages were read. Safe to repeat: already-folded versions are dropped.
        """
        channel = self.channel
        pages: list[list[InboundMessage]] = []
        async for page in channel.history_pages(page_size=self._page_size, from_serial=channel.attach_serial):
            pages.append(page)
        count = 0
        # Fold oldest → newest: pages arrive newest-first and each page is newest-first.
        self._replaying = True
        try:
            for page in reversed(pages):
                for msg in reversed(page):
                    self.tree.apply(msg)
                    count += 1
        finally:
            self._replaying = False
        self._hydrated = True
        self.hydrations += 1
        self._notify()
        return count

    # --- listeners -----------------------------------------------------------------------------

    def on_update(self, listener: Callable[[], None]) -> Callable[[], None]:
        """``listener()`` after every change of the folded conversation."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def on_event(self, listener: Callable[[SessionEvent], None]) -> Callable[[], None]:
        """``listener(event)`` for notices: connection changes, agent errors, failed invocations."""
        self._event_listeners.append(listener)
        return lambda: self._event_listeners.remove(listener) if listener in self._event_listeners else None

    def _notify(self) -> None:
        for listener in list(self._listeners):
            listener()

    def _emit(self, kind: Literal["connection", "error", "info"], text: str) -> None:
        for listener in list(self._event_listeners):
            listener(SessionEvent(kind, text))

    # --- inbound -------------------------------------------------------------------------------

    def _on_message(self, msg: InboundMessage) -> None:
        self.tree.apply(msg)
        if self._hydrated:
            self._notify()

    def _observe(self, msg: InboundMessage, result: ApplyResult) -> None:
        """Side tables the tree does not keep: input authors, and own runs' run-ids."""
        if msg.name == AI_INPUT and result.inputs and result.run_id is None:
            cmid = msg.transport_headers.get(H_CODEC_MESSAGE_ID)
            who = msg.client_id or msg.transport_headers.get(H_RUN_CLIENT_ID)
            if cmid and who:
                self.authors[cmid] = who
        ev = result.run_lifecycle
        if ev is None:
            return
        if ev.type in ("start", "resume") and ev.input_codec_message_id is not None:
            pending = self._pending_starts.pop(ev.input_codec_message_id, None)
            if pending is not None:
                pending.run_id = ev.run_id
                pending.started.set()
        # Live only (AIT-CT16a): a history replay must not re-announce old failures.
        if ev.type == "end" and ev.reason == "error" and ev.error is not None and not self._replaying:
            self._emit("error", f"run failed: {ev.error.message} ({ev.error.code})")

    def _on_channel_state(self, change: ChannelStateEvent) -> None:
        lost = ("attaching", "suspended", "detached", "failed")
        if change.current in lost and change.previous == "attached":
            self._emit("connection", f"connection interrupted ({change.current}); reconnecting…")
            return
        if change.current != "attached" or not self._attached_once or not self._hydrated:
            return
        if change.resumed:
            self._emit("connection", "reconnected")
            return
        # Continuity lost: whatever was published while we were away is only in history now.
        self._emit("connection", "reconnected; catching up from history")
        if self._rehydrate is None or self._rehydrate.done():
            self._rehydrate = asyncio.get_running_loop().create_task(self._catch_up())

    async def _catch_up(self) -> None:
        try:
            await self.hydrate()
        except TransportError as exc:
            self._emit("error", f"could not read history after reconnecting: {exc.message}")
        finally:
            self._rehydrate = None

    # --- the visible conversation --------------------------------------------------------------

    def visible_messages(self) -> list[CodecMessage]:
        """The messages of the selected branch (default selection: latest sibling everywhere)."""
        return self.tree.visible_messages()

    def visible_nodes(self) -> list[Node]:
        return self.tree.visible_nodes()

    def active_runs(self) -> list[RunNode]:
        """Visible runs still streaming (or started but not ended), oldest first."""
        return [n for n in self.tree.visible_nodes() if isinstance(n, RunNode) and n.status == "active"]

    def pending_own(self) -> list[SentInput]:
        """Own sends whose run has not started yet, or whose run is still active."""
        out: list[SentInput] = []
        for s in self.sent:
            if s.failed:
                continue
            if s.run_id is None:
                out.append(s)
                continue
            run = self.tree.run(s.run_id)
            if run is not None and run.status == "active":
                out.append(s)
        return out

    # --- outbound ------------------------------------------------------------------------------

    def _last_visible_cmid(self) -> str | None:
        messages = self.visible_messages()
        return messages[-1].codec_message_id if messages else None

    def _predecessor(self, codec_message_id: str) -> str | None:
        """The codec-message-id before ``codec_message_id`` on the visible branch (view.ts
        ``_findParentMsgId``), falling back to the structural parent's tail."""
        visible = self.visible_messages()
        for i, m in enumerate(visible):
            if m.codec_message_id == codec_message_id:
                return visible[i - 1].codec_message_id if i > 0 else None
        node = self.tree.node_by_codec_message_id(codec_message_id)
        if node is None:
            return None
        own = node.messages
        for i, m in enumerate(own):
            if m.codec_message_id == codec_message_id and i > 0:
                return own[i - 1].codec_message_id
        if node.parent is not None:
            parent = self.tree.node_by_codec_message_id(node.parent)
            if parent is not None and parent.messages:
                return parent.messages[-1].codec_message_id
        return None

    async def send_text(self, text: str) -> SentInput:
        """A new user message at the end of the visible branch (``parent`` = its last message)."""
        return await self._send_user_message(text, kind="message", parent=self._last_visible_cmid())

    async def edit(self, codec_message_id: str, text: str) -> SentInput:
        """Replace a user message: ``fork-of`` = it, ``parent`` = its predecessor (view.ts ``edit``)."""
        node = self.tree.node_by_codec_message_id(codec_message_id)
        if not isinstance(node, InputNode):
            msg = f"cannot edit {codec_message_id}: not a user message in this conversation"
            raise ProtocolError(msg, code=40003)
        return await self._send_user_message(
            text, kind="edit", parent=self._predecessor(codec_message_id), fork_of=codec_message_id
        )

    async def regenerate(self, codec_message_id: str | None = None) -> SentInput:
        """Regenerate an assistant message (default: the last one visible) — view.ts ``regenerate``."""
        if codec_message_id is None:
            assistants = [m for m in self.visible_messages() if m.message.get("role") == "assistant"]
            if not assistants:
                msg = "nothing to regenerate: no assistant message yet"
                raise ProtocolError(msg, code=40003)
            codec_message_id = assistants[-1].codec_message_id
        run = self.tree.node_by_codec_message_id(codec_message_id)
        if not isinstance(run, RunNode):
            msg = f"cannot regenerate {codec_message_id}: not an assistant message"
            raise ProtocolError(msg, code=40003)
        parent = self._predecessor(codec_message_id)
        if parent is None:
            msg = f"cannot regenerate {codec_message_id}: no preceding user message"
            raise ProtocolError(msg, code=40003)
        anchor = codec_message_id
        # Regenerating the head of a regenerator run re-answers the same branch point (view.ts).
        if run.regenerates is not None and run.messages and run.messages[0].codec_message_id == anchor:
            anchor = run.regenerates
        headers = build_input_headers(
            codec_message_id=str(uuid.uuid4()),
            event_id=str(uuid.uuid4()),
            run_client_id=self.client_id,
            parent=parent,
            regenerates=anchor,
        )
        sent = SentInput("regenerate", headers["codec-message-id"], headers["event-id"], headers)
        await self._publish([encode_regenerate(headers)], sent)
        return sent

    async def _send_user_message(
        self,
        text: str,
        *,
        kind: Literal["message", "edit"],
        parent: str | None,
        fork_of: str | None = None,
    ) -> SentInput:
        headers = build_input_headers(
            codec_message_id=str(uuid.uuid4()),
            event_id=str(uuid.uuid4()),
            run_client_id=self.client_id,
            parent=parent,
            fork_of=fork_of,
        )
        if self.tree.codecs.adapter_tag == OPENAI_RESPONSES:
            wires = openai_codec.encode_user_message(openai_codec.user_text_message(text), headers)
        else:
            message = {"id": generate_message_id(), "role": "user", "parts": [{"type": "text", "text": text}]}
            wires = encode_user_message(message, headers)
        sent = SentInput(kind, headers["codec-message-id"], headers["event-id"], headers)
        # Optimistic fold (AIT-CT3c): the next send's auto-parent must see this message even before
        # the echo; the echo later promotes the node to its serial without doubling its content.
        if self.client_id is not None:
            self.authors[sent.codec_message_id] = self.client_id
        for wire in wires:
            self.tree.apply(
                InboundMessage(name=wire.name, data=wire.data, extras=wire.extras, client_id=self.client_id)
            )
        try:
            await self._publish(wires, sent)
        except BaseException:
            self._drop_optimistic(sent.codec_message_id)
            raise
        return sent

    def _drop_optimistic(self, codec_message_id: str) -> None:
        """The publish failed: remove the optimistic node unless an echo already gave it a serial."""
        node = self.tree.node_by_codec_message_id(codec_message_id)
        if isinstance(node, InputNode) and node.serial is None:
            self.tree.delete(codec_message_id)
            self.authors.pop(codec_message_id, None)
            self._notify()

    async def _publish(self, wires: list[OutboundMessage], sent: SentInput) -> None:
        self._pending_starts[sent.codec_message_id] = sent
        try:
            await self.channel.publish_batch(wires)
        except BaseException:
            self._pending_starts.pop(sent.codec_message_id, None)
            raise
        self.sent.append(sent)
        self._notify()

    async def invoke(self, sent: SentInput, body: Mapping[str, Any] | None = None) -> int:
        """POST the invocation (``{...body, inputEventId, sessionName}``) to the agent; returns the
        HTTP status. The SDK's two fields win over ``body`` (chat-transport.ts)."""
        if self.agent_url is None:
            msg = "no agent URL configured (pass --agent-url)"
            raise TransportError(msg, code=104005)
        import aiohttp  # noqa: PLC0415 - only devices that wake an agent need an HTTP client

        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        payload = {**(body or {}), "inputEventId": sent.event_id, "sessionName": self.channel_name}
        headers = {"Content-Type": "application/json", **self._agent_headers}
        try:
            async with self._http.post(self.agent_url, json=payload, headers=headers) as resp:
                await resp.read()
                status: int = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            sent.failed = True
            self._notify()
            msg = f"could not wake the agent: POST {self.agent_url} failed ({exc}); is it running?"
            raise TransportError(msg, code=104005) from exc
        if not 200 <= status < 300:
            sent.failed = True
            self._notify()
            msg = f"could not wake the agent: POST {self.agent_url} returned HTTP {status}"
            raise TransportError(msg, code=104005, status_code=status)
        return status

    async def cancel_sent(self, sent: SentInput) -> None:
        """``ClientRun.cancel()``: keyed by the trigger's codec-message-id (+ run-id for a continuation)."""
        headers = build_cancel_headers(
            event_id=str(uuid.uuid4()),
            run_id=sent.continuation_run_id,
            input_codec_message_id=sent.codec_message_id,
        )
        await self.channel.publish(cancel_message(headers))

    async def cancel_run(self, run_id: str) -> None:
        """``ClientSession.cancel(runId)``: any run on the session, by run-id only."""
        headers = build_cancel_headers(event_id=str(uuid.uuid4()), run_id=run_id)
        await self.channel.publish(cancel_message(headers))

    async def cancel_active(self) -> str | None:
        """Cancel what ``/stop`` means: this device's newest unfinished send, else the newest active
        visible run. Returns a description of what was cancelled, or None if nothing was running."""
        own = self.pending_own()
        if own:
            target = own[-1]
            await self.cancel_sent(target)
            return "your run" if target.run_id else "your pending request"
        runs = self.active_runs()
        if runs:
            run = runs[-1]
            await self.cancel_run(run.run_id)
            owner = run.client_id or "anonymous"
            if owner == self.client_id:
                return "your run"
            # The worker's default policy lets only the owner (or an admin) cancel.
            return f"{owner}'s run; the agent may refuse a cancel from another user"
        return None

    async def who(self) -> list[str]:
        """Client ids present on the session (presence; the worker enters too when enabled)."""
        sdk_channel = self.transport.client.channels.get(self.channel_name)
        try:
            members = await asyncio.wait_for(sdk_channel.presence.get(), 10)
        except Exception as exc:  # presence errors come from the SDK; translate here
            msg = f"presence on {self.channel_name} failed: {exc}"
            raise TransportError(msg) from exc
        return sorted({m.client_id for m in members if getattr(m, "client_id", None)})
