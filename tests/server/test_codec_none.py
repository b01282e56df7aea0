"""Which ``None`` fields the codec drops: envelope fields at any depth, never publisher content."""

from __future__ import annotations

import json
import threading
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


def test_the_reused_packers_give_packb_bytes_in_every_thread_and_after_a_failure() -> None:
    """``codec.pack`` / ``pack_lenient`` reuse one Packer per thread: their bytes are
    ``msgpack.packb``'s, a value that cannot be packed leaves nothing behind for the next call, and
    threads packing at once do not mix their buffers."""
    values: list[Any] = [CONTENT, [1, True, 1.5, b"\x00\xff", "é", None], {"k": "x" * 70_000}, 2**63]
    for value in values:
        assert codec.pack(value) == msgpack.packb(value, use_bin_type=True)
        assert codec.pack_lenient(value) == msgpack.packb(value, use_bin_type=True, default=str)
    odd = {"a": object(), "b": [1]}
    with pytest.raises(TypeError):
        codec.pack(odd)
    with pytest.raises(OverflowError):
        codec.pack([1, 2**70])
    assert codec.pack([1]) == msgpack.packb([1])
    assert codec.pack_lenient(odd) == msgpack.packb(odd, use_bin_type=True, default=str)
    mismatches: list[int] = []

    def hammer(n: int) -> None:
        value = {"thread": n, "data": str(n) * (100 + n)}
        expected = msgpack.packb(value, use_bin_type=True)
        for _ in range(2000):
            if codec.pack(value) != expected:
                mismatches.append(n)

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not mismatches
