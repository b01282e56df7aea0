"""A custom tool with typed dependencies: ``@agent.tool`` receives ``RunContext[Deps]``.

Run it:  agent-worker run examples.custom_tool:agent     (or: python -m examples.custom_tool)
The scripted model below calls the tool for any question about an order, so it runs offline; swap
in ``Agent("openai", ...)`` for a real model.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from agent_worker import Agent, ModelRequest, RunContext, ScriptedProvider, StreamEvent, ToolCallEnd, Worker
from agent_worker.protocol.model import ToolMessage, UserMessage


@dataclass
class Deps:
    """What the tools need, built per run by the factory below (a DB pool in real life)."""

    orders: dict[str, str] = field(default_factory=lambda: {"42": "shipped", "7": "being packed"})


async def model(request: ModelRequest) -> AsyncIterator[str | StreamEvent]:
    """A stand-in model: look the order up, then report the tool's answer."""
    last = request.messages[-1]
    if isinstance(last, ToolMessage):
        yield f"Order status: {last.parts[-1].output}"
        return
    text = " ".join(p.text for p in last.parts if p.kind == "text") if isinstance(last, UserMessage) else ""
    number = re.search(r"\d+", text)
    if number is None:
        yield "Which order number?"
        return
    yield ToolCallEnd("call_1", "order_status", f'{{"order_id": "{number.group()}"}}')


agent = Agent(ScriptedProvider(model), system_prompt="You answer questions about orders.", deps=Deps)


@agent.tool
def order_status(ctx: RunContext[Deps], order_id: str) -> str:
    """Look up an order's status.

    Args:
        order_id: The order number.
    """
    return ctx.deps.orders.get(order_id, "unknown order")


if __name__ == "__main__":
    Worker(agent).run()
