"""Test support for the runtime/worker suites: a Python "chat client" on the embedded server.

The client speaks the wire protocol through the protocol layer's input encoders and the official
ably-python SDK, folds everything it receives into a :class:`ConversationTree`, and offers small
waits on what arrived. A worker harness starts a real :class:`Worker` (with its HTTP app) on the same
server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from ably.types.message import Message

from agent_worker.agent import Agent
from agent_worker.config import Config, EngineConfig, HttpConfig, WorkerConfig
from agent_worker.protocol import openai as openai_codec
from agent_worker.protocol.codecs import OPENAI_RESPONSES
from agent_worker.protocol.headers import (
    AI_RUN_END,
    AI_RUN_START,
    build_cancel_headers,
    build_input_headers,
    cancel_message,
)
from agent_worker.protocol.tree import ConversationTree, RunNode
from agent_worker.protocol.vercel.encoder import (
    encode_regenerate,
    encode_tool_approval_response,
    encode_tool_result,
    encode_user_message,
)
from agent_worker.protocol.wire import InboundMessage, OutboundMessage
from agent_worker.providers.base import ModelRequest, StreamEvent
from agent_worker.providers.echo import Script
from agent_worker.server import EmbeddedServer
from agent_worker.server.testing import python_realtime
from agent_worker.tools.registry import ToolRegistry
from agent_worker.transport.ably import AblySettings, AblyTransport, Channel, to_inbound
from agent_worker.worker.http import serve
from agent_worker.worker.service import Worker


@dataclass(frozen=True)
class Sent:
    codec_message_id: str
    event_id: str


def _sdk(msg: OutboundMessage) -> Message:
    return Message(name=msg.name, data=msg.data, extras=msg.extras)


class ChatClient:
    """One user (Ably clientId) on one session channel."""

    def __init__(
        self,
        server: EmbeddedServer,
        session: str,
        client_id: str | None = "user-abc",
        *,
        codec: str | None = None,
    ) -> None:
        self.codec = codec
        """``openai-responses`` makes this a ResponsesCodec client; default: Vercel UIMessages."""
        self.server = server
        self.session = session
        self.client_id = client_id
        self.realtime = python_realtime(server, client_id=client_id)
        self.channel = self.realtime.channels.get(session)
        self.messages: list[InboundMessage] = []
        self.tree = ConversationTree(codec=codec)
        self._changed = asyncio.Event()

    async def connect(self) -> ChatClient:
        await self.channel.subscribe(self._on_message)
        return self

    async def close(self) -> None:
        await self.realtime.close()

    def _on_message(self, msg: Message) -> None:
        inbound = to_inbound(msg)
        self.messages.append(inbound)
        self.tree.apply(inbound)
        self._changed.set()

    # --- sending ---------------------------------------------------------------------------------

    def last_visible(self) -> str | None:
        msgs = self.tree.visible_messages()
        return msgs[-1].codec_message_id if msgs else None

    async def send_text(
        self,
        text: str,
        *,
        parent: str | object | None = ...,
        fork_of: str | None = None,
        run_id: str | None = None,
        event_id: str | None = None,
    ) -> Sent:
        cmid, eid = str(uuid.uuid4()), event_id or str(uuid.uuid4())
        resolved_parent = self.last_visible() if parent is ... else parent
        headers = build_input_headers(
            codec_message_id=cmid,
            event_id=eid,
            run_id=run_id,
            run_client_id=self.client_id,
            parent=None if run_id is not None else resolved_parent,  # type: ignore[arg-type]
            fork_of=fork_of,
        )
        if self.codec == OPENAI_RESPONSES:
            batch = openai_codec.encode_user_message(openai_codec.user_text_message(text), headers)
        else:
            message = {"id": f"ui-{cmid[:8]}", "role": "user", "parts": [{"type": "text", "text": text}]}
            batch = encode_user_message(message, headers)
        await self.channel.publish([_sdk(m) for m in batch])
        return Sent(cmid, eid)

    async def send_raw(self, name: str, data: Any, extras: dict[str, Any] | None, encoding: str = "") -> None:
        await self.channel.publish(Message(name=name, data=data, extras=extras, encoding=encoding))

    async def regenerate(self, target: str, parent: str | None) -> Sent:
        cmid, eid = str(uuid.uuid4()), str(uuid.uuid4())
        headers = build_input_headers(
            codec_message_id=cmid,
            event_id=eid,
            run_client_id=self.client_id,
            parent=parent,
            regenerates=target,
        )
        await self.channel.publish(_sdk(encode_regenerate(headers)))
        return Sent(cmid, eid)

    async def approve(self, run_id: str, assistant_cmid: str, tool_call_id: str, approved: bool) -> Sent:
        eid = str(uuid.uuid4())
        headers = build_input_headers(
            codec_message_id=assistant_cmid, event_id=eid, run_id=run_id, run_client_id=self.client_id
        )
        encode = (
            openai_codec.encode_tool_approval_response
            if self.codec == OPENAI_RESPONSES
            else encode_tool_approval_response
        )
        await self.channel.publish(_sdk(encode(tool_call_id, approved, headers)))
        return Sent(assistant_cmid, eid)

    async def tool_result_fork(
        self,
        *,
        suspended_run: str,
        parent: str,
        tool_call_id: str,
        output: Any,
        seed: Sequence[dict[str, Any]],
    ) -> Sent:
        """A client tool result as the Vercel ChatTransport sends it: a run-less fork with a seed."""
        eid = str(uuid.uuid4())
        holder = str(uuid.uuid4())
        seeded = [{"codecMessageId": str(uuid.uuid4()), "message": m} for m in seed[:-1]]
        fork_seed = {"messages": [*seeded, {"codecMessageId": holder, "message": seed[-1]}]}
        headers = build_input_headers(
            codec_message_id=holder,
            event_id=eid,
            role="assistant",
            run_client_id=self.client_id,
            parent=parent,
            supersedes=suspended_run,
        )
        await self.channel.publish(
            _sdk(encode_tool_result(tool_call_id, output, headers, fork_seed=fork_seed))
        )
        return Sent(holder, eid)

    async def cancel(self, *, run_id: str | None = None, input_cmid: str | None = None) -> None:
        headers = build_cancel_headers(
            event_id=str(uuid.uuid4()), run_id=run_id, input_codec_message_id=input_cmid
        )
        await self.channel.publish(_sdk(cancel_message(headers)))

    # --- reading ---------------------------------------------------------------------------------

    async def wait_for(self, predicate: Callable[[], Any], wait_s: float = 15.0) -> Any:
        async with asyncio.timeout(wait_s):
            while True:
                value = predicate()
                if value:
                    return value
                self._changed.clear()
                await self._changed.wait()

    def named(self, name: str) -> list[InboundMessage]:
        return [m for m in self.messages if m.name == name]

    def for_input(self, name: str, input_cmid: str) -> list[InboundMessage]:
        return [
            m for m in self.named(name) if m.transport_headers.get("input-codec-message-id") == input_cmid
        ]

    async def run_end_for(self, input_cmid: str, wait_s: float = 15.0) -> InboundMessage:
        ends: list[InboundMessage] = await self.wait_for(
            lambda: self.for_input(AI_RUN_END, input_cmid), wait_s
        )
        return ends[0]

    def run_id_for(self, input_cmid: str) -> str | None:
        for name in (AI_RUN_START, "ai-run-resume"):
            found = self.for_input(name, input_cmid)
            if found:
                return found[0].transport_headers["run-id"]
        return None

    def run_node(self, run_id: str) -> RunNode | None:
        return self.tree.run(run_id)

    def run_text(self, run_id: str) -> str:
        node = self.tree.run(run_id)
        if node is None:
            return ""
        out = []
        for cm in node.messages:
            for part in cm.message.get("parts", []):
                if part.get("type") == "text":
                    out.append(part.get("text", ""))
            for item in cm.message.get("items", []):  # openai-responses: output_text of message items
                if item.get("type") == "message":
                    out.extend(
                        p.get("text", "") for p in item.get("content", []) if p.get("type") == "output_text"
                    )
        return "".join(out)

    def run_items(self, run_id: str) -> list[dict[str, Any]]:
        """An openai-responses run's folded Responses items, in order."""
        node = self.tree.run(run_id)
        return [i for cm in node.messages for i in cm.message.get("items", [])] if node else []

    def run_parts(self, run_id: str) -> list[dict[str, Any]]:
        node = self.tree.run(run_id)
        return [p for cm in node.messages for p in cm.message.get("parts", [])] if node else []

    def run_wires(self, run_id: str) -> list[InboundMessage]:
        return [m for m in self.messages if m.transport_headers.get("run-id") == run_id]


@dataclass
class Harness:
    worker: Worker
    url: str
    http: aiohttp.ClientSession
    runner: Any
    extra: dict[str, Any] = field(default_factory=dict)

    async def invoke(
        self, session: str, event_id: str, *, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        async with self.http.post(
            self.url, json={"inputEventId": event_id, "sessionName": session}, headers=headers
        ) as resp:
            try:
                body = await resp.json(content_type=None)
            except ValueError:
                body = None
            self.extra["last_headers"] = dict(resp.headers)
            return resp.status, body

    async def close(self) -> None:
        await self.runner.cleanup()
        await self.worker.close(drain_timeout_s=5)
        await self.http.close()


def worker_settings(
    server: EmbeddedServer,
    *,
    client_id: str = "agent-worker",
    rate: float = 45.0,
    connections: int = 1,
    append_rollup_window_ms: int | None = None,
    echo_messages: bool = False,
) -> AblySettings:
    """The worker's transport settings (echo off by default, as the worker ships)."""

    async def token() -> dict[str, Any]:
        return server.token_details(client_id=client_id)

    return AblySettings(
        endpoint=f"{server.host}:{server.port}",
        token_source=token,
        tls=False,
        client_id=client_id,
        max_messages_per_second=rate,
        connections=connections,
        append_rollup_window_ms=append_rollup_window_ms,
        echo_messages=echo_messages,
    )


async def start_harness(
    server: EmbeddedServer,
    provider: Any,
    *,
    tools: ToolRegistry | None = None,
    http: HttpConfig | None = None,
    rate: float = 1000.0,
    connections: int = 1,
    append_rollup_window_ms: int | None = None,
    token_key: str | None = None,
    system_prompt: str | None = None,
    worker_kwargs: dict[str, Any] | None = None,
    engine: EngineConfig | None = None,
    echo_messages: bool = False,
    **config: Any,
) -> Harness:
    config.setdefault("coalesce_window_ms", 0.0)
    config.setdefault("trigger_wait_s", 1.0)
    worker = Worker(
        transport=worker_settings(
            server,
            rate=rate,
            connections=connections,
            append_rollup_window_ms=append_rollup_window_ms,
            echo_messages=echo_messages,
        ),
        agent=Agent(provider, tools=tools or ToolRegistry(), system_prompt=system_prompt),
        config=Config(worker=WorkerConfig(**config), engine=engine or EngineConfig()),
        **(worker_kwargs or {}),
    )
    await worker.start()
    http_config = http or HttpConfig(port=0)
    runner = await serve(worker, http_config, port=0, token_key=token_key)
    host, port = runner.addresses[0][:2]
    url = f"http://{host}:{port}{http_config.path}"
    return Harness(worker, url, aiohttp.ClientSession(), runner)


class SdkNacks(logging.Handler):
    """Counts the NACKs the worker's ably-python has handled (it logs each in
    ``ConnectionManager.on_nack``, just before failing the message), so a scripted model can go on
    once the worker has seen the refusal, not merely the server has sent it."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0
        self._changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("ConnectionManager.on_nack"):
            self.count += 1
            self._changed.set()

    async def wait(self, count: int = 1, limit_s: float = 30.0) -> None:
        async with asyncio.timeout(limit_s):
            while self.count < count:
                self._changed.clear()
                await self._changed.wait()
        for _ in range(3):  # the failed send's task finishes on the next loop turns
            await asyncio.sleep(0)


@contextlib.contextmanager
def sdk_nacks() -> Iterator[SdkNacks]:
    logger = logging.getLogger("ably.realtime.connectionmanager")
    handler = SdkNacks()
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def gated_script(*steps: str | asyncio.Event, only_for: str | None = None) -> Script:
    """A model script that yields the ``str`` steps as text deltas and, at each ``Event`` step, waits
    for it: a test holds the model between words while it acts on the transport. With ``only_for``,
    a request whose last message is not that text gets a plain "ok" (the other turns of the test)."""

    async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
        if only_for is not None and request.messages[-1].text != only_for:  # type: ignore[union-attr]
            yield "ok"
            return
        for step in steps:
            if isinstance(step, asyncio.Event):
                await step.wait()
            else:
                yield step

    return script


@contextlib.asynccontextmanager
async def fresh_channel(server: EmbeddedServer, prefix: str) -> AsyncIterator[Channel]:
    """A new ``conversations:<prefix>-…`` channel on a connected worker transport with server-side
    rollup off and the rate limiter out of the way (each append is checked as sent)."""
    transport = AblyTransport(worker_settings(server, rate=1000.0, append_rollup_window_ms=0))
    await transport.connect()
    try:
        yield transport.channel(f"conversations:{prefix}-{uuid.uuid4().hex[:8]}")
    finally:
        await transport.close()
