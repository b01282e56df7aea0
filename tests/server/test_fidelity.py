"""ably-python (and the pure auth core) see Ably's behaviour where an app can tell (issue 16)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from ably.types.channelmode import ChannelMode
from ably.types.channeloptions import ChannelOptions
from ably.types.message import Message
from ably.util.exceptions import AblyException

from agent_worker.errors import AuthError
from agent_worker.server import EmbeddedServer, ServerConfig
from agent_worker.server.auth import ApiKey, Capability, KeyRing
from agent_worker.server.channel_rules import ChannelRule, rules_for_sessions
from agent_worker.server.testing import python_realtime, python_rest
from tests.server.server_support import CONNECTED, MESSAGE, RawClient, collector

HAS_BACKLOG, ATTACH_RESUME = 1 << 1, 1 << 5


def test_token_expiry_is_kept_to_the_millisecond() -> None:
    """A 1 ms token is expired 2 ms later (it used to live until the next whole second)."""
    ring = KeyRing([ApiKey.parse("app.k:secret-long-enough-for-hs256-xxxxxxxxxxxx")])
    now = 1_000_000_000_500
    token, claims = ring.mint(ttl_ms=1, now_ms=now)
    assert claims.expires_ms == now + 1
    assert ring.verify_token(token, now).expires_ms == now + 1
    with pytest.raises(AuthError) as err:
        ring.verify_token(token, now + 2)
    assert err.value.code == 40142


@pytest.mark.parametrize("ops", [["*", "publish"], ["publish_"], []])
def test_invalid_capabilities_are_refused_with_400(ops: list[str]) -> None:
    with pytest.raises(AuthError) as err:
        Capability.parse({"channel0": ops})
    assert (err.value.code, err.value.status_code) == (40000, 400)


@pytest.mark.parametrize(
    ("token", "key", "expected"),
    [
        ({"ns:*": ["*"]}, {"ns:a:*": ["publish"]}, {"ns:a:*": ["publish"]}),
        ({"ns:a:*": ["publish", "subscribe"]}, {"ns:*": ["subscribe"]}, {"ns:a:*": ["subscribe"]}),
        ({"ns:a:b": ["*"]}, {"ns:*": ["*"]}, {"ns:a:b": ["*"]}),
        ({"channel2": ["*"]}, {"channel2": ["publish", "subscribe"]}, {"channel2": ["publish", "subscribe"]}),
    ],
)
def test_capability_intersection_keeps_nested_namespaces(
    token: dict[str, list[str]], key: dict[str, list[str]], expected: dict[str, list[str]]
) -> None:
    assert Capability.parse(token).restrict_to(Capability.parse(key)).to_dict() == expected


def test_rules_for_the_worker_sessions() -> None:
    assert rules_for_sessions(["*"]) == (ChannelRule("*", mutable_messages=True),)
    assert rules_for_sessions(["conversations:*", "support:team-*"]) == (
        ChannelRule("conversations", mutable_messages=True),
        ChannelRule("support", mutable_messages=True),
    )
    assert ChannelRule.parse("chat=mutable,identified") == ChannelRule(
        "chat", mutable_messages=True, identified_only=True
    )


async def test_ably_python_subscribe_only_attachment_cannot_publish(ably_server: EmbeddedServer) -> None:
    rt = python_realtime(ably_server, client_id="reader")
    try:
        ch = rt.channels.get("fid:modes", ChannelOptions(modes=[ChannelMode.SUBSCRIBE]))
        await ch.attach()
        with pytest.raises(AblyException) as err:
            await ch.publish("n", "x")
        assert (err.value.code, err.value.status_code) == (40165, 401)
        with pytest.raises(AblyException) as err:
            await ch.presence.enter("here")
        assert err.value.code == 40165
    finally:
        await rt.close()


async def test_ably_python_append_needs_the_mutable_rule() -> None:
    config = ServerConfig(port=0, channel_rules=(ChannelRule("conversations", mutable_messages=True),))
    async with EmbeddedServer(config) as server:
        rt = python_realtime(server, client_id="writer")
        try:
            plain = rt.channels.get("fid:plain")
            serial = (await plain.publish("n", "te")).serials[0]
            with pytest.raises(AblyException) as err:
                await plain.append_message(Message(serial=serial, data="xt"))
            assert (err.value.code, err.value.status_code) == (93002, 400)
            mutable = rt.channels.get("conversations:fid")
            serial = (await mutable.publish("n", "te")).serials[0]
            assert (await mutable.append_message(Message(serial=serial, data="xt"))).version_serial
        finally:
            await rt.close()


async def test_rewind_backlog_flag_and_attach_resume_over_the_wire(ably_server: EmbeddedServer) -> None:
    """HAS_BACKLOG only when a rewind has something to send; ATTACH_RESUME or a channelSerial
    suppress the rewind (the client was attached before)."""
    rest = python_rest(ably_server)
    try:
        await rest.channels.get("fid:rw").publish("n", "one")
    finally:
        await rest.close()
    cases: list[tuple[str, dict[str, Any], bool, str]] = [
        ("fid:rw", {}, True, "one"),
        ("fid:empty", {}, False, "marker"),
        ("fid:rw", {"flags": ATTACH_RESUME}, False, "marker"),
        ("fid:rw", {"channelSerial": "00000000000000-000@elsewhere"}, False, "marker"),
    ]
    for channel, extra, backlog, first in cases:
        conn = await RawClient.connect(ably_server)
        try:
            attached = await conn.attach(channel, params={"rewind": "5"}, **extra)
            assert bool(attached["flags"] & HAS_BACKLOG) is backlog, (channel, extra)
            # Whatever the rewind sends comes before the echo of a publish made after the attach.
            await conn.publish(channel, [{"name": "n", "data": "marker"}])
            frame = await conn.expect(MESSAGE)
            assert frame["messages"][0]["data"] == first, (channel, extra)
        finally:
            await conn.close()


async def test_ably_python_history_without_persistence_rule_is_short() -> None:
    config = ServerConfig(
        port=0, channel_rules=(ChannelRule("kept", persisted=True),), unpersisted_history_ms=300
    )
    async with EmbeddedServer(config) as server:
        rest = python_rest(server)
        try:
            await rest.channels.get("gone:x").publish("n", "a")
            await rest.channels.get("kept:x").publish("n", "b")
            await asyncio.sleep(0.6)
            assert (await rest.channels.get("gone:x").history()).items == []
            assert [m.data for m in (await rest.channels.get("kept:x").history()).items] == ["b"]
        finally:
            await rest.close()


async def test_restricted_key_from_config_scopes_its_tokens() -> None:
    key = "app.narrow:narrow-secret-long-enough-xxxxxxxxxxxxxxxxx"
    config = ServerConfig(port=0, keys=[key], key_capabilities={"app.narrow": '{"team:*":["subscribe"]}'})
    async with EmbeddedServer(config) as server:
        rt = python_realtime(server, client_id="member", capability={"*": ["*"]})
        try:
            _, listener = collector()
            await rt.channels.get("team:a").subscribe(listener)
            with pytest.raises(AblyException) as err:
                await rt.channels.get("team:a").publish("n", "x")
            assert err.value.code == 40160
            with pytest.raises(AblyException) as err:
                await rt.channels.get("other").attach()
            assert err.value.code == 40160
        finally:
            await rt.close()
        # Tokens minted for the key are narrowed to its capability, nested namespaces included.
        details = server.token_details(capability={"team:x:*": ["*"]})
        assert details["capability"] == '{"team:x:*":["subscribe"]}'


async def test_connection_keys_are_recognised_across_a_restart() -> None:
    """A key this server (or its predecessor with the same API key) issued, whose connection is gone,
    is 80008; a key it never issued is 80018 — both answered with a new connection."""
    async with EmbeddedServer(ServerConfig(port=0)) as first:
        raw = await RawClient.connect(first)
        old_key, old_id = raw.connection_key, raw.connection_id
        await raw.close()
    async with EmbeddedServer(ServerConfig(port=0)) as second:
        for key, code in ((old_key, 80008), (old_key.replace("!", "!x", 1), 80018), ("no-bang", 80018)):
            conn = await RawClient.connect(second, expect_connected=False, resume=key)
            try:
                connected = await conn.expect(CONNECTED)
                assert connected["error"]["code"] == code, key
                assert connected["connectionId"] != old_id
            finally:
                await conn.close()
