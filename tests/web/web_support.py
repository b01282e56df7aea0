"""Browser-test support: chromium via Playwright, an in-process worker with a scripted provider, and
helpers that read the page through its documented ``data-testid`` hooks (docs/web.md).

The provider's pacing is deterministic, never timed: a prompt ``gated <name>`` streams
:data:`FIRST`, then waits until the test opens gate ``<name>``, then streams :data:`SECOND`.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from playwright.async_api import Browser, BrowserContext, Page, expect

from agent_worker.agent import Agent
from agent_worker.config import HttpConfig, WorkerConfig
from agent_worker.protocol.model import ToolMessage
from agent_worker.providers.base import ModelRequest, StreamEvent, ToolCallEnd
from agent_worker.providers.echo import ScriptedProvider, latest_user_text
from agent_worker.server import EmbeddedServer
from agent_worker.tools.base import Tool
from agent_worker.tools.builtin import get_client_location, send_notification
from agent_worker.tools.registry import ToolRegistry
from agent_worker.transport.ably import AblySettings
from agent_worker.web import WebSettings
from agent_worker.worker.http import serve
from agent_worker.worker.service import Worker

CHROMIUM = "/usr/bin/chromium"
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("AGENT_WORKER_ARTIFACTS", REPO / "tmp" / "artifacts")) / "web"
WAIT_MS = 30_000

FIRST = ("Once", " upon", " a", " time", " there", " was")
SECOND = (" a", " worker", " that", " streamed", " into", " every", " tab.")
FULL = "".join(FIRST + SECOND)
PARTIAL = "".join(FIRST)

expect.set_options(timeout=WAIT_MS)


async def launch(playwright: Any) -> Browser:
    browser: Browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    return browser


class Gates:
    """Named events the provider script waits on; the test opens them."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self.closed: list[str] = []

    def _event(self, name: str) -> asyncio.Event:
        return self._events.setdefault(name, asyncio.Event())

    def open(self, name: str) -> None:
        self._event(name).set()

    async def wait(self, name: str) -> None:
        async with asyncio.timeout(120):
            await self._event(name).wait()


def _tool_outputs(request: ModelRequest) -> list[Any]:
    return [p.output for m in request.messages if isinstance(m, ToolMessage) for p in m.parts]


def make_script(gates: Gates) -> Any:
    """The module's one provider: behaviour chosen by the prompt (see the module docstring)."""
    answers = 0

    async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
        nonlocal answers
        text = latest_user_text(request)
        outputs = _tool_outputs(request)
        if text.startswith("gated "):
            gate = text.split()[1]
            try:
                for token in FIRST:
                    yield token
                await gates.wait(gate)
                for token in SECOND:
                    yield token
            except (asyncio.CancelledError, GeneratorExit):
                gates.closed.append(gate)
                raise
        elif text.startswith("where am i"):
            if not outputs:
                yield ToolCallEnd(f"call_{uuid.uuid4().hex[:8]}", "get_client_location", "{}")
                return
            where = outputs[-1]
            yield f"You are at {where['latitude']:.2f}, {where['longitude']:.2f}."
        elif text.startswith("notify "):
            if not outputs:
                yield "Asking first."
                message = text.removeprefix("notify ")
                yield ToolCallEnd(
                    f"call_{uuid.uuid4().hex[:8]}", "send_notification", f'{{"message":"{message}"}}'
                )
                return
            yield f" Done: {outputs[-1]}"
        else:
            answers += 1
            for word in f"Answer {answers}: {text}".split(" "):
                yield word + " "

    return script


@dataclass
class WebStack:
    """One embedded server + one worker (scripted provider) whose HTTP app serves the web client."""

    server: EmbeddedServer
    worker: Worker
    provider: ScriptedProvider
    gates: Gates
    runner: Any
    base: str
    contexts: list[BrowserContext] = field(default_factory=list)

    async def close(self) -> None:
        await self.runner.cleanup()
        await self.worker.close(drain_timeout_s=5)

    def refused_cancels(self) -> float:
        """The worker's ``agent_worker_cancels_total{decision="refused"}`` (how a test knows)."""
        value = self.worker.metrics.registry.get_sample_value(
            "agent_worker_cancels_total", {"decision": "refused"}
        )
        return value or 0.0


def agent_settings(server: EmbeddedServer) -> AblySettings:
    """The worker's connection to ``server`` (token auth as ``agent-worker``)."""

    async def token() -> dict[str, Any]:
        details: dict[str, Any] = server.token_details(client_id="agent-worker")
        return details

    return AblySettings(endpoint=server.endpoint, token_source=token, tls=False, client_id="agent-worker")


async def start_stack(server: EmbeddedServer) -> WebStack:
    gates = Gates()
    provider = ScriptedProvider(make_script(gates))
    tools = ToolRegistry(
        [
            Tool.from_function(get_client_location, client_side=True),
            Tool.from_function(send_notification, requires_approval=True),
        ]
    )

    worker = Worker(
        transport=agent_settings(server),
        agent=Agent(provider, tools=tools),
        config=WorkerConfig(coalesce_window_ms=0.0, trigger_wait_s=5.0),
    )
    await worker.start()
    web_client = WebSettings(ably_host=server.host, ably_port=server.port, tls=False)
    http = HttpConfig(port=0, dev_token_endpoint=True)
    runner = await serve(worker, http, port=0, token_key=server.default_key, web_client=web_client)
    host, port = runner.addresses[0][:2]
    return WebStack(server, worker, provider, gates, runner, f"http://{host}:{port}")


def new_session(name: str) -> str:
    return f"conversations:{name}-{uuid.uuid4().hex[:6]}"


async def open_tab(
    browser: Browser, stack: WebStack, client_id: str, session: str, **context_options: Any
) -> Page:
    """A new browser context (one device) on ``session`` as ``client_id``, connected with its
    history loaded."""
    context = await browser.new_context(viewport={"width": 1000, "height": 640}, **context_options)
    stack.contexts.append(context)
    page = await context.new_page()
    await page.goto(f"{stack.base}/?clientId={quote(client_id)}&session={quote(session)}")
    await ready(page)
    return page


async def ready(page: Page) -> None:
    await expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "connected")
    await expect(page.get_by_test_id("conversation")).to_have_attribute("data-history", "complete")


async def send(page: Page, text: str) -> None:
    await page.get_by_test_id("prompt").fill(text)
    await page.get_by_test_id("send").click()


async def messages(page: Page) -> list[tuple[str, str, str]]:
    """``(role, data-client-id, text)`` of every rendered message, in order."""
    rows: list[list[str]] = await page.eval_on_selector_all(
        "[data-testid=message]",
        """els => els.map(e => [e.dataset.role, e.dataset.clientId,
            e.querySelector('[data-testid=message-text]')?.textContent ?? ''])""",
    )
    return [(r[0], r[1], r[2]) for r in rows]


def last_reply(page: Page) -> Any:
    return page.locator("[data-testid=message][data-role=assistant] [data-testid=message-text]").last


def run_status(page: Page) -> Any:
    return page.get_by_test_id("run-status").last


async def snapshot(page: Page, scenario: str, device: str) -> Path:
    """Saves a screenshot of ``page`` as this scenario's artifact; returns its path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{scenario}-{device}.png"
    await page.screenshot(path=str(path))
    return path
