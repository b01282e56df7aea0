"""The lean publish path (``Channel._send_publish``): a publish of text (or empty) messages is
built by the adapter and handed to ably-python's connection manager instead of going through
``publish``. Differential, as for appends (test_lean_append.py): the frames it puts on the wire are
byte-for-byte the ones the SDK's ``publish`` sends for the same messages and ids (msgSerial aside),
read off a recording TCP proxy; and it behaves the same (serials, size refusal, other data)."""

from __future__ import annotations

import uuid
from typing import Any

import msgpack
import pytest

from agent_worker.errors import TransportError
from agent_worker.protocol.wire import OutboundMessage
from agent_worker.server import EmbeddedServer
from agent_worker.transport.ably import _publish_frame, _sdk_message
from tests.runtime.runtime_support import fresh_channel
from tests.worker.test_lean_append import MESSAGE, _client_frames, _proxied_transport

CASES: list[list[OutboundMessage]] = [
    [OutboundMessage(name="ai-run-start", data="", extras={"headers": {"x-ably-ai-run-id": "r1"}})],
    [OutboundMessage(name=None, data=None, extras={})],
    [OutboundMessage(name="", data="ünïcødé ✓ " * 40, extras={"ai": {"transport": {"stream": "1"}}})],
    [OutboundMessage(name="t", data="x" * 5_000, extras={})],  # a 16-bit length frame
    [  # a batch: the opening chunks and a stream's create
        OutboundMessage(name="ai-output", data="a", extras={"headers": {"k": "1"}}),
        OutboundMessage(name="ai-output", data="b", extras={"headers": {"k": "2"}}),
        OutboundMessage(name="ai-text", data="", extras={"headers": {"stream": "true"}}),
    ],
]


def _publishes(stream: bytes) -> list[dict[str, Any]]:
    out = []
    for payload in _client_frames(stream):
        frame = msgpack.unpackb(payload, raw=False)
        if frame.get("action") == MESSAGE and "action" not in frame["messages"][0]:
            assert msgpack.packb(frame, use_bin_type=True) == payload  # key order round-trips
            out.append(frame)
    return out


def _ids(tag: str, n: int) -> list[str]:
    return [f"{tag}-{uuid.uuid4().hex[:12]}:{i}" for i in range(n)]


async def test_lean_publishes_put_the_sdks_frames_on_the_wire(ably_server: EmbeddedServer) -> None:
    async with _proxied_transport(ably_server) as (transport, sent):
        channel = transport.channel(f"conversations:lean-{uuid.uuid4().hex[:8]}")
        for msgs in CASES:
            sdk_ids, lean_ids = _ids("s", len(msgs)), _ids("l", len(msgs))
            sdk = await channel._sdk.publish(
                [_sdk_message(m, id=i) for m, i in zip(msgs, sdk_ids, strict=True)]
            )
            lean = await channel._send_publish(msgs, lean_ids)
            assert len(sdk.serials) == len(lean.serials) == len(msgs) and all(lean.serials)
            assert not set(sdk.serials) & set(lean.serials)
    frames = [f for stream in sent for f in _publishes(bytes(stream))]  # a spare client sends none
    assert len(frames) == 2 * len(CASES)
    for i in range(len(CASES)):
        sdk_frame, lean_frame = frames[2 * i], frames[2 * i + 1]
        lean_frame["msgSerial"] = sdk_frame["msgSerial"]
        for sdk_msg, lean_msg in zip(sdk_frame["messages"], lean_frame["messages"], strict=True):
            assert lean_msg["id"].startswith("l-")
            lean_msg["id"] = sdk_msg["id"]
        assert msgpack.packb(lean_frame, use_bin_type=True) == msgpack.packb(sdk_frame, use_bin_type=True)


def test_data_the_sdk_must_encode_has_no_lean_frame() -> None:
    assert _publish_frame("c", [OutboundMessage(name="t", data={"k": 1})], ["i:0"]) is None
    assert _publish_frame("c", [OutboundMessage(name="t", data=b"\x00")], ["i:0"]) is None
    text = OutboundMessage(name="t", data="a")
    assert _publish_frame("c", [text, OutboundMessage(name="t", data=[1])], ["i:0", "i:1"]) is None


async def test_other_data_and_oversize_publishes_behave_as_the_sdks(ably_server: EmbeddedServer) -> None:
    """JSON data still publishes (through the SDK, and reads back as sent); a batch over the size
    limit is refused before it is sent, with the SDK's code (40009), and the channel goes on."""
    async with fresh_channel(ably_server, "lean") as channel:
        serials = await channel.publish_batch(
            [OutboundMessage(name="t", data={"k": 1}), OutboundMessage(name="t", data="a")]
        )
        assert len(serials) == 2 and all(serials)
        big = [OutboundMessage(name="t", data="x" * 40_000), OutboundMessage(name="t", data="y" * 40_000)]
        with pytest.raises(TransportError) as info:
            await channel.publish_batch(big)
        assert info.value.code == 40009
        assert await channel.publish(OutboundMessage(name="t", data="after")) is not None
        items = [m async for page in channel.history_pages() for m in page]
        assert [m.data for m in reversed(items)] == [{"k": 1}, "a", "after"]
