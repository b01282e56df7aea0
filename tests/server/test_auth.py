"""Auth: capabilities (incl. a token scoped to ``conversations:alice:*``), clientId rules, bad tokens."""

from __future__ import annotations

import base64
import time

import aiohttp
import jwt
import pytest
from ably.types.message import Message
from ably.util.exceptions import AblyException

from agent_worker.errors import AgentWorkerError
from agent_worker.server import EmbeddedServer
from agent_worker.server.auth import ApiKey, Capability, KeyRing, resource_matches
from agent_worker.server.testing import python_realtime
from tests.server.server_support import (
    ACK,
    ATTACH,
    ERROR,
    MESSAGE,
    NACK,
    PRESENCE,
    RawClient,
    collector,
    eventually,
    wait_connected,
)

ALICE_ONLY = {"conversations:alice:*": ["*"]}


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + base64.b64encode(token.encode()).decode()}


class TestScopedToken:
    async def test_alice_scope_works_on_own_channels(self, ably_server: EmbeddedServer) -> None:
        """A token for conversations:alice:* can attach, publish and read history there."""
        rt = python_realtime(ably_server, client_id="alice", capability=ALICE_ONLY)
        try:
            ch = rt.channels.get("conversations:alice:42")
            got, listener = collector()
            await ch.subscribe(listener)
            await ch.publish("n", "mine")
            await eventually(lambda: len(got) == 1)
            assert [m.data for m in (await ch.history()).items] == ["mine"]
        finally:
            await rt.close()

    async def test_alice_scope_cannot_attach_elsewhere(self, ably_server: EmbeddedServer) -> None:
        """Attaching to another user's channel fails the channel with 40160."""
        rt = python_realtime(ably_server, client_id="alice", capability=ALICE_ONLY)
        try:
            with pytest.raises(AblyException) as info:
                await rt.channels.get("conversations:bob-1").attach()
            assert info.value.code == 40160
            # The connection itself is unaffected.
            await rt.channels.get("conversations:alice:1").publish("n", "still fine")
        finally:
            await rt.close()

    async def test_alice_scope_cannot_publish_elsewhere(self, ably_server: EmbeddedServer) -> None:
        """Publishing to another channel without attaching is NACKed with 40160."""
        rt = python_realtime(ably_server, client_id="alice", capability=ALICE_ONLY)
        try:
            await wait_connected(rt)
            with pytest.raises(AblyException) as info:
                await rt.channels.get("conversations:bob-1").publish("n", "sneaky")
            assert info.value.code == 40160
            assert ably_server.hub.channel("conversations:bob-1").log.order == []
        finally:
            await rt.close()

    async def test_alice_scope_cannot_read_history_elsewhere(self, ably_server: EmbeddedServer) -> None:
        """History (via the SDK and raw REST) of another channel is refused with 40160."""
        rt = python_realtime(ably_server, client_id="alice", capability=ALICE_ONLY)
        try:
            with pytest.raises(AblyException) as info:
                await rt.channels.get("conversations:bob-1").history()
            assert info.value.code == 40160
        finally:
            await rt.close()
        token = ably_server.mint_token(client_id="alice", capability=ALICE_ONLY)
        url = f"http://{ably_server.endpoint}/channels/conversations:bob-1/messages"
        async with aiohttp.ClientSession() as http, http.get(url, headers=_bearer(token)) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["code"] == 40160


class TestOperations:
    async def test_subscribe_only_token(self, ably_server: EmbeddedServer) -> None:
        """subscribe-only: attach grants no PUBLISH/PRESENCE mode; publish and enter are NACKed."""
        token = ably_server.mint_token(client_id="sub", capability={"*": ["subscribe"]})
        c = await RawClient.connect(ably_server, accessToken=token)
        try:
            attached = await c.attach("ro")
            assert attached["flags"] & (1 << 18) and not attached["flags"] & ((1 << 17) | (1 << 16))
            await c.publish("ro", [{"data": "x"}])
            assert (await c.expect(NACK))["error"]["code"] == 40160
            await c.send({"action": PRESENCE, "channel": "ro", "msgSerial": 1, "presence": [{"action": 2}]})
            assert (await c.expect(NACK))["error"]["code"] == 40160
        finally:
            await c.close()

    async def test_update_own_versus_any(self, ably_server: EmbeddedServer) -> None:
        """message-update-own lets alice append to her message but not bob to hers."""
        caps = {"*": ["publish", "subscribe", "message-update-own"]}
        alice = await RawClient.connect(
            ably_server, accessToken=ably_server.mint_token("alice", caps), echo="false"
        )
        bob = await RawClient.connect(
            ably_server, accessToken=ably_server.mint_token("bob", caps), echo="false"
        )
        try:
            await alice.publish("own", [{"data": "a"}])
            serial = (await alice.expect(ACK))["res"][0]["serials"][0]
            await alice.publish("own", [{"action": 5, "serial": serial, "data": "b"}])
            assert (await alice.expect(ACK))["res"][0]["serials"][0] > serial
            await bob.publish("own", [{"action": 5, "serial": serial, "data": "x"}])
            assert (await bob.expect(NACK))["error"]["code"] == 40160
            assert ably_server.hub.channel("own").log.records[serial].content["data"] == "ab"
        finally:
            await alice.close()
            await bob.close()


class TestClientId:
    async def test_publishing_as_someone_else_is_40012(self, ably_server: EmbeddedServer) -> None:
        """A message asserting a different clientId is NACKed with 40012."""
        c = await RawClient.connect(ably_server, accessToken=ably_server.mint_token("alice"))
        try:
            await c.publish("cid", [{"data": "x", "clientId": "mallory"}])
            assert (await c.expect(NACK))["error"]["code"] == 40012
            await c.publish("cid", [{"data": "ok", "clientId": "alice"}])
            assert (await c.expect(ACK))["msgSerial"] == 1
        finally:
            await c.close()

    async def test_requested_client_id_must_match_token(self, ably_server: EmbeddedServer) -> None:
        """Connecting with clientId=bob on alice's token is refused with 40102."""
        c = await RawClient.connect(
            ably_server, accessToken=ably_server.mint_token("alice"), clientId="bob", expect_connected=False
        )
        try:
            assert (await c.expect(ERROR))["error"]["code"] == 40102
            assert await c.closed()
        finally:
            await c.close()

    async def test_wildcard_token_lets_client_choose(self, ably_server: EmbeddedServer) -> None:
        """A clientId '*' token connects as the requested id and may publish as others."""
        c = await RawClient.connect(ably_server, accessToken=ably_server.mint_token("*"), clientId="chosen")
        try:
            assert c.frames[0]["connectionDetails"]["clientId"] == "chosen"
            await c.attach("wild")
            await c.publish("wild", [{"data": "x", "clientId": "other"}])
            assert (await c.expect(MESSAGE))["messages"][0]["clientId"] == "other"
        finally:
            await c.close()

    async def test_basic_key_with_client_id(self, ably_server: EmbeddedServer) -> None:
        """Basic (key) auth adopts the clientId query param and stamps it on messages."""
        c = await RawClient.connect(ably_server, clientId="keyed")
        try:
            await c.attach("basic")
            await c.publish("basic", [{"data": "x"}])
            assert (await c.expect(MESSAGE))["messages"][0]["clientId"] == "keyed"
        finally:
            await c.close()


class TestBadTokens:
    @pytest.mark.parametrize(
        ("make", "code"),
        [
            (lambda s: "not-a-jwt", 40143),
            (lambda s: "a.b.c", 40144),
            (lambda s: s.mint_token("x", ttl_s=-10), 40142),
            (lambda s: s.mint_token("x")[:-4] + "AAAA", 40144),
            (
                lambda s: jwt.encode(
                    {"exp": int(time.time()) + 60, "x-ably-capability": '{"*":["*"]}'},
                    "a-secret-of-another-app-long-enough-for-hs256",
                    algorithm="HS256",
                    headers={"kid": "other.key"},
                ),
                40101,
            ),
        ],
        ids=["opaque", "garbage-jwt", "expired", "bad-signature", "unknown-kid"],
    )
    async def test_realtime_and_rest_refuse(
        self, ably_server: EmbeddedServer, make: object, code: int
    ) -> None:
        """Invalid or expired tokens are refused with Ably's codes on both WebSocket and REST."""
        token = make(ably_server)  # type: ignore[operator]
        c = await RawClient.connect(ably_server, accessToken=token, expect_connected=False)
        try:
            assert (await c.expect(ERROR))["error"]["code"] == code
        finally:
            await c.close()
        url = f"http://{ably_server.endpoint}/channels/x/messages"
        async with aiohttp.ClientSession() as http, http.get(url, headers=_bearer(token)) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["code"] == code

    async def test_inband_auth_with_bad_token_is_refused(self, ably_server: EmbeddedServer) -> None:
        """AUTH with an expired token gets an ERROR; other connections are unaffected."""
        c = await RawClient.connect(ably_server, accessToken=ably_server.mint_token("a"))
        other = await RawClient.connect(ably_server)
        try:
            await c.send({"action": 17, "auth": {"accessToken": ably_server.mint_token("a", ttl_s=-5)}})
            assert (await c.expect(ERROR))["error"]["code"] == 40142
            await other.send({"action": ATTACH, "channel": "still"})
            await other.expect(11)
        finally:
            await c.close()
            await other.close()

    async def test_inband_auth_cannot_change_client_id(self, ably_server: EmbeddedServer) -> None:
        """AUTH with a token for another clientId is refused with 40102."""
        c = await RawClient.connect(ably_server, accessToken=ably_server.mint_token("a"))
        try:
            await c.send({"action": 17, "auth": {"accessToken": ably_server.mint_token("b")}})
            assert (await c.expect(ERROR))["error"]["code"] == 40102
        finally:
            await c.close()


def test_resource_matching() -> None:
    """Capability resource patterns: *, ns:*, one-segment *, trailing prefix glob, qualifiers."""
    assert resource_matches("*", "anything:at:all")
    assert resource_matches("conversations:*", "conversations:a:b")
    assert not resource_matches("conversations:*", "conversations")
    assert resource_matches("a:*:c", "a:b:c") and not resource_matches("a:*:c", "a:b:d")
    assert resource_matches("conversations:alice:*", "conversations:alice:1")
    assert not resource_matches("conversations:alice:*", "conversations:bob-1")
    assert resource_matches("[*]*", "x")
    cap = Capability.parse('{"chat:*":["publish"],"*":["subscribe"]}')
    assert cap.ops_for("chat:1") == {"publish", "subscribe"}
    assert cap.ops_for("other") == {"subscribe"}
    assert Capability.parse(cap.canonical()) == cap


async def test_python_client_message_with_foreign_client_id_refused(ably_server: EmbeddedServer) -> None:
    """Through the SDK: a wildcard-less client cannot publish as someone else."""
    rt = python_realtime(ably_server, client_id="alice")
    try:
        with pytest.raises(AblyException) as info:
            await rt.channels.get("x").publish(Message(name="n", data="d", client_id="bob"))
        assert info.value.code == 40012
    finally:
        await rt.close()


def test_verified_tokens_are_remembered_but_the_clock_is_checked_each_time() -> None:
    """A token is verified once (a worker presents the same one on every connection and REST
    request); its expiry and lifetime are still judged against the clock at every use, and any
    other string, a re-signed or truncated one included, is verified from scratch."""
    ring = KeyRing([ApiKey.parse("app.key:secret-one"), ApiKey.parse("app.other:secret-two")])
    now = 1_764_000_000_000
    token, _ = ring.mint(client_id="alice", ttl_ms=60_000, now_ms=now)
    first = ring.verify_token(token, now)
    assert ring.verify_token(token, now + 1_000) is first  # remembered
    assert first.client_id == "alice" and first.expires_ms == now + 60_000
    with pytest.raises(AgentWorkerError) as expired:
        ring.verify_token(token, now + 60_000)
    assert expired.value.code == 40142
    head, payload, _sig = token.split(".")
    with pytest.raises(AgentWorkerError) as forged:
        ring.verify_token(f"{head}.{payload}.{'A' * 43}", now)
    assert forged.value.code == 40144
    with pytest.raises(AgentWorkerError) as truncated:
        ring.verify_token(token[:-2], now)
    assert truncated.value.code == 40144
    other, _ = ring.mint(key=ring.get("app.other"), client_id="bob", now_ms=now)
    assert ring.verify_token(other, now).client_id == "bob"
