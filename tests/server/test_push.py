"""The push admin REST API through ably-python (and raw HTTP where the SDK cannot say it), delivering
by real Web Push to a local receiver that decrypts with the subscription's keys."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from ably import AblyException

from agent_worker.server import EmbeddedServer, ServerConfig
from agent_worker.server.testing import python_rest
from tests.push_support import WebPushReceiver

ADMIN = {"*": ["push-admin"]}
SUBSCRIBE = {"*": ["push-subscribe"]}


@pytest.fixture
async def ably_server() -> AsyncIterator[EmbeddedServer]:
    """The suite's server, accepting http:// push endpoints on loopback (the local receivers)."""
    config = ServerConfig(
        port=0, presence_leave_delay_ms=300, connection_state_ttl_ms=5_000, push_allow_loopback_http=True
    )
    async with EmbeddedServer(config) as server:
        yield server


@pytest.fixture
async def receiver() -> AsyncIterator[WebPushReceiver]:
    async with WebPushReceiver() as r:
        yield r


async def _raw(
    server: EmbeddedServer, method: str, path: str, token: str, body: Any = None
) -> tuple[int, Any]:
    url = f"http://{server.endpoint}{path}"
    headers = {
        "Authorization": f"Bearer {base64.b64encode(token.encode()).decode()}",
        "Accept": "application/json",
    }
    async with aiohttp.ClientSession() as s, s.request(method, url, json=body, headers=headers) as resp:
        text = await resp.text()
        try:
            return resp.status, json.loads(text) if text else None
        except ValueError:
            return resp.status, text


async def test_register_publish_and_decrypt(ably_server: EmbeddedServer, receiver: WebPushReceiver) -> None:
    alice = python_rest(ably_server, "alice", capability=SUBSCRIBE)
    admin = python_rest(ably_server, "backend", capability=ADMIN)
    try:
        saved = await alice.push.admin.device_registrations.save(receiver.device("dev-a", "alice"))
        assert saved.id == "dev-a" and saved.client_id == "alice"
        assert saved.push["state"] == "ACTIVE"
        got = await admin.push.admin.device_registrations.get("dev-a")
        assert got.push["recipient"]["transportType"] == "web"
        await admin.push.admin.publish(
            {"clientId": "alice"},
            {"notification": {"title": "Done", "body": "42"}, "data": {"sessionId": "s1"}},
        )
        msg = await receiver.next()
        assert msg.payload == {"notification": {"title": "Done", "body": "42"}, "data": {"sessionId": "s1"}}
        assert msg.vapid_key == ably_server.push.store.public_key
        assert msg.ttl is not None and int(msg.ttl) > 0
        assert not receiver.refused
    finally:
        await alice.close()
        await admin.close()


async def test_public_vapid_key_is_a_p256_point(ably_server: EmbeddedServer) -> None:
    status, body = await _raw(ably_server, "GET", "/push/publicVapidKey", ably_server.mint_token("x"))
    assert status == 200
    raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    assert len(raw) == 65 and raw[0] == 4


async def test_vapid_key_and_devices_persist_with_data_dir(tmp_path: Path, receiver: WebPushReceiver) -> None:
    config = ServerConfig(data_dir=tmp_path, push_allow_loopback_http=True)
    async with EmbeddedServer(config) as first:
        key = first.push.store.public_key
        status, _ = await _raw(
            first,
            "POST",
            "/push/deviceRegistrations",
            first.mint_token("alice", ADMIN),
            receiver.device("dev-p", "alice"),
        )
        assert status == 201
    assert oct((tmp_path / "push_vapid.pem").stat().st_mode & 0o777) == "0o600"
    async with EmbeddedServer(config) as second:
        assert second.push.store.public_key == key
        status, body = await _raw(
            second, "GET", "/push/deviceRegistrations/dev-p", second.mint_token("a", ADMIN)
        )
        assert status == 200 and body["clientId"] == "alice"


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d["push"]["recipient"].update(targetUrl="%%%"), "base64"),
        (
            lambda d: d["push"]["recipient"]["encryptionKey"].update(
                auth=base64.b64encode(b"short").decode()
            ),
            "16-byte",
        ),
        (
            lambda d: d["push"]["recipient"]["encryptionKey"].update(
                p256dh=base64.b64encode(b"\x04" * 10).decode()
            ),
            "P-256",
        ),
        (
            lambda d: d["push"]["recipient"].update(
                targetUrl=base64.b64encode(b"http://example.com/x").decode()
            ),
            "https",
        ),
        (lambda d: d.update(platform="amiga"), "platform"),
        (lambda d: d["push"].update(recipient={"transportType": "fcm", "registrationToken": "t"}), "FCM"),
        (lambda d: d["push"].update(recipient={"transportType": "apns", "deviceToken": "t"}), "APNs"),
    ],
)
async def test_invalid_registrations_are_refused(
    ably_server: EmbeddedServer, receiver: WebPushReceiver, mutate: Any, needle: str
) -> None:
    device = receiver.device("dev-bad", "alice")
    mutate(device)
    status, body = await _raw(
        ably_server, "POST", "/push/deviceRegistrations", ably_server.mint_token("alice", ADMIN), device
    )
    assert status == 400 and body["error"]["code"] == 40000
    assert needle in body["error"]["message"]
    assert "dev-bad" not in ably_server.push.store.devices


async def test_capabilities_scope_registrations(
    ably_server: EmbeddedServer, receiver: WebPushReceiver
) -> None:
    alice = python_rest(ably_server, "alice", capability=SUBSCRIBE)
    nobody = python_rest(ably_server, "carol", capability={"*": ["publish", "subscribe"]})
    try:
        with pytest.raises(AblyException) as exc:  # another clientId's device
            await alice.push.admin.device_registrations.save(receiver.device("dev-b", "bob"))
        assert exc.value.code == 40160
        with pytest.raises(AblyException) as exc:  # no push capability at all
            await nobody.push.admin.device_registrations.save(receiver.device("dev-c", "carol"))
        assert exc.value.code == 40160
        with pytest.raises(AblyException) as exc:  # push-subscribe may not publish
            await alice.push.admin.publish({"clientId": "alice"}, {"notification": {"title": "x"}})
        assert exc.value.code == 40160
        # alice's own device: registered (clientId filled from her token), visible, removable
        device = receiver.device("dev-a", None)
        saved = await alice.push.admin.device_registrations.save(device)
        assert saved.client_id == "alice"
        page = await alice.push.admin.device_registrations.list()
        assert [d.id for d in page.items] == ["dev-a"]
        await alice.push.admin.device_registrations.remove("dev-a")
        assert ably_server.push.store.devices == {}
    finally:
        await alice.close()
        await nobody.close()


async def test_subscriber_cannot_see_or_touch_others(
    ably_server: EmbeddedServer, receiver: WebPushReceiver
) -> None:
    token = ably_server.mint_token("bob", ADMIN)
    status, _ = await _raw(
        ably_server, "PUT", "/push/deviceRegistrations/dev-b", token, receiver.device("dev-b", "bob")
    )
    assert status == 200
    alice = ably_server.mint_token("alice", SUBSCRIBE)
    for method in ("GET", "DELETE"):
        status, body = await _raw(ably_server, method, "/push/deviceRegistrations/dev-b", alice)
        assert status == 404 and body["error"]["code"] == 40400
    status, body = await _raw(ably_server, "GET", "/push/deviceRegistrations?clientId=bob", alice)
    assert status == 401 and body["error"]["code"] == 40160
    assert "dev-b" in ably_server.push.store.devices


async def test_unreachable_and_gone_endpoints_lose_nothing(
    ably_server: EmbeddedServer, receiver: WebPushReceiver
) -> None:
    admin = ably_server.mint_token("backend", ADMIN)
    dead = WebPushReceiver()
    await dead.start()
    await dead.stop()  # its port now refuses connections
    gone = WebPushReceiver(answer=410)
    await gone.start()
    try:
        for device_id, r in (("ok", receiver), ("dead", dead), ("gone", gone)):
            status, _ = await _raw(
                ably_server, "POST", "/push/deviceRegistrations", admin, r.device(device_id, "alice")
            )
            assert status == 201
        status, body = await _raw(
            ably_server,
            "POST",
            "/push/publish",
            admin,
            {"recipient": {"clientId": "alice"}, "notification": {"title": "t"}},
        )
        assert status == 201
        assert body["delivered"] == 1
        failed = {f["deviceId"]: f["error"] for f in body["failed"]}
        assert set(failed) == {"dead", "gone"} and all(e["code"] == 50000 for e in failed.values())
        assert (await receiver.next()).payload["notification"]["title"] == "t"
        devices = ably_server.push.store.devices
        assert devices["dead"]["push"]["state"] == "FAILING"
        assert devices["gone"]["push"]["state"] == "FAILED"
        assert devices["ok"]["push"]["state"] == "ACTIVE"
    finally:
        await gone.stop()


async def test_publish_limits(ably_server: EmbeddedServer) -> None:
    admin = ably_server.mint_token("backend", ADMIN)
    status, body = await _raw(
        ably_server,
        "POST",
        "/push/publish",
        admin,
        {"recipient": {"clientId": "a"}, "data": {"x": "y" * 4000}},
    )
    assert status == 413 and body["error"]["code"] == 40009
    status, body = await _raw(
        ably_server, "POST", "/push/publish", admin, {"recipient": {"transportType": "web"}, "data": {}}
    )
    assert status == 400 and body["error"]["code"] == 40000
    status, body = await _raw(ably_server, "POST", "/push/deviceRegistrations", admin, {"id": "x" * 20_000})
    assert status == 413 and body["error"]["code"] == 40009


async def test_loopback_http_endpoints_are_refused_by_default(receiver: WebPushReceiver) -> None:
    """Without push_allow_loopback_http a token holder cannot make the server POST to local ports."""
    async with EmbeddedServer(ServerConfig()) as server:
        token = server.mint_token("alice", ADMIN)
        status, body = await _raw(
            server, "POST", "/push/deviceRegistrations", token, receiver.device("d", "alice")
        )
        assert status == 400 and body["error"]["code"] == 40000 and "https" in body["error"]["message"]
        assert server.push.store.devices == {}


async def test_a_device_manages_its_own_registration_with_its_identity_token(
    ably_server: EmbeddedServer, receiver: WebPushReceiver
) -> None:
    """As ably-js's push plugin does after activation: PATCH and deregister with
    ``Bearer base64(deviceIdentityToken)``; another device's id is refused, the clientId is fixed."""
    alice = ably_server.mint_token("alice", SUBSCRIBE)
    status, created = await _raw(
        ably_server, "POST", "/push/deviceRegistrations", alice, receiver.device("dev-a", None)
    )
    assert status == 201 and created["clientId"] == "alice"
    device_token = created["deviceIdentityToken"]["token"]
    status, _ = await _raw(
        ably_server, "POST", "/push/deviceRegistrations", alice, receiver.device("dev-b", None)
    )
    assert status == 201
    recipient = dict(receiver.web_recipient(), publicVapidKey=ably_server.push.store.public_key)
    status, body = await _raw(
        ably_server,
        "PATCH",
        "/push/deviceRegistrations/dev-a",
        device_token,
        {"push": {"recipient": recipient}},
    )
    assert status == 200 and body["push"]["recipient"]["publicVapidKey"] == ably_server.push.store.public_key
    status, body = await _raw(ably_server, "GET", "/push/deviceRegistrations/dev-b", device_token)
    assert status == 401 and body["error"]["code"] == 40160
    status, body = await _raw(
        ably_server, "PATCH", "/push/deviceRegistrations/dev-a", device_token, {"clientId": "mallory"}
    )
    assert status == 401 and body["error"]["code"] == 40160
    status, _ = await _raw(ably_server, "DELETE", "/push/deviceRegistrations?deviceId=dev-a", device_token)
    assert status == 204
    assert set(ably_server.push.store.devices) == {"dev-b"}


async def _chunked(server: EmbeddedServer, path: str, token: str, body: bytes) -> tuple[int, Any]:
    """POST ``body`` chunked in two writes, the second a moment after the first."""

    async def parts() -> AsyncIterator[bytes]:
        half = len(body) // 2
        yield body[:half]
        await asyncio.sleep(0.2)  # the server has the first part alone in its buffer meanwhile
        yield body[half:]

    url = f"http://{server.endpoint}{path}"
    headers = {
        "Authorization": f"Bearer {base64.b64encode(token.encode()).decode()}",
        "Accept": "application/json",
        "Content-Type": "application/json",
    }
    async with aiohttp.ClientSession() as s, s.post(url, data=parts(), headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_a_chunked_body_is_read_whole(ably_server: EmbeddedServer) -> None:
    """A body sent in chunks used to be decoded from its first chunk alone (one ``read(n)``, which
    returns what has arrived): a valid body was refused 400/40000, and one over the limit was refused
    as undecodable instead of 413/40009."""
    admin = ably_server.mint_token("backend", ADMIN)
    body = json.dumps({"recipient": {"clientId": "nobody"}, "data": {"x": "y" * 2000}}).encode()
    status, answer = await _chunked(ably_server, "/push/publish", admin, body)
    assert status == 201, answer
    assert answer == {"delivered": 0, "failed": []}
    status, answer = await _chunked(
        ably_server, "/push/deviceRegistrations", admin, b'{"id":"' + b"x" * 20_000 + b'"}'
    )
    assert status == 413 and answer["error"]["code"] == 40009
