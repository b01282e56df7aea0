"""What one request may make the server do and hold: messages per publish (40034) and members per
presence set (91003), as Ably bounds them. Found by acting as an attacker: Ably's size rule counts
only name, data, clientId and extras, so 200,000 empty messages fit in one 800 KB REST body — one
publish held the event loop 3.2 s (every other client stalled) and made 200,000 records; and a
wildcard-clientId token entered members into one channel's presence set without end."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from agent_worker.errors import ProtocolError
from agent_worker.limits import loads_json
from agent_worker.server import EmbeddedServer, ServerConfig
from agent_worker.server.config import DEFAULT_DEV_KEY
from tests.server.server_support import ACK, ERROR, MESSAGE, NACK, PRESENCE, RawClient


async def _rest_publish(server: EmbeddedServer, channel: str, body: Any) -> tuple[int, Any]:
    auth = aiohttp.BasicAuth(*DEFAULT_DEV_KEY.split(":", 1))
    url = f"http://{server.endpoint}/channels/{channel}/messages"
    headers = {"Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, data=json.dumps(body), auth=auth, headers=headers) as resp,
    ):
        return resp.status, await resp.json()


async def test_too_many_messages_in_one_publish_are_refused_with_40034() -> None:
    async with EmbeddedServer(ServerConfig(port=0)) as server:
        status, body = await _rest_publish(server, "flood", [{}] * 200_000)
        assert (status, body["error"]["code"]) == (400, 40034)
        assert "200000" in body["error"]["message"] and "1000" in body["error"]["message"]
        assert server.hub.channels["flood"].log.order == [], "nothing was stored"
        status, body = await _rest_publish(server, "flood", [{"data": "x"}] * 1000)
        assert status == 201 and len(body["serials"]) == 1000
        c = await RawClient.connect(server, clientId="u", echo="false")
        try:
            await c.publish("flood", [{}] * 1001)
            nack = await c.expect(NACK)
            assert nack["error"]["code"] == 40034
            await c.publish("flood", [{"data": "y"}])  # the connection carries on
            await c.expect(ACK)
        finally:
            await c.close()


async def test_a_presence_set_is_capped_with_91003() -> None:
    async with EmbeddedServer(ServerConfig(port=0, max_presence_members=3)) as server:
        token = server.mint_token(client_id="*")
        c = await RawClient.connect(server, accessToken=token, clientId="a")
        try:
            await c.attach("room")

            async def enter(*client_ids: str, action: int = 2) -> dict[str, Any]:
                serial = c.msg_serial
                c.msg_serial += 1
                presence = [{"action": action, "clientId": cid} for cid in client_ids]
                await c.send(
                    {"action": PRESENCE, "channel": "room", "msgSerial": serial, "presence": presence}
                )
                while True:  # (its own PRESENCE events come first)
                    frame = await c.recv()
                    assert frame is not None
                    if frame["action"] in (ACK, NACK) and frame["msgSerial"] == serial:
                        return frame

            assert (await enter("a", "b", "c"))["action"] == ACK
            refused = await enter("d")
            assert refused["action"] == NACK and refused["error"]["code"] == 91003
            assert "maximum number of 3 members" in refused["error"]["message"]
            assert len(server.hub.channels["room"].presence.members) == 3
            assert (await enter("b", action=4))["action"] == ACK, "an update of a member is fine"
            assert (await enter("c", action=3))["action"] == ACK  # a leave makes room
            assert (await enter("d"))["action"] == ACK
        finally:
            await c.close()


async def test_nan_and_infinity_are_refused_not_passed_on_to_json_readers() -> None:
    """Python reads ``NaN`` / ``Infinity``; a message carrying one was re-encoded as such to every
    JSON subscriber and in every history page, which JSON.parse (ably-js, browsers) cannot read:
    one publish broke the channel's history for all of them."""
    async with EmbeddedServer(ServerConfig(port=0)) as server:
        auth = aiohttp.BasicAuth(*DEFAULT_DEV_KEY.split(":", 1))
        url = f"http://{server.endpoint}/channels/p/messages"
        headers = {"Content-Type": "application/json"}
        async with aiohttp.ClientSession() as http:
            for body in (b'[{"data": {"x": NaN}}]', b'{"extras": {"headers": {"a": -Infinity}}}'):
                async with http.post(url, data=body, auth=auth, headers=headers) as resp:
                    error = (await resp.json())["error"]
                    assert (resp.status, error["code"]) == (400, 40001)
                    assert "is not a JSON number" in error["message"]
            async with http.post(url, data=b'{"data": {"x": 1.5e300}}', auth=auth, headers=headers) as resp:
                assert resp.status == 201, "finite floats are fine"
            async with http.get(url, auth=auth) as resp:
                text = await resp.text()

        def strict(name: str) -> Any:
            raise AssertionError(name)

        assert [m["data"] for m in json.loads(text, parse_constant=strict)] == [{"x": 1.5e300}]
        bystander = await RawClient.connect(server, clientId="b")
        pub = await RawClient.connect(server, clientId="p", fmt="msgpack", echo="false")
        try:
            await bystander.attach("p")
            # U+02CB is 0xcb 0x8b in UTF-8: a float marker byte inside a string is walked, not refused.
            await pub.publish("p", [{"data": {"x": 2.5, "s": "\u02cb"}}])
            await pub.expect(ACK)
            assert (await bystander.expect(MESSAGE))["messages"][0]["data"] == {"x": 2.5, "s": "\u02cb"}
            await pub.publish("p", [{"data": {"x": float("nan")}}])
            error = (await pub.expect(ERROR))["error"]
            assert error["code"] == 40013 and "not a finite number" in error["message"]
            assert await pub.closed()
            await bystander.publish("p", [{"data": "still fine"}])
            assert (await bystander.expect(MESSAGE))["messages"][0]["data"] == "still fine"
        finally:
            await pub.close()
            await bystander.close()


def test_loads_json_says_what_is_wrong_and_reads_what_json_loads_read() -> None:
    for raw, says in (
        (b'{"a": NaN}', "NaN is not a JSON number"),
        (b'{"a": }', "Expecting value at character 6"),
        (b'"\xff"', "not UTF-8 text"),
    ):
        with pytest.raises(ProtocolError) as err:
            loads_json(raw, "body", code=40000)
        assert err.value.code == 40000 and err.value.message == f"unable to decode body: {says}"
    assert loads_json('{"a": [1, "é"]}'.encode("utf-16")) == {"a": [1, "é"]}
    assert loads_json('{"a": 1}') == {"a": 1}
