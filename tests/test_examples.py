"""The programs in examples/ run as users would write them, each served by a real worker."""

from __future__ import annotations

from agent_worker.testing import AgentTester
from examples import custom_provider, custom_tool, own_loop


async def test_custom_tool_with_typed_deps() -> None:
    """The tool reads ctx.deps from the agent's deps factory; the model reports its result."""
    async with AgentTester(custom_tool.agent) as tester:
        reply = await tester.ask("where is order 42?")
        unknown = await tester.ask("and order 9?")
    assert reply.status == "complete"
    tool_part = next(p for p in reply.parts if p["type"] == "tool-order_status")
    assert tool_part["input"] == {"order_id": "42"} and tool_part["output"] == "shipped"
    assert reply.text == "Order status: shipped"
    assert unknown.text == "Order status: unknown order"


async def test_custom_provider_class() -> None:
    """A provider written against the port (stream() + our events) drives a run."""
    async with AgentTester(custom_provider.agent) as tester:
        reply = await tester.ask("hello there")
    assert reply.status == "complete"
    assert reply.text.split() == ["HELLO", "THERE"]


async def test_hand_written_loop_streams_an_async_generator() -> None:
    """A plain handler streams reasoning and text from an async generator; the worker ends the run."""
    async with AgentTester(own_loop.handler, client_id="ann") as tester:
        reply = await tester.ask("one two three")
    assert reply.status == "complete"
    kinds = [p["type"] for p in reply.parts if p["type"] != "step-start"]
    assert kinds[0] == "reasoning" and "text" in kinds
    assert reply.text == "three two one (for ann)"
