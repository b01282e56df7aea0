"""A local Web Push receiver: a push service and a browser's subscription in one.

It holds a P-256 key pair and an auth secret like a browser's ``PushSubscription``, listens on
127.0.0.1 as the push service endpoint, checks each request's RFC 8292 VAPID authorization (ES256
JWT signed by the key in ``k=``, audience = this origin, a ``sub``), and decrypts the RFC 8291
``aes128gcm`` body with the subscription's private key, as the browser would before handing the
message to its service worker.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

import http_ece
import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Received:
    payload: dict[str, Any]
    vapid_key: str
    vapid_claims: dict[str, Any]
    ttl: str | None


@dataclass
class WebPushReceiver:
    """One subscription. ``answer`` is the HTTP status the push service replies with (201 = ok)."""

    answer: int = 201
    received: list[Received] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._private = ec.generate_private_key(ec.SECP256R1())
        self.p256dh = self._private.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        self.auth = os.urandom(16)
        self._runner: web.AppRunner | None = None
        self.endpoint = ""
        self._arrived = asyncio.Event()

    async def start(self) -> WebPushReceiver:
        app = web.Application()
        app.router.add_post("/push/{sub}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.endpoint = f"http://127.0.0.1:{port}/push/{b64url(os.urandom(9))}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> WebPushReceiver:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def web_recipient(self) -> dict[str, Any]:
        """``push.recipient`` exactly as ably-js's push plugin builds it (btoa of the endpoint,
        standard base64 keys)."""
        return {
            "transportType": "web",
            "targetUrl": base64.b64encode(self.endpoint.encode()).decode(),
            "encryptionKey": {
                "p256dh": base64.b64encode(self.p256dh).decode(),
                "auth": base64.b64encode(self.auth).decode(),
            },
        }

    def device(self, device_id: str, client_id: str | None) -> dict[str, Any]:
        device: dict[str, Any] = {
            "id": device_id,
            "platform": "browser",
            "formFactor": "desktop",
            "push": {"recipient": self.web_recipient()},
        }
        if client_id is not None:
            device["clientId"] = client_id
        return device

    async def next(self, timeout: float = 20.0) -> Received:  # noqa: ASYNC109 - a test bound
        """Wait for the next message not yet taken."""
        async with asyncio.timeout(timeout):
            while not self.received:
                self._arrived.clear()
                await self._arrived.wait()
        return self.received.pop(0)

    async def _handle(self, request: web.Request) -> web.Response:
        problem = self._check_headers(request)
        if problem is not None:
            self.refused.append(problem)
            return web.Response(status=400, text=problem)
        if self.answer >= 300:
            return web.Response(status=self.answer, text="push service says no")
        body = await request.read()
        plain = http_ece.decrypt(body, private_key=self._private, auth_secret=self.auth, version="aes128gcm")
        _, _, params = request.headers["Authorization"].partition(" ")
        fields = dict(p.strip().split("=", 1) for p in params.split(","))
        claims = jwt.decode(fields["t"], options={"verify_signature": False})
        self.received.append(Received(json.loads(plain), fields["k"], claims, request.headers.get("TTL")))
        self._arrived.set()
        return web.Response(status=201)

    def _check_headers(self, request: web.Request) -> str | None:
        if request.headers.get("Content-Encoding") != "aes128gcm":
            return "Content-Encoding must be aes128gcm (RFC 8291)"
        if "TTL" not in request.headers:
            return "TTL header is required (RFC 8030 §5.2)"
        scheme, _, params = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "vapid":
            return "Authorization must use the vapid scheme (RFC 8292 §3)"
        try:
            fields = dict(p.strip().split("=", 1) for p in params.split(","))
            key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b64url_decode(fields["k"]))
            origin = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
            claims = jwt.decode(fields["t"], key=key, algorithms=["ES256"], audience=origin)
        except Exception as exc:  # every malformed or mis-signed token is a refusal
            return f"VAPID token rejected: {type(exc).__name__}: {exc}"
        if not str(claims.get("sub", "")).startswith(("mailto:", "https:")):
            return "VAPID sub must be a mailto: or https: contact"
        if int(claims.get("exp", 0)) <= time.time():
            return "VAPID token expired"
        return None
