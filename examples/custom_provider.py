"""A custom model provider class: implement ``stream()`` and yield our own stream events.

Run it:  agent-worker run examples.custom_provider:agent
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from agent_worker import (
    Agent,
    Finished,
    ModelRequest,
    ModelResponse,
    StreamEvent,
    TextDelta,
    UsageUpdate,
    UserMessage,
    Worker,
)


class ShoutStream:
    """The stream of one model call: our events, then the assembled response."""

    def __init__(self, text: str) -> None:
        self._text = text

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[StreamEvent]:
        for word in self._text.split(" "):
            yield TextDelta(word.upper() + " ")
        yield UsageUpdate(input_tokens=1, output_tokens=len(self._text.split()))
        yield Finished("stop")

    def get(self) -> ModelResponse:
        return ModelResponse(text=self._text.upper(), finish_reason="stop")


class ShoutProvider:
    """Answers every message by shouting it back (a vendor adapter translates its SDK here)."""

    name = "shout"

    @asynccontextmanager
    async def stream(self, request: ModelRequest) -> AsyncIterator[ShoutStream]:
        last = request.messages[-1]
        text = (
            " ".join(p.text for p in last.parts if p.kind == "text") if isinstance(last, UserMessage) else ""
        )
        yield ShoutStream(text)


agent = Agent(ShoutProvider())

if __name__ == "__main__":
    Worker(agent).run()
