"""Test helpers for your agent: a real embedded server, a real worker, a real client — in-process.

::

    from agent_worker.testing import AgentTester, ScriptedProvider

    async def test_my_agent() -> None:
        async with AgentTester(my_agent) as tester:
            reply = await tester.ask("where is order 42?")
        assert "shipped" in reply.text

Nothing is patched: the agent runs in a :class:`~agent_worker.Worker` connected through ably-python
to the embedded Ably-compatible server, and the question is published as the official client does.
Use :class:`ScriptedProvider` (a model you script) or :class:`EchoProvider` to stay deterministic.
For a bare server in pytest, ``pytest_plugins = ["agent_worker.pytest_plugin"]`` gives the
``ably_server`` fixture.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from ably.types.message import Message

from agent_worker.config import AblyConfig, Config, WorkerConfig
from agent_worker.protocol.headers import build_input_headers
from agent_worker.protocol.tree import ConversationTree
from agent_worker.protocol.vercel.encoder import encode_user_message
from agent_worker.providers.echo import EchoProvider, ScriptedProvider
from agent_worker.runtime.handler import RunHandler
from agent_worker.server import EmbeddedServer, ServerConfig
from agent_worker.server.testing import python_realtime
from agent_worker.transport.ably import AblySettings, to_inbound
from agent_worker.worker.service import Worker

__all__ = ["AgentTester", "EchoProvider", "Reply", "ScriptedProvider", "embedded_server"]

TERMINAL = frozenset({"complete", "cancelled", "error", "suspended"})


def embedded_server(**options: Any) -> EmbeddedServer:
    """An embedded server on a free 127.0.0.1 port (``async with embedded_server() as server:``)."""
    return EmbeddedServer(ServerConfig(port=0, **options))


@dataclass(frozen=True, slots=True)
class Reply:
    """What the client saw of one run."""

    run_id: str
    status: str
    """``complete``, ``cancelled``, ``error`` or ``suspended``."""
    parts: list[dict[str, Any]] = field(default_factory=list)
    """The assistant message parts (AI SDK UIMessage parts: text, reasoning, tool-*)."""

    @property
    def text(self) -> str:
        return "".join(str(p.get("text", "")) for p in self.parts if p.get("type") == "text")


class AgentTester:
    """Serve ``agent`` (an ``Agent`` or any run handler) on an in-process embedded server and ask it
    questions as a user of one session would."""

    def __init__(
        self,
        agent: RunHandler,
        *,
        session: str = "conversations:test",
        client_id: str = "user",
        config: WorkerConfig | None = None,
    ) -> None:
        self.agent = agent
        self.session = session
        self.client_id = client_id
        self.config = config or WorkerConfig(coalesce_window_ms=0.0, presence=False, trigger_wait_s=2.0)
        self.server: EmbeddedServer | None = None
        self.worker: Worker | None = None
        self.tree = ConversationTree()
        self._realtime: Any = None
        self._changed = asyncio.Event()

    async def __aenter__(self) -> AgentTester:
        server = await embedded_server().start()
        self.server = server

        async def token() -> dict[str, Any]:
            details: dict[str, Any] = server.token_details(client_id="agent-worker")
            return details

        settings = AblySettings(
            endpoint=f"{server.host}:{server.port}",
            token_source=token,
            tls=False,
            client_id="agent-worker",
            echo_messages=AblyConfig().echo_messages,
        )
        self.worker = Worker(self.agent, config=Config(worker=self.config), transport=settings)
        await self.worker.start()
        self._realtime = python_realtime(server, client_id=self.client_id)
        channel = self._realtime.channels.get(self.session)
        await channel.subscribe(self._on_message)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._realtime is not None:
            await self._realtime.close()
        if self.worker is not None:
            await self.worker.close(drain_timeout_s=5)
        if self.server is not None:
            await self.server.stop()

    def _on_message(self, msg: Message) -> None:
        self.tree.apply(to_inbound(msg))
        self._changed.set()

    async def ask(self, text: str, *, timeout_s: float = 30.0) -> Reply:
        """Publish ``text`` as the user's next message, invoke the worker, and wait for the run's end."""
        if self.worker is None:
            msg = "use the tester inside 'async with AgentTester(agent) as tester:'"
            raise RuntimeError(msg)
        visible = self.tree.visible_messages()
        cmid, event_id = str(uuid.uuid4()), str(uuid.uuid4())
        headers = build_input_headers(
            codec_message_id=cmid,
            event_id=event_id,
            run_client_id=self.client_id,
            parent=visible[-1].codec_message_id if visible else None,
        )
        message = {"id": cmid, "role": "user", "parts": [{"type": "text", "text": text}]}
        wires = encode_user_message(message, headers)
        channel = self._realtime.channels.get(self.session)
        await channel.publish([Message(name=m.name, data=m.data, extras=m.extras) for m in wires])
        invocation = await self.worker.invoke(self.session, event_id)
        async with asyncio.timeout(timeout_s):
            while True:
                node = self.tree.run(invocation.run_id)
                if node is not None and node.status in TERMINAL:
                    parts = [p for cm in node.messages for p in cm.message.get("parts", [])]
                    return Reply(invocation.run_id, node.status, parts)
                self._changed.clear()
                await self._changed.wait()
