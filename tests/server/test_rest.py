"""REST API: history paging and bounds, errors, time, requestToken, idempotent publish."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import aiohttp
import msgpack
import pytest
from ably import AblyRealtime, AblyRest
from ably.types.message import Message
from ably.util.exceptions import AblyException

from agent_worker.server import EmbeddedServer
from agent_worker.server.testing import python_realtime, python_rest, sdk_endpoint
from tests.server.server_support import collector, eventually, wait_connected


def _bearer(server: EmbeddedServer, **kw: Any) -> dict[str, str]:
    token = server.mint_token(**kw)
    return {"Authorization": "Bearer " + base64.b64encode(token.encode()).decode()}


async def _publish_n(server: EmbeddedServer, channel: str, n: int) -> list[str]:
    rest = python_rest(server, client_id="seed")
    try:
        ch = rest.channels.get(channel)
        return [(await ch.publish("n", f"m{i}")).serials[0] for i in range(n)]
    finally:
        await rest.close()


class TestHistory:
    async def test_sdk_paging_both_directions(self, ably_server: EmbeddedServer) -> None:
        """ably-python follows Link rel=next through every page, backwards and forwards."""
        await _publish_n(ably_server, "hist", 7)
        rest = python_rest(ably_server)
        try:
            ch = rest.channels.get("hist")
            for direction, expected in (("backwards", [6, 5, 4, 3, 2, 1, 0]), ("forwards", list(range(7)))):
                page = await ch.history(direction=direction, limit=3)
                seen = [m.data for m in page.items]
                sizes = [len(page.items)]
                while page.has_next():
                    page = await page.next()
                    seen += [m.data for m in page.items]
                    sizes.append(len(page.items))
                assert seen == [f"m{i}" for i in expected]
                assert sizes == [3, 3, 1]
        finally:
            await rest.close()

    async def test_link_header_shape_and_from_serial(self, ably_server: EmbeddedServer) -> None:
        """Links are ./messages?… (what ably-js parses); from_serial and fromSerial bound history."""
        serials = await _publish_n(ably_server, "bound", 4)
        bound = serials[1].rsplit(":", 1)[0]  # a channel serial, as ably-js sends for untilAttach
        async with aiohttp.ClientSession(headers=_bearer(ably_server)) as http:
            base = f"http://{ably_server.endpoint}/channels/bound/messages"
            for name in ("from_serial", "fromSerial"):
                async with http.get(base, params={name: bound, "limit": "1"}) as resp:
                    assert resp.status == 200
                    assert resp.headers["Content-Type"] == "application/json"
                    body = await resp.json()
                    assert [m["data"] for m in body] == ["m1"]
                    link = resp.headers["Link"]
                    assert "<./messages?" in link and 'rel="next"' in link and 'rel="first"' in link
                    next_url = next(p for p in link.split(", ") if 'rel="next"' in p)
                    query = next_url[next_url.index("?") + 1 : next_url.index(">")]
                async with http.get(f"{base}?{query}") as resp:
                    assert [m["data"] for m in await resp.json()] == ["m0"]
                    assert 'rel="next"' not in resp.headers["Link"]

    async def test_start_end_filters(self, ably_server: EmbeddedServer) -> None:
        """start/end (ms) select by create time."""
        await _publish_n(ably_server, "times", 2)
        rest = python_rest(ably_server)
        try:
            now = int(time.time() * 1000)
            assert len((await rest.channels.get("times").history(end=now - 3_600_000)).items) == 0
            assert len((await rest.channels.get("times").history(start=now - 3_600_000)).items) == 2
        finally:
            await rest.close()

    async def test_bad_params_are_40003(self, ably_server: EmbeddedServer) -> None:
        """An out-of-range limit or unknown direction is an HTTP 400 with code 40003."""
        async with aiohttp.ClientSession(headers=_bearer(ably_server)) as http:
            for params in ({"limit": "0"}, {"limit": "x"}, {"direction": "sideways"}):
                async with http.get(
                    f"http://{ably_server.endpoint}/channels/c/messages", params=params
                ) as resp:
                    assert resp.status == 400
                    assert (await resp.json())["error"]["code"] == 40003


class TestErrors:
    async def test_error_body_shape_and_headers(self, ably_server: EmbeddedServer) -> None:
        """Errors carry {error:{code,statusCode,message,href}}, exact content type, X-Ably headers."""
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://{ably_server.endpoint}/channels/c/messages") as resp:
                assert resp.status == 401
                assert resp.headers["Content-Type"] == "application/json"
                assert resp.headers["X-Ably-Errorcode"] == "40101"
                err = (await resp.json())["error"]
                assert set(err) >= {"code", "statusCode", "message", "href"}
                assert err["statusCode"] == 401
            headers = {"Accept": "application/x-msgpack", **_bearer(ably_server)}
            async with http.get(f"http://{ably_server.endpoint}/nowhere", headers=headers) as resp:
                assert resp.status == 404
                assert resp.headers["Content-Type"] == "application/x-msgpack"
                assert msgpack.unpackb(await resp.read())["error"]["code"] == 40400

    async def test_sdk_sees_404_for_missing_message(self, ably_server: EmbeddedServer) -> None:
        """get_message of an unknown serial raises a 404 AblyException."""
        rest = python_rest(ably_server)
        try:
            with pytest.raises(AblyException) as info:
                await rest.channels.get("c").get_message("00000000000001-000@x:000")
            assert info.value.status_code == 404
        finally:
            await rest.close()


class TestMisc:
    async def test_time_in_both_formats(self, ably_server: EmbeddedServer) -> None:
        """GET /time returns [ms] as JSON or msgpack by Accept."""
        rest = python_rest(ably_server)
        try:
            assert abs(await rest.time() - time.time() * 1000) < 60_000
        finally:
            await rest.close()
        async with aiohttp.ClientSession() as http, http.get(f"http://{ably_server.endpoint}/time") as resp:
            assert isinstance((await resp.json())[0], int)

    async def test_idempotent_publish_by_id(self, ably_server: EmbeddedServer) -> None:
        """Re-publishing the same message ids returns the original serials and stores nothing new."""
        rest = python_rest(ably_server)
        try:
            ch = rest.channels.get("idem")
            first = await ch.publish(Message(name="n", data="once", id="fixed-id:0"))
            again = await ch.publish(Message(name="n", data="once", id="fixed-id:0"))
            assert first.serials == again.serials
            assert len((await ch.history()).items) == 1
        finally:
            await rest.close()

    async def test_channel_status_reports_occupancy(self, ably_server: EmbeddedServer) -> None:
        """GET /channels/{name} reports attached connections."""
        rt = python_realtime(ably_server, client_id="a")
        rest = python_rest(ably_server)
        try:
            await rt.channels.get("occ").attach()
            details = await rest.channels.get("occ").status()
            assert details.status.occupancy.metrics.connections == 1
        finally:
            await rt.close()
            await rest.close()

    async def test_channel_names_with_spaces_and_plus(self, ably_server: EmbeddedServer) -> None:
        """ably-python's quote_plus channel paths decode to the same channel as realtime's name."""
        rt = python_realtime(ably_server, client_id="a")
        rest = python_rest(ably_server)
        try:
            got, listener = collector()
            await rt.channels.get("room one:a+b").subscribe(listener)
            await rest.channels.get("room one:a+b").publish("n", "via rest")
            await eventually(lambda: len(got) == 1)
            assert got[0].data == "via rest"
        finally:
            await rt.close()
            await rest.close()


class TestRequestToken:
    async def test_python_signed_token_request_rest_and_realtime(self, ably_server: EmbeddedServer) -> None:
        """key + use_token_auth: ably-python signs a TokenRequest, gets a JWT, and uses it."""
        rest = AblyRest(
            key=ably_server.default_key, endpoint=sdk_endpoint(ably_server), tls=False, use_token_auth=True
        )
        rt = AblyRealtime(
            key=ably_server.default_key,
            endpoint=sdk_endpoint(ably_server),
            tls=False,
            use_token_auth=True,
            client_id="dora",
            default_token_params={"client_id": "dora"},
        )
        try:
            details = await rest.auth.request_token({"client_id": "zed", "ttl": 60_000})
            assert details.client_id == "zed" and details.token.count(".") == 2
            assert details.expires - details.issued == 60_000
            await rest.channels.get("tr").publish("n", "x")
            await wait_connected(rt)
            assert rt.auth.client_id == "dora"
            res = await rt.channels.get("tr").publish("n", "y")
            assert res.serials
        finally:
            await rest.close()
            await rt.close()

    async def test_token_request_validation(self, ably_server: EmbeddedServer) -> None:
        """Bad MAC → 40101, stale timestamp → 40104, replayed nonce → 40105, unknown key → 40101."""
        key_name, secret = ably_server.default_key.split(":", 1)

        def signed(ts: int, nonce: str, mac_secret: str = secret) -> dict[str, Any]:
            text = "\n".join([key_name, "", "", "", str(ts), nonce, ""])
            mac = base64.b64encode(
                hmac.new(mac_secret.encode(), text.encode(), hashlib.sha256).digest()
            ).decode()
            return {"keyName": key_name, "timestamp": ts, "nonce": nonce, "mac": mac}

        url = f"http://{ably_server.endpoint}/keys/{key_name}/requestToken"
        now = int(time.time() * 1000)
        async with aiohttp.ClientSession() as http:

            async def code(body: dict[str, Any], target: str = url) -> int:
                async with http.post(
                    target, data=json.dumps(body), headers={"Content-Type": "application/json"}
                ) as r:
                    payload = await r.json()
                    return int(payload["error"]["code"]) if r.status >= 400 else 0

            assert await code(signed(now, "n" * 16)) == 0
            assert await code(signed(now, "n" * 16)) == 40105
            assert await code(signed(now, "m" * 16, "wrong")) == 40101
            assert await code(signed(now - 10 * 60_000, "o" * 16)) == 40104
            assert (
                await code(signed(now, "p" * 16), f"http://{ably_server.endpoint}/keys/no.such/requestToken")
                == 40101
            )
