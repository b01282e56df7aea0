"""Which ``None`` fields the codec drops: envelope fields at any depth, never publisher content."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest
from ably.types.message import Message

from agent_worker.server import EmbeddedServer, codec
from agent_worker.server.testing import python_realtime
from tests.server.server_support import collector, eventually

CONTENT = {"ai": {"transport": {"run-id": "r1", "gone": None}, "codec": {"k": [1, None, {"x": None}]}}}


def _decode(raw: str | bytes, fmt: codec.Format) -> Any:
    return msgpack.unpackb(raw, raw=False) if fmt == codec.MSGPACK else json.loads(raw)


@pytest.mark.parametrize("fmt", [codec.JSON, codec.MSGPACK])
def test_body_drops_envelope_none_keeps_content(fmt: codec.Format) -> None:
    body = [
        {
            "id": "a:0",
            "clientId": None,
            "name": "n",
            "data": {"answer": None, "list": [None]},
            "extras": CONTENT,
            "version": {"serial": "s", "clientId": None, "metadata": {"why": None, "who": "me"}},
        },
        {"error": {"code": 40000, "href": None}, "nested": [{"a": None, "b": 1}]},
    ]
    out = _decode(codec.encode_body(body, fmt), fmt)
    assert out == [
        {
            "id": "a:0",
            "name": "n",
            "data": {"answer": None, "list": [None]},
            "extras": CONTENT,
            "version": {"serial": "s", "metadata": {"who": "me"}},
        },
        {"error": {"code": 40000}, "nested": [{"b": 1}]},
    ]


@pytest.mark.parametrize("fmt", [codec.JSON, codec.MSGPACK])
def test_frame_drops_envelope_none(fmt: codec.Format) -> None:
    frame = {
        "action": 4,
        "connectionId": "c",
        "error": None,
        "connectionDetails": {"clientId": None, "connectionKey": "k"},
        "messages": [{"name": "m", "encoding": None, "extras": {"headers": {"h": None}}}],
    }
    out = _decode(codec.encode_frame(frame, fmt), fmt)
    assert out == {
        "action": 4,
        "connectionId": "c",
        "connectionDetails": {"connectionKey": "k"},
        "messages": [{"name": "m", "extras": {"headers": {"h": None}}}],
    }


@pytest.mark.parametrize("binary", [False, True])
async def test_extras_nulls_round_trip(ably_server: EmbeddedServer, binary: bool) -> None:
    """ably-python publishes extras holding nulls; subscribers and history get them unchanged."""
    agent = python_realtime(ably_server, client_id="agent", use_binary_protocol=binary)
    try:
        ch = agent.channels.get(f"extras-null-{binary}")
        got, listener = collector()
        await ch.subscribe(listener)
        await ch.publish(Message(name="n", data="d", extras=CONTENT))
        await eventually(lambda: len(got) == 1)
        assert got[0].extras == CONTENT
        assert (await ch.history()).items[0].extras == CONTENT
    finally:
        await agent.close()
