"""RunDigest reads both dialects' real output events (the writers the runtime uses)."""

from __future__ import annotations

from typing import Any

import pytest

from agent_worker.protocol.codecs import OPENAI_RESPONSES, VERCEL
from agent_worker.runtime.dialects import writer_for
from agent_worker.runtime.digest import RunDigest


@pytest.mark.parametrize("dialect", [VERCEL, OPENAI_RESPONSES])
async def test_text_pending_tools_and_approvals(dialect: str) -> None:
    digest = RunDigest(limit=12)

    async def send(chunk: Any) -> None:
        digest.observe(chunk)

    writer = writer_for(dialect, send)
    await writer.begin()
    await writer.start_step()
    await writer.text("Hello there, ")
    await writer.text("this is long")
    await writer.tool_call_start("c1", "lookup")
    await writer.tool_call("c1", "lookup", {"q": "x"}, '{"q":"x"}')
    await writer.tool_result("c1", "found", False)
    await writer.tool_call_start("c2", "send_email")
    await writer.tool_call("c2", "send_email", {"to": "a"}, '{"to":"a"}')
    await writer.approval_request("c2")
    await writer.tool_call_start("c3", "get_client_location")
    await writer.tool_call("c3", "get_client_location", {}, "{}")
    assert digest.text == "Hello there,"  # bounded to the limit
    assert digest.approvals == ["send_email"]
    assert sorted(digest.tools.values()) == ["get_client_location", "send_email"]  # lookup answered
