"""Realtime basics with ably-python 3.1.4 and at the frame level: connect, attach, publish, echo, ACK."""

from __future__ import annotations

import asyncio

import pytest

from agent_worker.server import EmbeddedServer, ServerConfig
from agent_worker.server.testing import python_realtime
from tests.server.server_support import (
    ACK,
    ATTACHED,
    CLOSE,
    CLOSED,
    DETACH,
    DETACHED,
    HEARTBEAT,
    MESSAGE,
    NACK,
    RESUMED,
    RawClient,
    collector,
    eventually,
    wait_connected,
)


class TestConnect:
    async def test_token_auth_connects_with_client_id(self, ably_server: EmbeddedServer) -> None:
        """A JWT-authenticated client is CONNECTED and adopts the token's clientId."""
        rt = python_realtime(ably_server, client_id="alice")
        try:
            await wait_connected(rt)
            assert rt.auth.client_id == "alice"
            assert rt.connection.connection_manager.connection_id
        finally:
            await rt.close()

    async def test_fixed_token_without_client_id(self, ably_server: EmbeddedServer) -> None:
        """A static token string with no clientId connects anonymously."""
        rt = python_realtime(ably_server, token=ably_server.mint_token())
        try:
            await wait_connected(rt)
            assert rt.auth.client_id is None
        finally:
            await rt.close()

    @pytest.mark.parametrize("binary", [True, False])
    async def test_both_formats_publish_and_subscribe(
        self, ably_server: EmbeddedServer, binary: bool
    ) -> None:
        """msgpack and JSON clients both get serials from the ACK and their own echo."""
        rt = python_realtime(ably_server, client_id="alice", use_binary_protocol=binary)
        try:
            ch = rt.channels.get("fmt")
            got, listener = collector()
            await ch.subscribe(listener)
            result = await ch.publish("n", {"k": [1, 2]})
            assert len(result.serials) == 1
            await eventually(lambda: len(got) == 1)
            assert got[0].data == {"k": [1, 2]}
            assert got[0].serial == result.serials[0]
            assert got[0].client_id == "alice"
            assert got[0].version.serial == got[0].serial
        finally:
            await rt.close()

    async def test_concurrent_publishes_resolve_with_their_own_serials(
        self, ably_server: EmbeddedServer
    ) -> None:
        """20 publishes in flight at once (their ACKs coalesced, ``count`` > 1): each call gets the
        serial of its own message, as its echo shows."""
        rt = python_realtime(ably_server, client_id="alice")
        try:
            ch = rt.channels.get("many")
            got, listener = collector()
            await ch.subscribe(listener)
            results = await asyncio.gather(*(ch.publish(str(i), "x") for i in range(20)))
            await eventually(lambda: len(got) == 20)
            by_name = {m.name: m.serial for m in got}
            assert [r.serials[0] for r in results] == [by_name[str(i)] for i in range(20)]
        finally:
            await rt.close()

    async def test_binary_data_transcodes_between_formats(self, ably_server: EmbeddedServer) -> None:
        """Bytes from a msgpack publisher reach a JSON subscriber as bytes (base64 on the wire)."""
        pub = python_realtime(ably_server, client_id="p", use_binary_protocol=True)
        sub = python_realtime(ably_server, client_id="s", use_binary_protocol=False)
        try:
            got, listener = collector()
            await sub.channels.get("bin").subscribe(listener)
            await pub.channels.get("bin").publish("b", b"\x00\x01\xffraw")
            await eventually(lambda: len(got) == 1)
            assert got[0].data == b"\x00\x01\xffraw"
            history = await sub.channels.get("bin").history()
            assert history.items[0].data == b"\x00\x01\xffraw"
        finally:
            await pub.close()
            await sub.close()

    async def test_ping_is_echoed(self, ably_server: EmbeddedServer) -> None:
        """connection.ping() completes: the server echoes HEARTBEAT ids."""
        rt = python_realtime(ably_server, client_id="alice")
        try:
            await wait_connected(rt)
            assert await rt.connection.ping() >= 0
        finally:
            await rt.close()


class TestFrames:
    async def test_connected_details(self, ably_server: EmbeddedServer) -> None:
        """CONNECTED carries connectionDetails with the limits the SDKs read."""
        c = await RawClient.connect(ably_server, clientId="bob")
        try:
            connected = c.frames[0]
            details = connected["connectionDetails"]
            assert details["clientId"] == "bob"
            assert details["maxMessageSize"] == 65536
            assert details["connectionKey"] == connected["connectionKey"]
            assert details["connectionStateTtl"] == 5000
            assert details["maxIdleInterval"] > 0
        finally:
            await c.close()

    @pytest.mark.parametrize("fmt", ["json", "msgpack"])
    async def test_echo_precedes_ack_and_ack_has_res(self, ably_server: EmbeddedServer, fmt: str) -> None:
        """The publisher's echo arrives before its ACK; the ACK has msgSerial 0, count and res."""
        c = await RawClient.connect(ably_server, fmt=fmt, clientId="bob")
        try:
            attached = await c.attach("frames")
            assert attached["channelSerial"]
            assert attached["flags"] & (1 << 18)  # SUBSCRIBE granted by default
            await c.publish("frames", [{"name": "a", "data": "x"}, {"name": "b", "data": "y"}])
            echo = await c.expect(MESSAGE)
            ack = await c.expect(ACK)
            assert ack["msgSerial"] == 0
            assert ack["count"] == 1
            serials = ack["res"][0]["serials"]
            assert [m["serial"] for m in echo["messages"]] == serials
            assert serials == sorted(serials)
            assert echo["channelSerial"] == serials[0].rsplit(":", 1)[0]
            assert all(m["clientId"] == "bob" and m["action"] == 0 for m in echo["messages"])
        finally:
            await c.close()

    @pytest.mark.parametrize("fmt", ["json", "msgpack"])
    async def test_frames_read_together_are_acked_together(
        self, ably_server: EmbeddedServer, fmt: str
    ) -> None:
        """Three MESSAGE frames written in one go (handled in one server loop turn) get one ACK:
        msgSerial 0, count 3, one res entry per frame in msgSerial order, after all three echoes."""
        c = await RawClient.connect(ably_server, fmt=fmt, clientId="bob")
        try:
            await c.attach("batched")
            await asyncio.gather(*(c.publish("batched", [{"name": str(i), "data": "x"}]) for i in range(3)))
            echoes = [await c.expect(MESSAGE) for _ in range(3)]
            ack = await c.expect(ACK)
            assert (ack["msgSerial"], ack["count"]) == (0, 3)
            assert [r["serials"] for r in ack["res"]] == [[e["messages"][0]["serial"]] for e in echoes]
            assert [e["messages"][0]["name"] for e in echoes] == ["0", "1", "2"]
        finally:
            await c.close()

    async def test_nack_keeps_its_place_between_coalesced_acks(self, ably_server: EmbeddedServer) -> None:
        """A refused frame between accepted ones: ACK 0, NACK 1, ACK 2, in msgSerial order."""
        c = await RawClient.connect(ably_server, clientId="bob")
        try:
            await c.attach("mixed")
            await asyncio.gather(
                c.publish("mixed", [{"data": "ok"}]),
                c.publish("mixed", [{"data": "forged", "clientId": "mallory"}]),
                c.publish("mixed", [{"data": "ok too"}]),
            )
            acks: list[tuple[int, int, int]] = []
            while len(acks) < 3:
                frame = await c.recv()
                assert frame is not None
                if frame["action"] in (ACK, NACK):
                    acks.append((frame["action"], frame["msgSerial"], frame["count"]))
            assert acks == [(ACK, 0, 1), (NACK, 1, 1), (ACK, 2, 1)]
        finally:
            await c.close()

    async def test_echo_false_suppresses_own_messages(self, ably_server: EmbeddedServer) -> None:
        """With echo=false a connection gets the ACK but not its own message."""
        c = await RawClient.connect(ably_server, echo="false")
        try:
            await c.attach("quiet")
            await c.publish("quiet", [{"data": "x"}])
            ack = await c.expect(ACK)
            assert ack["res"][0]["serials"]
        finally:
            await c.close()

    async def test_heartbeat_ping_and_close(self, ably_server: EmbeddedServer) -> None:
        """A HEARTBEAT with an id is echoed; CLOSE is answered with CLOSED."""
        c = await RawClient.connect(ably_server)
        try:
            await c.send({"action": HEARTBEAT, "id": "p1"})
            assert (await c.expect(HEARTBEAT))["id"] == "p1"
            await c.send({"action": CLOSE})
            await c.expect(CLOSED)
            assert await c.closed()
        finally:
            await c.close()

    async def test_detach(self, ably_server: EmbeddedServer) -> None:
        """DETACH is answered with DETACHED and stops delivery."""
        c = await RawClient.connect(ably_server)
        other = await RawClient.connect(ably_server)
        try:
            await c.attach("d")
            await c.send({"action": DETACH, "channel": "d"})
            assert (await c.expect(DETACHED))["channel"] == "d"
            await other.publish("d", [{"data": "after"}])
            await other.expect(ACK)
            await c.send({"action": HEARTBEAT, "id": "sync"})
            # Nothing from the channel arrives before the ping echo.
            assert (await c.expect(HEARTBEAT))["id"] == "sync"
        finally:
            await c.close()
            await other.close()

    async def test_reattach_on_live_connection_is_resumed(self, ably_server: EmbeddedServer) -> None:
        """A second ATTACH with the last channelSerial on a live attachment gets RESUMED, no replay."""
        c = await RawClient.connect(ably_server)
        try:
            first = await c.attach("again")
            assert not first["flags"] & RESUMED
            await c.publish("again", [{"data": "1"}])
            echo = await c.expect(MESSAGE)
            await c.expect(ACK)
            again = await c.attach("again", channelSerial=echo["channelSerial"])
            assert again["flags"] & RESUMED
            assert again["channelSerial"] == echo["channelSerial"]
            await c.send({"action": HEARTBEAT, "id": "end"})
            assert (await c.expect(HEARTBEAT))["id"] == "end"
        finally:
            await c.close()

    async def test_attach_with_unknown_serial_is_not_resumed(self, ably_server: EmbeddedServer) -> None:
        """An unusable channelSerial attaches at the head without RESUMED and with an error."""
        c = await RawClient.connect(ably_server)
        try:
            attached = await c.attach("fresh", channelSerial="00000000000001-000@otherseries")
            assert not attached["flags"] & RESUMED
            assert attached["error"]["code"] == 90005
            assert attached["channelSerial"].endswith(attached["channelSerial"].split("@")[1])
        finally:
            await c.close()

    async def test_rewind_replays_recent_messages(self, ably_server: EmbeddedServer) -> None:
        """params.rewind=N on a fresh attach replays the last N messages in order."""
        pub = await RawClient.connect(ably_server)
        sub = await RawClient.connect(ably_server)
        try:
            for i in range(3):
                await pub.publish("rw", [{"data": f"m{i}"}])
                await pub.expect(ACK)
            attached = await sub.attach("rw", params={"rewind": "2"})
            assert attached["params"] == {"rewind": "2"}
            replay = await sub.expect(MESSAGE)
            assert [m["data"] for m in replay["messages"]] == ["m1", "m2"]
        finally:
            await pub.close()
            await sub.close()


async def test_attached_channel_serial_marks_attach_point(ably_server: EmbeddedServer) -> None:
    """ATTACHED carries the serial of the last message before the attach (untilAttach's bound)."""
    pub = await RawClient.connect(ably_server)
    try:
        await pub.publish("ap", [{"data": "before"}])
        ack = await pub.expect(ACK)
        sub = await RawClient.connect(ably_server)
        try:
            attached = await sub.attach("ap")
            assert attached["channelSerial"] == ack["res"][0]["serials"][0].rsplit(":", 1)[0]
            assert attached["frames" if False else "action"] == ATTACHED
        finally:
            await sub.close()
    finally:
        await pub.close()


async def test_custom_keys_and_stop_is_idempotent() -> None:
    """Configured keys are the only ones accepted; stop() twice is harmless."""
    server = EmbeddedServer(ServerConfig(keys=["app.k1:s1"]))
    await server.start()
    try:
        assert server.keys == ["app.k1:s1"]
        assert server.default_key == "app.k1:s1"
        ok = await RawClient.connect(server, key="app.k1:s1")
        await ok.close()
        bad = await RawClient.connect(server, key="app.k1:wrong", expect_connected=False)
        err = await bad.expect(9)
        assert err["error"]["code"] == 40101
        await bad.close()
    finally:
        await server.stop()
        await server.stop()
    with pytest.raises(RuntimeError):
        await server.start()


async def test_many_clients_in_parallel(ably_server: EmbeddedServer) -> None:
    """Several SDK clients publish concurrently; every subscriber sees every message once, in order."""
    clients = [python_realtime(ably_server, client_id=f"c{i}") for i in range(4)]
    try:
        received: list[list[str]] = [[] for _ in clients]
        for i, c in enumerate(clients):
            await c.channels.get("par").subscribe(lambda m, i=i: received[i].append(m.serial))
        await asyncio.gather(
            *(c.channels.get("par").publish("n", f"{i}-{j}") for i, c in enumerate(clients) for j in range(5))
        )
        await eventually(lambda: all(len(r) == 20 for r in received))
        assert all(r == received[0] for r in received)
        assert received[0] == sorted(received[0])
    finally:
        for c in clients:
            await c.close()


async def test_protocol_heartbeats_keep_idle_python_client_alive() -> None:
    """Protocol HEARTBEATs arrive unprompted and keep ably-python's idle timer from firing."""
    config = ServerConfig(max_idle_interval_ms=300, heartbeat_interval_ms=100)
    async with EmbeddedServer(config) as server:
        raw = await RawClient.connect(server)
        try:
            frame = await raw.ws.receive(timeout=5)
            assert frame.json() == {"action": HEARTBEAT}
        finally:
            await raw.close()
        rt = python_realtime(server, client_id="idle", realtime_request_timeout=300)
        try:
            await wait_connected(rt)
            connection_id = rt.connection.connection_manager.connection_id
            states, on_state = collector()
            rt.connection.on(on_state)
            await asyncio.sleep(1.5)  # several idle windows (300 + 300 ms) with no traffic of our own
            assert states == [], "no disconnect while heartbeats flow"
            assert rt.connection.connection_manager.connection_id == connection_id
        finally:
            await rt.close()
