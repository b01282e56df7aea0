"""Auth as Ably does it: whole-segment wildcards, capabilities re-evaluated on re-auth, a fixed
clientId, a maximum token lifetime, and a dev token endpoint that refuses wildcards and strangers."""

from __future__ import annotations

import time
from unittest import mock

import jwt
from aiohttp.test_utils import make_mocked_request

from agent_worker.client.tokens import make_token_handler
from agent_worker.server import EmbeddedServer
from agent_worker.server.auth import resource_matches
from agent_worker.server.config import DEFAULT_DEV_KEY
from tests.server.server_support import ATTACH, ATTACHED, DETACHED, ERROR, MESSAGE, RawClient

AUTH = 17


def test_wildcards_replace_whole_segments_only() -> None:
    """`conversations:alice-*` used to be a prefix match (granting more than written, and a scheme
    that fails on Ably); a `*` stands for whole segments only."""
    assert not resource_matches("conversations:alice-*", "conversations:alice-1")
    assert resource_matches("conversations:alice-*", "conversations:alice-*")
    assert resource_matches("conversations:alice:*", "conversations:alice:1:2")
    assert not resource_matches("conversations:*", "conversationsx:1")
    assert not resource_matches("chat*", "chat:1")


async def test_prefix_pattern_does_not_grant_attach(ably_server: EmbeddedServer) -> None:
    token = ably_server.mint_token("alice", {"conversations:alice-*": ["*"]})
    c = await RawClient.connect(ably_server, accessToken=token)
    try:
        await c.send({"action": ATTACH, "channel": "conversations:alice-1"})
        assert (await c.expect(ERROR))["error"]["code"] == 40160
    finally:
        await c.close()


async def test_reauth_with_less_access_detaches_lost_channels(ably_server: EmbeddedServer) -> None:
    """A token renewed with less access used to keep receiving the channels it lost; now they are
    DETACHED with 40160 and nothing more is delivered on them."""
    both = {"room:a": ["subscribe", "publish"], "room:b": ["subscribe", "publish"]}
    c = await RawClient.connect(ably_server, accessToken=ably_server.mint_token("alice", both))
    pub = await RawClient.connect(ably_server, clientId="pub")
    try:
        await c.attach("room:a")
        await c.attach("room:b")
        await c.send(
            {"action": AUTH, "auth": {"accessToken": ably_server.mint_token("alice", {"room:a": ["*"]})}}
        )
        frames = [await c.recv(), await c.recv()]
        detached = [f for f in frames if f is not None and f["action"] == DETACHED]
        assert detached and detached[0]["channel"] == "room:b" and detached[0]["error"]["code"] == 40160
        await pub.publish("room:b", [{"name": "n", "data": "secret"}])
        await pub.publish("room:a", [{"name": "n", "data": "public"}])
        while True:
            frame = await c.recv()
            assert frame is not None
            if frame["action"] == MESSAGE:
                assert frame["channel"] == "room:a"
                break
    finally:
        await c.close()
        await pub.close()


async def test_anonymous_connection_cannot_become_someone(ably_server: EmbeddedServer) -> None:
    c = await RawClient.connect(ably_server, accessToken=ably_server.mint_token(None))
    try:
        await c.send({"action": AUTH, "auth": {"accessToken": ably_server.mint_token("alice")}})
        assert (await c.expect(ERROR))["error"]["code"] == 40102
    finally:
        await c.close()


async def test_tokens_beyond_the_maximum_lifetime_are_refused(ably_server: EmbeddedServer) -> None:
    """A JWT valid for 10 years used to be accepted; the maximum is 24 h, as for Ably tokens."""
    name, secret = DEFAULT_DEV_KEY.split(":", 1)
    now = int(time.time())
    claims = {"iat": now, "exp": now + 10 * 365 * 86400, "x-ably-capability": '{"*":["*"]}'}
    token = jwt.encode(claims, secret, algorithm="HS256", headers={"kid": name})
    c = await RawClient.connect(ably_server, accessToken=token, expect_connected=False)
    try:
        assert (await c.expect(ERROR))["error"]["code"] == 40003
    finally:
        await c.close()
    ok = await RawClient.connect(ably_server, accessToken=ably_server.mint_token("a", ttl_s=86_000))
    await ok.send({"action": ATTACH, "channel": "x"})
    assert (await ok.expect(ATTACHED))["channel"] == "x"
    await ok.close()


def _request(path: str, remote: str) -> object:
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        (remote, 5555) if name == "peername" else default
    )
    return make_mocked_request("GET", path, transport=transport)


async def test_dev_token_endpoint_refuses_wildcards_and_non_loopback() -> None:
    handler = make_token_handler(DEFAULT_DEV_KEY)
    wildcard = await handler(_request("/api/auth/token?clientId=*", "127.0.0.1"))  # type: ignore[arg-type]
    assert wildcard.status == 400
    remote = await handler(_request("/api/auth/token?clientId=bob", "10.1.2.3"))  # type: ignore[arg-type]
    assert remote.status == 403
    local = await handler(_request("/api/auth/token?clientId=bob", "127.0.0.1"))  # type: ignore[arg-type]
    assert local.status == 200
