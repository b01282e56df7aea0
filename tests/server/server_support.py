"""Test helpers: a raw protocol-level WebSocket client and small async waiting utilities."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgpack
from ably.types.connectionstate import ConnectionState

from agent_worker.server import EmbeddedServer
from agent_worker.server.websocket import Transport

HEARTBEAT, ACK, NACK, CONNECTED, DISCONNECTED, CLOSE, CLOSED, ERROR = 0, 1, 2, 4, 6, 7, 8, 9
ATTACH, ATTACHED, DETACH, DETACHED, PRESENCE, MESSAGE, SYNC, AUTH = 10, 11, 12, 13, 14, 15, 16, 17
RESUMED = 1 << 2
HAS_PRESENCE = 1 << 0


async def eventually(pred: Callable[[], bool], within: float = 10.0, what: str = "condition") -> None:
    """Poll ``pred`` until true; fail the test (not time it) if it never becomes true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not pred():
        if loop.time() > deadline:
            msg = f"timed out waiting for {what}"
            raise AssertionError(msg)
        await asyncio.sleep(0.02)


class RawClient:
    """Speaks the Ably protocol directly, to assert on exact frames."""

    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse, fmt: str) -> None:
        self.session = session
        self.ws = ws
        self.fmt = fmt
        self.frames: list[dict[str, Any]] = []
        self.msg_serial = 0

    @classmethod
    async def connect(
        cls,
        server: EmbeddedServer,
        *,
        fmt: str = "json",
        expect_connected: bool = True,
        **params: str,
    ) -> RawClient:
        if not any(k in params for k in ("key", "accessToken", "access_token")):
            params["key"] = server.default_key
        if fmt == "msgpack":
            params["format"] = "msgpack"
        session = aiohttp.ClientSession()
        ws = await session.ws_connect(f"ws://{server.endpoint}/", params=params)
        client = cls(session, ws, fmt)
        if expect_connected:
            connected = await client.expect(CONNECTED)
            client.connection_id = connected["connectionId"]
            client.connection_key = connected["connectionDetails"]["connectionKey"]
        return client

    connection_id: str = ""
    connection_key: str = ""

    async def send(self, msg: dict[str, Any]) -> None:
        if self.fmt == "msgpack":
            await self.ws.send_bytes(msgpack.packb(msg, use_bin_type=True))
        else:
            await self.ws.send_str(json.dumps(msg))

    async def send_raw(self, data: str | bytes) -> None:
        if isinstance(data, bytes):
            await self.ws.send_bytes(data)
        else:
            await self.ws.send_str(data)

    async def recv(self, within: float = 10.0) -> dict[str, Any] | None:
        """Next non-heartbeat frame, or ``None`` when the socket closed."""
        while True:
            msg = await self.ws.receive(timeout=within)
            if msg.type == aiohttp.WSMsgType.TEXT:
                frame: dict[str, Any] = json.loads(msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                frame = msgpack.unpackb(msg.data, raw=False)
            else:
                return None
            if frame.get("action") == HEARTBEAT and "id" not in frame:
                continue
            self.frames.append(frame)
            return frame

    async def expect(self, action: int, within: float = 10.0) -> dict[str, Any]:
        """The next frame, which must have ``action``."""
        frame = await self.recv(within)
        assert frame is not None, f"socket closed while waiting for action {action}"
        assert frame["action"] == action, f"expected action {action}, got {frame}"
        return frame

    async def outcomes(self, n: int) -> list[dict[str, Any]]:
        """The next ``n`` acknowledgements, one per msgSerial: ACK/NACK frames (skipping everything
        else) split by their ``count`` (the server acknowledges frames read together in one ACK),
        each ``{"action", "msgSerial", "count": 1, "res": [its entry]}`` (or ``"error"``)."""
        out: list[dict[str, Any]] = []
        while len(out) < n:
            frame = await self.recv()
            assert frame is not None, "socket closed while waiting for ACK/NACK"
            if frame["action"] not in (ACK, NACK):
                continue
            count = frame["count"]
            assert count >= 1
            if frame["action"] == ACK:
                assert len(frame["res"]) == count, f"one res entry per acknowledged frame: {frame}"
            for i in range(count):
                one = {k: v for k, v in frame.items() if k != "res"}
                one.update(msgSerial=frame["msgSerial"] + i, count=1)
                if frame["action"] == ACK:
                    one["res"] = [frame["res"][i]]
                out.append(one)
        return out

    async def publish(self, channel: str, messages: list[dict[str, Any]]) -> int:
        serial = self.msg_serial
        self.msg_serial += 1
        await self.send({"action": MESSAGE, "channel": channel, "msgSerial": serial, "messages": messages})
        return serial

    async def attach(self, channel: str, **fields: Any) -> dict[str, Any]:
        await self.send({"action": ATTACH, "channel": channel, **fields})
        return await self.expect(ATTACHED)

    async def closed(self, within: float = 10.0) -> bool:
        """Drain until the server closes the socket."""
        while True:
            frame = await self.recv(within)
            if frame is None:
                return True

    async def close(self) -> None:
        await self.ws.close()
        await self.session.close()


def collector() -> tuple[list[Any], Callable[[Any], None]]:
    """A list and a plain-function listener appending to it (ably-python rejects bound builtins)."""
    items: list[Any] = []

    def listener(item: Any) -> None:
        items.append(item)

    return items, listener


async def wait_connected(client: Any, within: float = 10.0) -> None:
    """Wait until an ably-python realtime client is CONNECTED (it may already be)."""
    await eventually(lambda: client.connection.state == ConnectionState.CONNECTED, within, "CONNECTED")


@dataclass
class Flood:
    """A channel ``flood`` with a ``slow`` reader (4 KiB kernel buffers at both ends, so a few
    messages fill its socket; it reads only when a test tells it to), a ``bystander`` and ``pub``."""

    slow: RawClient
    bystander: RawClient
    pub: RawClient
    transport: Transport
    """The server's side of ``slow``'s socket."""
    sent: int = 0

    async def publish_one(self, payload: str = "x" * 20_000) -> None:
        """One message ``"<n>:<payload>"``; the bystander gets it (everyone else is served)."""
        await self.pub.publish("flood", [{"name": "n", "data": f"{self.sent}:{payload}"}])
        await self.pub.expect(ACK)
        got = await self.bystander.expect(MESSAGE)
        assert got["messages"][0]["data"].startswith(f"{self.sent}:")
        self.sent += 1


@contextlib.asynccontextmanager
async def flood(server: EmbeddedServer) -> AsyncIterator[Flood]:
    slow = await RawClient.connect(server, clientId="slow")
    bystander = await RawClient.connect(server, clientId="bystander")
    pub = await RawClient.connect(server, clientId="pub", echo="false")
    try:
        await slow.attach("flood")
        await bystander.attach("flood")
        gateway = server._gateway
        assert gateway is not None
        transport = gateway.connections[slow.connection_id].transport
        assert isinstance(transport, Transport) and transport.raw is not None
        transport.raw.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        slow.ws.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        yield Flood(slow, bystander, pub, transport)
    finally:
        for client in (slow, bystander, pub):
            await client.close()
