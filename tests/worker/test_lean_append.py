"""The lean append path (``Channel._send_append``): a text append's ProtocolMessage is built by
the adapter and handed to ably-python's connection manager instead of going through
``append_message``. Differential: the frames it puts on the wire are byte-for-byte the ones the
SDK's ``append_message`` sends for the same append (msgSerial aside), read off a recording TCP
proxy between the SDK and the embedded server; and it behaves the same (ACK serial, text applied,
NACK as a transport error)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest

from agent_worker.errors import TransportError
from agent_worker.protocol.wire import OutboundMessage
from agent_worker.server import EmbeddedServer
from agent_worker.transport.ably import AblyTransport, _sdk_message
from tests.runtime.runtime_support import fresh_channel, worker_settings

MESSAGE, APPEND = 15, 5


@contextlib.asynccontextmanager
async def _recording_proxy(host: str, port: int) -> AsyncIterator[tuple[int, list[bytearray]]]:
    """A loopback TCP proxy to ``host:port``; yields its port and, per connection, every byte the
    client sent."""
    sent: list[bytearray] = []
    pipes: set[asyncio.Task[None]] = set()

    async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, record: bytearray | None) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await src.read(65536):
                if record is not None:
                    record.extend(data)
                dst.write(data)
                await dst.drain()
        dst.close()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(host, port)
        record = bytearray()
        sent.append(record)
        for task in (pipe(reader, up_writer, record), pipe(up_reader, writer, None)):
            t = asyncio.create_task(task)
            pipes.add(t)
            t.add_done_callback(pipes.discard)

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], sent
    finally:
        server.close()
        for t in list(pipes):
            t.cancel()


@contextlib.asynccontextmanager
async def _proxied_transport(
    ably_server: EmbeddedServer, **settings: Any
) -> AsyncIterator[tuple[AblyTransport, list[bytearray]]]:
    """A connected worker transport whose connections go through :func:`_recording_proxy`; yields
    it and the bytes each of its connections sent."""
    async with _recording_proxy(ably_server.host, ably_server.port) as (port, sent):
        base = worker_settings(ably_server, rate=1000.0, **settings)
        transport = AblyTransport(dataclasses.replace(base, endpoint=f"127.0.0.1:{port}"))
        await transport.connect()
        try:
            yield transport, sent
        finally:
            await transport.close()


def _client_frames(stream: bytes) -> list[bytes]:
    """The (unmasked) payloads of the binary WebSocket frames a client sent, after the HTTP upgrade."""
    pos = stream.index(b"\r\n\r\n") + 4
    frames: list[bytes] = []
    while pos + 2 <= len(stream):
        opcode, length = stream[pos] & 0x0F, stream[pos + 1] & 0x7F
        assert stream[pos + 1] & 0x80, "client frames are masked"
        pos += 2
        if length == 126:
            length, pos = int.from_bytes(stream[pos : pos + 2], "big"), pos + 2
        elif length == 127:
            length, pos = int.from_bytes(stream[pos : pos + 8], "big"), pos + 8
        mask, pos = stream[pos : pos + 4], pos + 4
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(stream[pos : pos + length]))
        pos += length
        if opcode == 2:
            frames.append(payload)
    return frames


def _appends(stream: bytes) -> list[bytes]:
    out = []
    for payload in _client_frames(stream):
        frame = msgpack.unpackb(payload, raw=False)
        if frame.get("action") == MESSAGE and frame["messages"][0].get("action") == APPEND:
            out.append(payload)
    return out


def _with_serial(payload: bytes, msg_serial: int) -> bytes:
    """``payload`` re-encoded with another msgSerial (key order kept), checked to round-trip."""
    frame: dict[str, Any] = msgpack.unpackb(payload, raw=False)
    assert msgpack.packb(frame, use_bin_type=True) == payload
    frame["msgSerial"] = msg_serial
    return bytes(msgpack.packb(frame, use_bin_type=True))


CASES = [
    OutboundMessage(
        name="ai-text", data="hello", extras={"ai": {"transport": {"stream": "1"}, "codec": {"x": [1]}}}
    ),
    OutboundMessage(name=None, data="", extras={}),
    OutboundMessage(name="t", data="ünïcødé ✓ " * 40, extras={"headers": {"k": "v"}}),
    OutboundMessage(name="t", data="x" * 5_000, extras={}),  # a 16-bit length frame
]


async def test_lean_appends_put_the_sdks_frames_on_the_wire(ably_server: EmbeddedServer) -> None:
    async with _recording_proxy(ably_server.host, ably_server.port) as (port, sent):
        settings = dataclasses.replace(
            worker_settings(ably_server, rate=1000.0, append_rollup_window_ms=0), endpoint=f"127.0.0.1:{port}"
        )
        transport = AblyTransport(settings)
        await transport.connect()
        try:
            channel = transport.channel(f"conversations:lean-{uuid.uuid4().hex[:8]}")
            serial = await channel.publish(OutboundMessage(name="t", data=""))
            assert serial is not None
            expected = ""
            for msg in CASES:
                sdk = await channel._sdk.append_message(_sdk_message(msg, serial=serial))
                lean = await channel.append(serial, msg)
                await channel.acquire()
                piped = await channel.start_append(serial, msg)
                assert sdk.version_serial and lean and piped  # each ACK carried its version serial
                assert len({sdk.version_serial, lean, piped}) == 3
                expected += msg.data * 3
            assert await channel.message_text(serial) == expected
        finally:
            await transport.close()
    frames = [f for stream in sent for f in _appends(bytes(stream))]  # a spare client sends none
    assert len(frames) == 3 * len(CASES)
    for i in range(len(CASES)):
        sdk_frame, lean_frame, piped_frame = frames[3 * i : 3 * i + 3]
        sdk_serial = msgpack.unpackb(sdk_frame, raw=False)["msgSerial"]
        assert _with_serial(lean_frame, sdk_serial) == sdk_frame
        assert _with_serial(piped_frame, sdk_serial) == sdk_frame


async def test_non_text_data_goes_through_the_sdk(ably_server: EmbeddedServer) -> None:
    """Data the SDK must encode (here JSON) still appends, through ``append_message``."""
    async with fresh_channel(ably_server, "lean") as channel:
        serial = await channel.publish(OutboundMessage(name="t", data="a"))
        assert serial is not None
        assert await channel.append(serial, OutboundMessage(name="t", data="b")) is not None
        with pytest.raises(TransportError):  # the server refuses appending JSON to a text message
            await channel.append(serial, OutboundMessage(name="t", data={"k": 1}))
        assert await channel.message_text(serial) == "ab"


async def test_a_refused_lean_append_fails_as_a_transport_error(ably_server: EmbeddedServer) -> None:
    """A NACKed append (no such message) fails with the server's code, and the channel goes on."""
    async with fresh_channel(ably_server, "lean") as channel:
        serial = await channel.publish(OutboundMessage(name="t", data="a"))
        assert serial is not None
        with pytest.raises(TransportError) as info:
            await channel.append("01-no-such-serial@0", OutboundMessage(name="t", data="b"))
        assert info.value.code // 1000 == 40  # a 4xxxx refusal from the NACK, not a timeout
        assert await channel.append(serial, OutboundMessage(name="t", data="c")) is not None
        assert await channel.message_text(serial) == "ac"
