"""A third-party agent-worker plugin: a ``shouty`` provider and a ``reverse_text`` tool."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

from agent_worker.hookspecs import RegisterProvider, RegisterTool, hookimpl
from agent_worker.providers import ModelRequest, ResponseStream, ScriptedProvider, StreamEvent
from agent_worker.providers.echo import latest_user_text


class ShoutyProvider:
    """Answers with the user's text in capitals, one word at a time."""

    name = "shouty"

    def __init__(self, exclamation: str = "!") -> None:
        self.exclamation = exclamation

    def stream(self, request: ModelRequest) -> AbstractAsyncContextManager[ResponseStream]:
        async def script(req: ModelRequest) -> AsyncIterator[StreamEvent | str]:
            for word in latest_user_text(req).upper().split():
                yield word + " "
            yield self.exclamation

        return ScriptedProvider(script, name=self.name).stream(request)


def reverse_text(text: str) -> str:
    """Reverse a piece of text.

    Args:
        text: What to reverse.
    """
    return text[::-1]


@hookimpl
def register_providers(register: RegisterProvider) -> None:
    def factory(options: Mapping[str, Any]) -> ShoutyProvider:
        return ShoutyProvider(**options)

    register("shouty", factory, description="capitalises the user's text (sample plugin)")


@hookimpl
def register_tools(register: RegisterTool) -> None:
    register(reverse_text)
