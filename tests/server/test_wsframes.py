"""The realtime writer frames a batch itself (one socket write): the bytes must be exactly what
aiohttp's own WebSocketWriter writes for each message, and a client must read them back."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import WSMsgType
from aiohttp._websocket.writer import WebSocketWriter

from agent_worker.server import EmbeddedServer, ServerConfig, wsframes
from tests.server.server_support import ACK, MESSAGE, RawClient

SIZES = [0, 1, 125, 126, 127, 65535, 65536, 70_000]


class _Capture(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()

    def write(self, data: Any) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return False


async def _aiohttp_bytes(messages: list[str | bytes]) -> bytes:
    transport = _Capture()
    writer = WebSocketWriter(protocol=None, transport=transport)  # type: ignore[arg-type]
    for m in messages:
        if isinstance(m, str):
            await writer.send_frame(m.encode(), WSMsgType.TEXT)
        else:
            await writer.send_frame(m, WSMsgType.BINARY)
    return bytes(transport.out)


@pytest.mark.parametrize("size", SIZES)
async def test_frames_equal_aiohttp_writer(size: int) -> None:
    messages: list[str | bytes] = [b"\x00\xff" * (size // 2) + b"x" * (size % 2), "é" * (size // 2)]
    assert wsframes.frames(messages) == await _aiohttp_bytes(messages)


async def test_a_batch_is_the_frames_back_to_back() -> None:
    messages: list[str | bytes] = [bytes([i]) * n for i, n in enumerate(SIZES)] + ["text", ""]
    assert wsframes.frames(messages) == await _aiohttp_bytes(messages)
    assert wsframes.frames([]) == b""


async def test_many_frames_in_one_write_reach_the_client_in_order() -> None:
    """A burst of publishes in one read: the echoes and the ACK leave in batched writes, and the
    client (aiohttp's reader) decodes every frame, in order, in both formats."""
    async with EmbeddedServer(ServerConfig(max_message_size=1 << 17)) as server:
        for fmt in ("msgpack", "json"):
            await _burst(server, fmt)


async def _burst(server: EmbeddedServer, fmt: str) -> None:
    client = await RawClient.connect(server, fmt=fmt)
    try:
        await client.attach(f"frames:{fmt}")
        payloads = ["x" * n for n in (0, 10, 125, 126, 70_000)] * 4
        for p in payloads:
            await client.publish(f"frames:{fmt}", [{"name": "n", "data": p}])
        seen: list[str] = []
        acked = 0
        while acked < len(payloads):
            frame = await client.recv()
            assert frame is not None
            if frame["action"] == MESSAGE:
                seen.append(frame["messages"][0]["data"])
            elif frame["action"] == ACK:
                acked += frame["count"]
        assert seen == payloads
    finally:
        await client.close()


def test_batched_frames_on_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    """uvloop's transports (what `agent-worker run` and `server` use) take the same batched path."""
    uvloop = pytest.importorskip("uvloop")
    batches: list[int] = []
    build = wsframes.frames

    def counted(messages: list[str | bytes]) -> bytes:
        batches.append(len(messages))
        return build(messages)

    monkeypatch.setattr(wsframes, "frames", counted)

    async def main() -> None:
        async with EmbeddedServer(ServerConfig(max_message_size=1 << 17)) as server:
            assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
            for fmt in ("msgpack", "json"):
                await _burst(server, fmt)

    uvloop.run(main())
    assert sum(batches) >= 2 * 20  # every echo of both bursts (and the ACKs) went through it
