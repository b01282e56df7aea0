"""Bring your own loop: a hand-written handler streams an async generator into the session.

Any framework (pydantic-ai, LangGraph, the OpenAI Agents SDK) fits the same shape: read the
history, stream what your loop produces. The worker keeps the run lifecycle, cancel policy,
rate limits and error rules.

Run it:  agent-worker run examples.own_loop:handler
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from agent_worker import AgentRun, ReasoningDelta, StreamEvent, UserMessage, Worker


async def my_loop(question: str) -> AsyncIterator[str | StreamEvent]:
    """Your agent: here, some reasoning and then a word-by-word answer."""
    yield ReasoningDelta("The user wants it reversed.")
    for word in reversed(question.split()):
        await asyncio.sleep(0)  # a real loop awaits its model here
        yield word + " "


async def handler(run: AgentRun) -> None:
    last = run.history[-1]
    question = (
        " ".join(p.text for p in last.parts if p.kind == "text") if isinstance(last, UserMessage) else ""
    )
    async with run.message() as out:
        await out.stream(my_loop(question))
        await out.text(f"(for {run.client_id})")


if __name__ == "__main__":
    Worker(handler).run()
