"""The official JS client (@ably/ai-transport 0.8.0 + Vercel ChatTransport + useChat engine) against
this worker: what the client folds must be what the scripted provider produced."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from conformance_support import transcript

from agent_worker.providers.base import ModelRequest, StreamEvent

pytestmark = pytest.mark.node


async def hello_script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
    for token in ("Hi", " there", ", ", "alice", "!"):
        yield token


@pytest.mark.parametrize("protocol", ["msgpack", "json"])
async def test_plain_reply(make_stack: Any, protocol: str) -> None:
    stack = await make_stack(hello_script)
    result = await stack.scenario("plain", protocol=protocol)
    a = result["a"]
    assert [(m["role"], m["text"]) for m in a["view"]] == [
        ("user", "Hello there"),
        ("assistant", "Hi there, alice!"),
    ]
    # useChat's own state (built from the stream) agrees with the session view.
    assert [(m["id"], m["role"], m["text"]) for m in a["chat"]] == [
        (m["id"], m["role"], m["text"]) for m in a["view"]
    ]
    assert a["chatStatus"] == "ready" and a["chatError"] is None and a["sessionErrors"] == []
    [run] = a["runs"]
    assert run["status"] == "complete"
    assert run["clientId"] == "alice"
    assert transcript(stack.provider.requests[0]) == [("user", "Hello there")]
    assert len(stack.provider.requests) == 1
