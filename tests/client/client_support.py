"""Helpers shared by the client tests (imported as a top-level module: tests have no packages)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from typing import Any

from agent_worker.client.render import LivePrinter, conversation_view, make_console, plain_text, render
from agent_worker.client.session import ChatSession


def transcript(session: ChatSession, *, decorate: bool = True) -> str:
    return plain_text(render(conversation_view(session.tree, session.authors), decorate=decorate))


def live_screen(session: ChatSession) -> io.StringIO:
    """Redraw ``session``'s conversation with a :class:`LivePrinter` on every update, as the chat
    app does; returns the buffer holding everything printed."""
    out = io.StringIO()
    printer = LivePrinter(make_console(out, color=False))
    session.on_update(lambda: printer.update(render(conversation_view(session.tree, session.authors))))
    return out


async def wait_until(
    session: ChatSession,
    predicate: Callable[[], bool],
    what: str,
    timeout: float = 10.0,  # noqa: ASYNC109 - a bound on waiting, not a timing assertion
) -> None:
    """Until ``predicate()`` holds after some update of ``session`` (checked on every update)."""
    changed = asyncio.Event()
    off = session.on_update(changed.set)
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                changed.clear()
                await changed.wait()
    except TimeoutError:
        msg = f"timed out waiting for {what}; transcript:\n{transcript(session)}"
        raise AssertionError(msg) from None
    finally:
        off()


DeviceFactory = Callable[..., Any]
WorkerFactory = Callable[..., Awaitable[str]]
