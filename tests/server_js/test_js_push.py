"""ably-js 2.28's push admin API (``client.push.admin``) against the embedded server, delivering by
Web Push to a local receiver that decrypts with the subscription's keys."""

from __future__ import annotations

import pytest

from tests.push_support import WebPushReceiver
from tests.server_js.server_js_support import ServerFactory, run_script

pytestmark = pytest.mark.node


@pytest.mark.parametrize("protocol", ["json", "msgpack"])
async def test_ably_js_push_admin(make_server: ServerFactory, protocol: str) -> None:
    server = await make_server(push_allow_loopback_http=True)
    async with WebPushReceiver() as receiver:
        result = await run_script(
            "push.mjs",
            server,
            protocol,
            adminToken=server.mint_token("backend", {"*": ["push-admin"]}),
            aliceToken=server.mint_token("alice", {"*": ["push-subscribe"]}),
            nobodyToken=server.mint_token("nobody", {"*": ["subscribe"]}),
            recipient=receiver.web_recipient(),
        )
        got = await receiver.next()
    assert result["saved"] == {
        "id": "js-device-1",
        "clientId": "alice",
        "state": "ACTIVE",
        "transport": "web",
    }
    assert result["got"]["targetUrl"] == receiver.web_recipient()["targetUrl"]
    assert result["listed"] == ["js-device-1"]
    assert got.payload == {
        "notification": {"title": "From ably-js", "body": "hello"},
        "data": {"sessionId": "js"},
    }
    assert result["noCapability"]["code"] == 40160
    assert result["subscriberPublish"]["code"] == 40160
    assert result["fcm"]["code"] == 40000 and "FCM" in result["fcm"]["message"]
    assert result["missing"]["code"] == 40400
    assert result["afterRemove"] == []
    assert receiver.received == []
