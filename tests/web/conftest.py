"""Fixtures for the browser suite: one chromium per module, one worker stack per module, a fresh
browser context per device (closed after each test)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, async_playwright

from agent_worker.server import EmbeddedServer, ServerConfig
from tests.web.web_support import ARTIFACTS, WebStack, launch, start_stack


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        chromium = await launch(playwright)
        yield chromium
        await chromium.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def web_server() -> AsyncIterator[EmbeddedServer]:
    config = ServerConfig(port=0, presence_leave_delay_ms=300, connection_state_ttl_ms=60_000)
    async with EmbeddedServer(config) as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack_module(web_server: EmbeddedServer) -> AsyncIterator[WebStack]:
    stack = await start_stack(web_server)
    yield stack
    await stack.close()


@pytest_asyncio.fixture(loop_scope="module")
async def stack(stack_module: WebStack) -> AsyncIterator[WebStack]:
    """The module's stack; the devices (browser contexts) a test opens are closed after it."""
    yield stack_module
    for context in stack_module.contexts:
        with contextlib.suppress(Exception):
            await context.close()
    stack_module.contexts.clear()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    shots: Iterator[Path] = ARTIFACTS.glob("*.png") if ARTIFACTS.is_dir() else iter(())
    names = sorted(shots)
    if names:
        terminalreporter.write_line(f"web client screenshots ({len(names)}): {ARTIFACTS}")
