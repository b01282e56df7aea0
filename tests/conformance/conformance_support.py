"""Conformance harness: the official JS client (Node) against this worker on the embedded server.

pytest owns the embedded server, a real :class:`Worker` (with its HTTP app) and a
:class:`ScriptedProvider` whose script the test writes. The Node side
(``tests/js/conformance/scenarios.mjs <scenario>``) drives ``@ably/ai-transport`` 0.8.0
(ClientSession + Vercel ChatTransport + the AI SDK's useChat engine) and prints what its devices
folded. Pacing is deterministic, never timed: the provider script waits on named *gates* that the
Node script opens with ``ctl({op: "open", gate})`` once it has observed what it needs (e.g. text
mid-stream), and the script can wait for provider-side events (``ctl({op: "wait", event})``), e.g.
"the provider stream was closed".
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from agent_worker.agent import Agent
from agent_worker.config import HttpConfig, WorkerConfig
from agent_worker.protocol.model import (
    AssistantMessage,
    ModelMessage,
    TextPart,
    ToolMessage,
    UserMessage,
)
from agent_worker.providers.base import ModelRequest, StreamEvent
from agent_worker.providers.echo import ScriptedProvider
from agent_worker.runtime.run import Run
from agent_worker.server import EmbeddedServer
from agent_worker.tools.registry import ToolRegistry
from agent_worker.transport.ably import AblySettings
from agent_worker.worker.http import serve
from agent_worker.worker.service import Worker
from tests.node_support import JS_ROOT, node_config, run_node_async

__all__ = ["JS_ROOT", "Conductor", "Script", "Stack", "last_user_text", "start_stack", "transcript"]

SCENARIOS = JS_ROOT / "conformance" / "scenarios.mjs"
CLIENT_CAPABILITY = {"conversations:*": ["publish", "subscribe", "history", "presence"]}

Script = Callable[[ModelRequest], AsyncIterator[StreamEvent | str]]


class Conductor:
    """Named gates the provider script awaits and events it records; both reachable from Node."""

    def __init__(self) -> None:
        self._gates: dict[str, asyncio.Event] = {}
        self._events: dict[str, asyncio.Event] = {}
        self.log: list[str] = []
        self.metric: Callable[[str, dict[str, str]], float | None] | None = None
        self.server: EmbeddedServer | None = None
        self.gate_urls: list[str] = []
        """Reference agents whose scripted model also waits on gates (``POST {url}/<gate>``)."""

    def _gate(self, name: str) -> asyncio.Event:
        return self._gates.setdefault(name, asyncio.Event())

    def open(self, name: str) -> None:
        self._gate(name).set()

    def reset_gates(self) -> None:
        """Close every gate again (the same scenario runs once more, e.g. against a reference)."""
        self._gates.clear()

    async def gate(self, name: str, limit_s: float = 60.0) -> None:
        """Blocks the provider until the test (or Node) opens ``name``; cancellable."""
        async with asyncio.timeout(limit_s):
            await self._gate(name).wait()

    def record(self, event: str) -> None:
        self.log.append(event)
        self._events.setdefault(event, asyncio.Event()).set()

    async def wait(self, event: str, limit_s: float = 20.0) -> None:
        async with asyncio.timeout(limit_s):
            await self._events.setdefault(event, asyncio.Event()).wait()

    async def _wait_metric(self, request: dict[str, Any]) -> Any:
        """Polls a worker metric until it reaches ``atLeast`` (how Node learns a cancel was decided)."""
        assert self.metric is not None
        name, labels = str(request["name"]), dict(request.get("labels") or {})
        target = float(request.get("atLeast", 1))
        try:
            async with asyncio.timeout(float(request.get("limit_s", 20.0))):
                # A Prometheus counter has no change notification; poll it.
                while (self.metric(name, labels) or 0.0) < target:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
        except TimeoutError:
            return {"ok": False, "value": self.metric(name, labels)}
        return {"ok": True, "value": self.metric(name, labels)}

    async def handle(self, request: dict[str, Any]) -> Any:
        """The ``on_control`` handler for the Node script."""
        op = request.get("op")
        if op == "open":
            self.open(str(request["gate"]))
            for url in self.gate_urls:
                await http_post(f"{url}/{request['gate']}", {})
            return {"ok": True}
        if op == "wait":
            try:
                await self.wait(str(request["event"]), float(request.get("limit_s", 20.0)))
            except TimeoutError:
                return {"ok": False, "log": self.log}
            return {"ok": True}
        if op == "log":
            return {"ok": True, "log": self.log}
        if op == "drop" and self.server is not None:
            # Abrupt socket close; the SDKs resume the connection (state kept by the server).
            resume = bool(request.get("resume", True))
            return {
                "ok": True,
                "dropped": self.server.drop_connections(request.get("clientId"), resume=resume),
            }
        if op == "withhold_acks" and self.server is not None:
            return {"ok": True, "held": self.server.withhold_acks(str(request["clientId"]))}
        if op == "refuse_appends" and self.server is not None:
            return {"ok": True, "armed": self.server.refuse_appends(str(request["clientId"]))}
        if op == "metric" and self.metric is not None:
            return await self._wait_metric(request)
        return {"ok": False, "error": f"unknown op {op!r}"}


@dataclass
class Stack:
    """One embedded server + one worker + one scripted provider (+ HTTP endpoint)."""

    server: EmbeddedServer
    worker: Worker
    provider: ScriptedProvider
    conductor: Conductor
    url: str
    runner: Any
    extra: dict[str, Any] = field(default_factory=dict)

    async def close(self) -> None:
        await self.runner.cleanup()
        await self.worker.close(drain_timeout_s=5)

    async def scenario(
        self,
        name: str,
        *,
        protocol: str = "msgpack",
        clients: tuple[str, ...] = ("alice",),
        timeout: float = 90.0,  # noqa: ASYNC109 - bounds the Node child process
        api: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Runs ``scenarios.mjs name`` on a fresh session against this worker (or the agent at
        ``api``); returns its result object."""
        session = f"conversations:{name}-{uuid.uuid4().hex[:8]}"
        tokens = {
            cid: self.server.mint_token(client_id=cid, capability=CLIENT_CAPABILITY, ttl_s=600)
            for cid in clients
        }
        env = node_config(
            host="127.0.0.1",
            port=self.server.port,
            protocol=protocol,
            session=session,
            api=api or self.url,
            tokens=tokens,
            **extra,
        )
        result: dict[str, Any] = await run_node_async(
            SCENARIOS, name, env=env, timeout=timeout, on_control=self.conductor.handle
        )
        result["session"] = session
        return result


def worker_settings(server: EmbeddedServer, client_id: str = "agent-worker") -> AblySettings:
    async def token() -> dict[str, Any]:
        return server.token_details(client_id=client_id)

    return AblySettings(
        endpoint=server.endpoint,
        token_source=token,
        tls=False,
        client_id=client_id,
        max_messages_per_second=1000.0,
        burst=100,
        echo_messages=False,  # as the worker ships
    )


async def start_stack(
    server: EmbeddedServer,
    script: Script,
    conductor: Conductor,
    *,
    tools: ToolRegistry | None = None,
    **config: Any,
) -> Stack:
    config.setdefault("coalesce_window_ms", 0.0)
    config.setdefault("trigger_wait_s", 2.0)
    config.setdefault("presence", False)
    provider = ScriptedProvider(script)

    def on_run_start(run: Run) -> None:
        # Lets Node wait until the worker has folded a steer before it releases the first pass.
        run.on_steer = lambda: conductor.record("steered")

    worker = Worker(
        transport=worker_settings(server),
        agent=Agent(provider, tools=tools or ToolRegistry()),
        config=WorkerConfig(**config),
        on_run_start=on_run_start,
    )
    conductor.metric = worker.metrics.registry.get_sample_value
    conductor.server = server
    await worker.start()
    http_config = HttpConfig(port=0)
    runner = await serve(worker, http_config, port=0)
    host, port = runner.addresses[0][:2]
    return Stack(server, worker, provider, conductor, f"http://{host}:{port}{http_config.path}", runner)


# --- prompt helpers --------------------------------------------------------------------------------


def text_of(message: ModelMessage) -> str:
    parts = getattr(message, "parts", ())
    return "".join(p.text for p in parts if isinstance(p, TextPart))


def last_user_text(request: ModelRequest) -> str:
    for message in reversed(request.messages):
        if isinstance(message, UserMessage):
            return text_of(message)
    return ""


def transcript(request: ModelRequest) -> list[tuple[str, str]]:
    """The prompt as (role, text) pairs; tool messages as ("tool", <outputs>)."""
    out: list[tuple[str, str]] = []
    for message in request.messages:
        if isinstance(message, UserMessage):
            out.append(("user", text_of(message)))
        elif isinstance(message, AssistantMessage):
            out.append(("assistant", text_of(message)))
        elif isinstance(message, ToolMessage):
            out.append(("tool", repr([p.output for p in message.parts])))
        else:
            out.append((type(message).__name__, ""))
    return out


async def http_post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.post(url, json=body) as resp:
        return resp.status, await resp.json(content_type=None)
