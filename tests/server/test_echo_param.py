"""ably-python with ``transport_params={"echo": "false"}`` (what the worker sends with
``[ably] echo_messages = false``) against the embedded server: its own messages are not delivered
back to it; another connection's are (tests/server_js/test_js_echo.py: ably-js)."""

from __future__ import annotations

import asyncio
from typing import Any

from agent_worker.server import EmbeddedServer
from agent_worker.server.testing import python_realtime


async def test_ably_python_transport_param_echo_false(ably_server: EmbeddedServer) -> None:
    quiet = python_realtime(ably_server, client_id="quiet", transport_params={"echo": "false"})
    other = python_realtime(ably_server, client_id="other")
    try:
        seen_q: list[Any] = []
        seen_o: list[Any] = []
        ch_q = quiet.channels.get("conversations:echo-py")
        ch_o = other.channels.get("conversations:echo-py")
        await ch_q.subscribe(lambda m: seen_q.append(m))  # noqa: PLW0108 - the SDK wants a function
        await ch_o.subscribe(lambda m: seen_o.append(m))  # noqa: PLW0108
        await ch_q.publish("mine", "a")
        await ch_o.publish("theirs", "x")
        async with asyncio.timeout(15):
            while len(seen_o) < 2 or not seen_q:  # noqa: ASYNC110 - SDK callbacks, no event to await
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)  # a late echo would have come by now
        assert [m.name for m in seen_q] == ["theirs"]
        assert [m.name for m in seen_o] == ["mine", "theirs"]
    finally:
        await quiet.close()
        await other.close()
