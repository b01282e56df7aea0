"""Connection resume and channel continuity: forced drops mid-stream, msgSerial dedupe, AUTH storms."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
from ably import AblyRealtime
from ably.types.channelstate import ChannelState
from ably.types.message import Message, MessageAction
from ably.types.tokendetails import TokenDetails

from agent_worker.server import EmbeddedServer, ServerConfig
from agent_worker.server.auth import Capability, Principal
from agent_worker.server.connection import RealtimeConnection
from agent_worker.server.testing import python_realtime, python_rest, sdk_endpoint, sdk_token_details
from tests.server.server_support import (
    ACK,
    CONNECTED,
    MESSAGE,
    RESUMED,
    RawClient,
    collector,
    eventually,
    wait_connected,
)

_AGENT = Principal("local.dev", "agent", False, Capability.full(), None)


def _fold(messages: list[Any], serial: str) -> str:
    """Fold a subscriber's view of one appended message the way AIT does."""
    text = ""
    for m in messages:
        if m.serial != serial:
            continue
        if m.action in (MessageAction.MESSAGE_CREATE, MessageAction.MESSAGE_UPDATE):
            text = m.data
        elif m.action == MessageAction.MESSAGE_APPEND:
            text += m.data
    return text


async def test_subscriber_drop_mid_stream_resumes_without_gaps(ably_server: EmbeddedServer) -> None:
    """A viewer dropped mid-stream resumes its connection, re-attaches RESUMED, misses nothing."""
    agent = python_realtime(ably_server, client_id="agent")
    viewer = python_realtime(ably_server, client_id="viewer")
    try:
        got, listener = collector()
        changes, on_change = collector()
        vch = viewer.channels.get("stream:drop")
        await vch.subscribe(listener)
        vch.on(on_change)
        await wait_connected(viewer)
        connection_id = viewer.connection.connection_manager.connection_id
        ch = agent.channels.get("stream:drop")
        serial = (await ch.publish("reply", "")).serials[0]
        tokens = [f"w{i} " for i in range(30)]
        for i, tok in enumerate(tokens):
            await ch.append_message(Message(serial=serial, data=tok))
            if i == 10:
                assert ably_server.drop_connections(client_id="viewer") == 1
        await eventually(lambda: _fold(got, serial) == "".join(tokens), what="the full text at the viewer")
        versions = [m.version.serial for m in got]
        assert versions == sorted(versions) and len(set(versions)) == len(versions), "no duplicates, in order"
        reattached = [c for c in changes if c.current == ChannelState.ATTACHED]
        assert reattached and all(c.resumed for c in reattached)
        assert not [c for c in changes if c.previous == c.current == ChannelState.ATTACHED], (
            "no continuity-loss update"
        )
        assert viewer.connection.connection_manager.connection_id == connection_id, "same connection resumed"
    finally:
        await agent.close()
        await viewer.close()


async def test_publisher_drop_mid_stream_no_lost_or_duplicate_appends(ably_server: EmbeddedServer) -> None:
    """Pipelined appends interrupted by a drop are retransmitted and applied exactly once each."""
    agent = python_realtime(ably_server, client_id="agent")
    try:
        ch = agent.channels.get("stream:pubdrop")
        serial = (await ch.publish("reply", "")).serials[0]
        tokens = [f"t{i:02d} " for i in range(60)]
        pending = [
            asyncio.ensure_future(ch.append_message(Message(serial=serial, data=t))) for t in tokens[:30]
        ]
        await asyncio.sleep(0)
        ably_server.drop_connections(client_id="agent")
        pending += [
            asyncio.ensure_future(ch.append_message(Message(serial=serial, data=t))) for t in tokens[30:]
        ]
        await asyncio.gather(*pending, return_exceptions=True)
        rest = python_rest(ably_server)
        try:
            expected = "".join(tokens)
            latest: list[str] = [""]

            async def poll() -> None:
                while latest[0] != expected and len(latest[0]) <= len(expected):
                    latest[0] = (await rest.channels.get("stream:pubdrop").get_message(serial)).data
                    await asyncio.sleep(0.05)

            await asyncio.wait_for(poll(), 30)
            assert latest[0] == expected
        finally:
            await rest.close()
    finally:
        await agent.close()


async def test_raw_resume_same_id_and_msgserial_dedupe(ably_server: EmbeddedServer) -> None:
    """resume=<key> within the TTL gets the same connectionId; a retransmitted msgSerial is ACKed once."""
    a = await RawClient.connect(ably_server, clientId="x")
    key, cid = a.connection_key, a.connection_id
    await a.attach("dd")
    await a.publish("dd", [{"data": "only-once"}])
    await a.expect(MESSAGE)
    first = await a.expect(ACK)
    await a.close()
    b = await RawClient.connect(ably_server, clientId="x", resume=key)
    try:
        connected = b.frames[0]
        assert connected["connectionId"] == cid and "error" not in connected
        await b.send({"action": 15, "channel": "dd", "msgSerial": 0, "messages": [{"data": "only-once"}]})
        again = await b.expect(ACK)
        assert again["res"] == first["res"]
        history = ably_server.hub.channel("dd").log.order
        assert len(history) == 1
    finally:
        await b.close()


async def test_expired_connection_declines_resume_but_channel_continues() -> None:
    """After connectionStateTtl: new id + 80008; re-attach with channelSerial still replays (RESUMED)."""
    config = ServerConfig(connection_state_ttl_ms=200, presence_leave_delay_ms=100)
    async with EmbeddedServer(config) as server:
        a = await RawClient.connect(server)
        attached = await a.attach("cont")
        key = a.connection_key
        await a.close()
        pub = await RawClient.connect(server)
        await pub.publish("cont", [{"data": "missed"}])
        await pub.expect(ACK)
        await eventually(lambda: a.connection_id not in server.hub.channel("cont").attachments, what="expiry")
        await asyncio.sleep(0.3)
        b = await RawClient.connect(server, resume=key, expect_connected=False)
        try:
            connected = await b.expect(CONNECTED)
            assert connected["connectionId"] != a.connection_id
            assert connected["error"]["code"] == 80008
            again = await b.attach("cont", channelSerial=attached["channelSerial"])
            assert again["flags"] & RESUMED
            replay = await b.expect(MESSAGE)
            assert [m["data"] for m in replay["messages"]] == ["missed"]
        finally:
            await b.close()
            await pub.close()


async def test_inband_auth_before_rest_reattaches_resumed(ably_server: EmbeddedServer) -> None:
    """ably-python sends AUTH before each REST call and re-attaches; the server answers RESUMED."""
    rt = python_realtime(ably_server, client_id="alice")
    try:
        ch = rt.channels.get("authstorm")
        changes, on_change = collector()
        got, listener = collector()
        await ch.subscribe(listener)
        ch.on(on_change)
        await ch.publish("n", "one")
        for _ in range(3):
            assert [m.data for m in (await ch.history()).items] == ["one"]
        await eventually(lambda: ch.state == ChannelState.ATTACHED)
        await ch.publish("n", "two")
        await eventually(lambda: len(got) == 2)
        assert [m.data for m in got] == ["one", "two"], "nothing replayed twice by the re-attaches"
        assert all(c.resumed for c in changes if c.current == ChannelState.ATTACHED)
        assert not [c for c in changes if c.previous == c.current == ChannelState.ATTACHED]
    finally:
        await rt.close()


async def test_token_expiry_renews_and_keeps_connection(ably_server: EmbeddedServer) -> None:
    """An expiring token gets DISCONNECTED 40142; the SDK renews via its callback and resumes."""
    issued: list[float] = []

    async def auth_callback(_params: Any) -> TokenDetails:
        issued.append(1.0 if not issued else 3600.0)  # a short-lived first token, then long ones
        return sdk_token_details(ably_server, "alice", ttl_s=issued[-1])

    endpoint = sdk_endpoint(ably_server)
    rt = AblyRealtime(auth_callback=auth_callback, client_id="alice", endpoint=endpoint, tls=False)
    try:
        await wait_connected(rt)
        connection_id = rt.connection.connection_manager.connection_id
        ch = rt.channels.get("renew")
        got, listener = collector()
        await ch.subscribe(listener)
        await eventually(lambda: len(issued) >= 2, what="a token renewal after expiry")
        await wait_connected(rt)
        await ch.publish("n", "after renewal")
        await eventually(lambda: [m.data for m in got] == ["after renewal"])
        assert rt.connection.connection_manager.connection_id == connection_id
    finally:
        await rt.close()


async def test_drop_without_resume_loses_continuity(ably_server: EmbeddedServer) -> None:
    """drop_connections(resume=False): new connection id, re-attach without RESUMED, no replay."""
    viewer = python_realtime(ably_server, client_id="viewer")
    agent = python_realtime(ably_server, client_id="agent")
    try:
        ch = viewer.channels.get("lossy")
        got, listener = collector()
        changes, on_change = collector()
        await ch.subscribe(listener)
        ch.on(on_change)
        await wait_connected(viewer)
        first_id = viewer.connection.connection_manager.connection_id
        assert ably_server.drop_connections(client_id="viewer", resume=False) == 1
        # Published synchronously, before the viewer can possibly have reconnected.
        ably_server.hub.publish("lossy", [{"name": "n", "data": "during the gap"}], _AGENT)
        await eventually(lambda: any(c.current == ChannelState.ATTACHED for c in changes), what="re-attach")
        reattached = [c for c in changes if c.current == ChannelState.ATTACHED]
        assert reattached[-1].resumed is False
        assert viewer.connection.connection_manager.connection_id != first_id
        await agent.channels.get("lossy").publish("n", "after")
        await eventually(lambda: len(got) >= 1)
        assert [m.data for m in got] == ["after"]
    finally:
        await viewer.close()
        await agent.close()


class _Frames:
    """A socket stand-in that keeps what the connection sends (msgpack, decoded)."""

    closing = False

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []

    def enqueue(self, data: str | bytes) -> None:
        self.frames.append(msgpack.unpackb(data, raw=False))

    def abort(self) -> None:
        return None


async def test_the_dedupe_window_holds_the_last_1024_msgserials() -> None:
    """Within the last 1,024 msgSerials a repeat of the same content is ACKed with its first result
    and not published again; other content under such a serial is published (with a warning); a
    serial 1,024 or more below the newest is no longer remembered, so it is published again."""
    async with EmbeddedServer(ServerConfig()) as server:
        gateway = server._gateway
        assert gateway is not None
        principal = gateway.authenticate({"key": server.default_key, "clientId": "w"})
        conn = RealtimeConnection(gateway, principal, "w", "msgpack", False)
        frames = _Frames()
        conn.transport = frames  # type: ignore[assignment]

        def publish(serial: int, data: str) -> None:
            conn.handle({"action": 15, "channel": "win", "msgSerial": serial, "messages": [{"data": data}]})

        for serial in range(1100):
            publish(serial, f"m{serial}")
        await asyncio.sleep(0)  # the ACKs' flush
        log = server.hub.channel("win").log
        assert len(log.order) == 1100
        first_res = {}
        for ack in (f for f in frames.frames if f["action"] == ACK):
            for i, res in enumerate(ack["res"]):
                first_res[ack["msgSerial"] + i] = res
        frames.frames.clear()
        publish(1099 - 1023, "m76")  # the oldest serial still in the window
        publish(1099, "m1099")
        publish(1000, "other content")
        publish(1099 - 1024, "m75")  # just out of the window
        await asyncio.sleep(0)
        acks = [f for f in frames.frames if f["action"] == ACK]
        assert [(a["msgSerial"], a["res"]) for a in acks[:2]] == [
            (76, [first_res[76]]),
            (1099, [first_res[1099]]),
        ]
        assert [log.records[s].content["data"] for s in log.order[1100:]] == ["other content", "m75"]
        conn.transport = None
