"""Ably's push admin REST API, the part presence-aware notifications need, with real Web Push.

``/push/deviceRegistrations`` (POST, PUT/PATCH/GET/DELETE ``/{id}``, GET and DELETE by ``clientId`` or
``deviceId``), ``POST /push/publish`` to a ``clientId`` or ``deviceId`` recipient, and
``GET /push/publicVapidKey``. ``web`` devices are registered exactly as ably-js's push plugin does
(``targetUrl`` = base64 of the subscription endpoint, ``encryptionKey: {p256dh, auth}``) and are
delivered to by RFC 8030 Web Push: the payload encrypted with RFC 8291 ``aes128gcm`` and signed with
an RFC 8292 VAPID key the server generates (and keeps in ``data_dir``), by ``pywebpush``. FCM and
APNs devices are refused: Ably delivers those in production; this server cannot reach them.

Scoping as on Ably: ``push-admin`` manages every registration and publishes; ``push-subscribe``
registers and manages only devices of the caller's own clientId. A capability counts on any resource.

Publishing waits for the deliveries (so callers and tests see their outcome in the response, like
Ably's ``fullWait``); a failed delivery marks that device ``FAILING`` (``FAILED`` when the push
service says the subscription is gone, 404/410) with an Ably ``ErrorInfo``, keeps its registration,
and never affects the other devices.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import ipaddress
import json
import os
import secrets
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import structlog
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from py_vapid import Vapid
from pywebpush import WebPushException, webpush

from agent_worker.errors import AgentWorkerError, AuthError, ProtocolError
from agent_worker.limits import read_body
from agent_worker.server.auth import Principal
from agent_worker.server.codec import decode_body, format_from_content_type
from agent_worker.server.hub import Hub

__all__ = ["PushApi", "PushStore", "b64decode_any"]

log = structlog.get_logger(__name__)

MAX_BODY = 16 * 1024
"""Registrations and publish requests are small; anything bigger is refused (40009)."""
MAX_PAYLOAD = 3072
"""Web Push messages carry at most ~4 KB after encryption (RFC 8291 §4 record size)."""
MAX_DEVICES = 10_000
MAX_DEVICES_PER_CLIENT = 50
DELIVERY_TIMEOUT_S = 10.0
MAX_PARALLEL_DELIVERIES = 16
PLATFORMS = frozenset({"browser", "android", "ios"})
FORM_FACTORS = frozenset({"phone", "tablet", "desktop", "tv", "watch", "car", "embedded", "other"})
LOOPBACK_HOSTS = frozenset({"localhost"})


def b64decode_any(text: str) -> bytes:
    """Standard or URL-safe base64, padded or not (ably-js sends ``btoa`` output; browsers'
    ``PushSubscription.toJSON`` gives base64url)."""
    cleaned = text.strip().replace("-", "+").replace("_", "/")
    return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _invalid(message: str) -> ProtocolError:
    return ProtocolError(f"invalid device registration: {message}", code=40000, status_code=400)


def _forbidden(message: str) -> AuthError:
    return AuthError(
        f"operation not permitted with provided capability: {message}", code=40160, status_code=401
    )


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _web_recipient(recipient: dict[str, Any], allow_loopback_http: bool) -> dict[str, Any]:
    """A ``web`` recipient checked as a browser would have made it: an https endpoint (http on
    loopback only when allowed, for local receivers), a P-256 public key and a 16-byte auth secret."""
    target = recipient.get("targetUrl")
    keys = recipient.get("encryptionKey")
    if not isinstance(target, str) or not isinstance(keys, dict):
        msg = "a web recipient needs targetUrl (base64 of the endpoint) and encryptionKey {p256dh, auth}"
        raise _invalid(msg)
    try:
        endpoint = b64decode_any(target).decode()
        p256dh = b64decode_any(str(keys.get("p256dh", "")))
        auth = b64decode_any(str(keys.get("auth", "")))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        msg = "targetUrl, encryptionKey.p256dh and encryptionKey.auth must be base64"
        raise _invalid(msg) from None
    url = urlsplit(endpoint)
    host = url.hostname or ""
    loopback_ok = allow_loopback_http and url.scheme == "http" and _is_loopback(host)
    if not host or not (url.scheme == "https" or loopback_ok):
        msg = "targetUrl must be an https:// push service endpoint"
        raise _invalid(msg)
    if len(p256dh) != 65 or p256dh[0] != 4:
        msg = "encryptionKey.p256dh must be an uncompressed P-256 public key (65 bytes)"
        raise _invalid(msg)
    if len(auth) != 16:
        msg = "encryptionKey.auth must be a 16-byte secret"
        raise _invalid(msg)
    out = {
        "transportType": "web",
        "targetUrl": base64.b64encode(endpoint.encode()).decode(),
        "encryptionKey": {"p256dh": _b64url(p256dh), "auth": _b64url(auth)},
    }
    if isinstance(recipient.get("publicVapidKey"), str):
        out["publicVapidKey"] = recipient["publicVapidKey"]
    return out


def validate_device(body: Any, device_id: str | None, *, allow_loopback_http: bool = False) -> dict[str, Any]:
    """A device registration as stored: the DeviceDetails fields we know, checked."""
    if not isinstance(body, dict):
        msg = "the body must be a DeviceDetails object"
        raise _invalid(msg)
    did = body.get("id", device_id)
    if device_id is not None and did != device_id:
        msg = "the id in the body differs from the one in the path"
        raise _invalid(msg)
    if not isinstance(did, str) or not did or len(did) > 256:
        msg = "id must be a non-empty string (at most 256 characters)"
        raise _invalid(msg)
    if body.get("platform") not in PLATFORMS:
        msg = f"platform must be one of {', '.join(sorted(PLATFORMS))}"
        raise _invalid(msg)
    if body.get("formFactor") not in FORM_FACTORS:
        msg = f"formFactor must be one of {', '.join(sorted(FORM_FACTORS))}"
        raise _invalid(msg)
    client_id = body.get("clientId")
    if client_id is not None and (not isinstance(client_id, str) or not client_id or client_id == "*"):
        msg = "clientId must be a non-empty string other than '*'"
        raise _invalid(msg)
    push = body.get("push")
    recipient = push.get("recipient") if isinstance(push, dict) else None
    if not isinstance(recipient, dict):
        msg = "push.recipient is required"
        raise _invalid(msg)
    transport = recipient.get("transportType")
    if transport in ("fcm", "apns", "ablyChannel"):
        msg = (
            f"transportType {transport!r} cannot be delivered by the embedded server (Ably delivers "
            "FCM and APNs in production); register a 'web' (Web Push) device"
        )
        raise ProtocolError(msg, code=40000, status_code=400)
    if transport != "web":
        msg = "push.recipient.transportType must be 'web'"
        raise _invalid(msg)
    device: dict[str, Any] = {
        "id": did,
        "platform": body["platform"],
        "formFactor": body["formFactor"],
        "push": {"recipient": _web_recipient(recipient, allow_loopback_http), "state": "ACTIVE"},
    }
    if client_id is not None:
        device["clientId"] = client_id
    if isinstance(body.get("metadata"), dict | str):
        device["metadata"] = body["metadata"]
    if isinstance(body.get("deviceSecret"), str):
        device["deviceSecret"] = body["deviceSecret"]
    return device


class PushStore:
    """Registrations and the VAPID key, in memory or as two files in ``data_dir``."""

    def __init__(self, data_dir: str | Path | None) -> None:
        self._dir = Path(data_dir) if data_dir is not None else None
        self.devices: dict[str, dict[str, Any]] = {}
        self.vapid = self._load_vapid()
        raw_public = self.vapid.public_key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        self.public_key = _b64url(raw_public)
        if self._dir is not None and (self._dir / "push_devices.json").exists():
            loaded = json.loads((self._dir / "push_devices.json").read_text())
            self.devices = {d["id"]: d for d in loaded if isinstance(d, dict) and "id" in d}

    def _load_vapid(self) -> Vapid:
        path = self._dir / "push_vapid.pem" if self._dir is not None else None
        if path is not None and path.exists():
            return Vapid.from_file(str(path))
        vapid = Vapid()
        vapid.generate_keys()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # a private key
            with os.fdopen(fd, "wb") as fh:
                fh.write(vapid.private_pem())
            log.info("push_vapid_key_generated", path=str(path))
        return vapid

    def save(self) -> None:
        if self._dir is None:
            return
        tmp = self._dir / "push_devices.json.tmp"
        tmp.write_text(json.dumps(list(self.devices.values())))
        tmp.replace(self._dir / "push_devices.json")

    def for_client(self, client_id: str) -> list[dict[str, Any]]:
        return [d for d in self.devices.values() if d.get("clientId") == client_id]


def _public(device: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in device.items() if k not in ("deviceSecret", "deviceIdentityToken")}


def _holds(principal: Principal, op: str) -> bool:
    return any(op in ops or "*" in ops for ops in principal.capability.grants.values())


class RestFacade(Protocol):
    """What the push routes use of :class:`~agent_worker.server.rest.RestApi` (which owns them)."""

    hub: Hub

    def principal(self, request: web.Request) -> Principal: ...

    def reply(self, request: web.Request, body: Any, status: int = 200) -> web.Response: ...

    def paged(self, request: web.Request, rows: list[dict[str, Any]], link: str) -> web.Response: ...


class PushApi:
    """The ``/push/...`` routes of :class:`~agent_worker.server.rest.RestApi`."""

    def __init__(
        self,
        rest: RestFacade,
        data_dir: str | Path | None,
        subject: str,
        *,
        allow_loopback_http: bool = False,
    ) -> None:
        self.rest = rest
        self.allow_loopback_http = allow_loopback_http
        self.store = PushStore(data_dir)
        self.subject = subject
        self._gate = asyncio.Semaphore(MAX_PARALLEL_DELIVERIES)
        self.delivered = 0
        self.failed = 0

    async def close(self) -> None:
        """Nothing to release: deliveries use a fresh connection each (in a worker thread)."""

    # -- access ------------------------------------------------------------------------------

    def _scope(self, principal: Principal) -> str | None:
        """``None`` for a push admin, else the clientId whose devices the caller may manage."""
        if _holds(principal, "push-admin"):
            return None
        if not _holds(principal, "push-subscribe"):
            msg = "push-subscribe or push-admin is required"
            raise _forbidden(msg)
        if principal.client_id is None:
            msg = "push-subscribe without push-admin manages only devices of an identified client"
            raise _forbidden(msg)
        return principal.client_id

    def _device(self, device_id: str, scope: str | None) -> dict[str, Any]:
        device = self.store.devices.get(device_id)
        if device is None or (scope is not None and device.get("clientId") != scope):
            # Another client's device is as invisible as a missing one.
            msg = f"no device registration with id {device_id!r}"
            raise ProtocolError(msg, code=40400, status_code=404)
        return device

    async def _json(self, request: web.Request) -> Any:
        # The whole body, up to MAX_BODY (one ``content.read(n)`` returns only what has arrived, so
        # a chunked body was decoded from its first chunk).
        raw = await read_body(request, MAX_BODY, self.rest.hub.config.http_body_timeout_s)
        try:
            return decode_body(raw, format_from_content_type(request.headers.get("Content-Type")))
        except AgentWorkerError:
            raise
        except Exception:
            msg = "the body is not valid JSON or msgpack"
            raise ProtocolError(msg, code=40000, status_code=400) from None

    # -- dispatch ----------------------------------------------------------------------------

    async def dispatch(self, request: web.Request, rest: list[str]) -> web.StreamResponse:
        method = request.method
        if rest == ["publicVapidKey"] and method == "GET":
            self.rest.principal(request)
            return web.Response(text=self.store.public_key, content_type="text/plain")
        device_id = self._device_credential(request)
        if device_id is not None:
            return await self._as_device(request, rest, device_id)
        principal = self.rest.principal(request)
        if rest == ["publish"] and method == "POST":
            if not _holds(principal, "push-admin"):
                msg = "push-admin is required to publish"
                raise _forbidden(msg)
            return self.rest.reply(request, await self._publish(await self._json(request)), status=201)
        scope = self._scope(principal)
        if rest == ["deviceRegistrations"]:
            if method == "POST":
                return self._save(request, await self._json(request), None, scope, fresh=True)
            if method == "GET":
                return self._list(request, scope)
            if method == "DELETE":
                return self._remove_where(request, scope)
        if len(rest) == 2 and rest[0] == "deviceRegistrations":
            if method in ("PUT", "PATCH"):
                body = await self._json(request)
                if method == "PATCH":
                    current = _public(self._device(rest[1], scope))
                    body = {**current, **(body if isinstance(body, dict) else {})}
                return self._save(request, body, rest[1], scope, fresh=False)
            if method == "GET":
                return self.rest.reply(request, _public(self._device(rest[1], scope)))
            if method == "DELETE":
                if rest[1] in self.store.devices:
                    self._device(rest[1], scope)
                    del self.store.devices[rest[1]]
                    self.store.save()
                return web.Response(status=204)
        msg = "not found"
        raise ProtocolError(msg, code=40400, status_code=404)

    def _device_credential(self, request: web.Request) -> str | None:
        """The device a request authenticates as with its own credentials, as ably-js's push plugin
        does for its later updates and deregistration: ``Bearer base64(deviceIdentityToken)`` (or
        ``X-Ably-DeviceToken``), or ``X-Ably-DeviceSecret``. ``None``: not a device credential."""
        token = request.headers.get("X-Ably-DeviceToken")
        secret = request.headers.get("X-Ably-DeviceSecret")
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if token is None and scheme.lower() == "bearer" and value:
            try:
                token = base64.b64decode(value, validate=True).decode()
            except (binascii.Error, ValueError):
                token = None
        if not token and not secret:
            return None
        for device in self.store.devices.values():
            own = device.get("deviceIdentityToken", {}).get("token", "")
            if (token and own and hmac.compare_digest(own, token)) or (
                secret and device.get("deviceSecret") and hmac.compare_digest(device["deviceSecret"], secret)
            ):
                return str(device["id"])
        return None

    async def _as_device(self, request: web.Request, rest: list[str], device_id: str) -> web.Response:
        """A device acting on its own registration only: read, update (not its clientId), remove."""
        method = request.method
        own = rest == ["deviceRegistrations", device_id] or (
            rest == ["deviceRegistrations"]
            and method == "DELETE"
            and request.query.get("deviceId") == device_id
        )
        if not own or method not in ("GET", "PATCH", "PUT", "DELETE"):
            msg = "a device credential acts only on that device's own registration"
            raise _forbidden(msg)
        current = self.store.devices[device_id]
        if method == "GET":
            return self.rest.reply(request, _public(current))
        if method == "DELETE":
            del self.store.devices[device_id]
            self.store.save()
            return web.Response(status=204)
        body = await self._json(request)
        merged = {**_public(current), **(body if isinstance(body, dict) else {})}
        if merged.get("clientId") != current.get("clientId"):
            msg = "a device cannot change its own clientId"
            raise _forbidden(msg)
        return self._save(request, merged, device_id, None, fresh=False)

    def _save(
        self, request: web.Request, body: Any, device_id: str | None, scope: str | None, *, fresh: bool
    ) -> web.Response:
        device = validate_device(body, device_id, allow_loopback_http=self.allow_loopback_http)
        if scope is not None:
            if device.setdefault("clientId", scope) != scope:
                msg = f"a push-subscribe client may register devices only for its own clientId {scope!r}"
                raise _forbidden(msg)
            if device["id"] in self.store.devices:
                self._device(device["id"], scope)  # another client's device id: 40400
        store = self.store
        if device["id"] not in store.devices:
            client_id = device.get("clientId")
            if len(store.devices) >= MAX_DEVICES or (
                client_id is not None and len(store.for_client(client_id)) >= MAX_DEVICES_PER_CLIENT
            ):
                msg = "too many device registrations; remove unused ones first"
                raise ProtocolError(msg, code=40000, status_code=400)
        previous = store.devices.get(device["id"], {})
        device["deviceIdentityToken"] = previous.get("deviceIdentityToken") or {
            "token": secrets.token_urlsafe(24),
            "issued": self.rest.hub.now_ms(),
            "expires": self.rest.hub.now_ms() + 10 * 365 * 86_400_000,
            "capability": "",
            "clientId": device.get("clientId", ""),
        }
        store.devices[device["id"]] = device
        store.save()
        log.info("push_device_registered", device_id=device["id"], client_id=device.get("clientId"))
        out = _public(device)
        if fresh:  # ably-js's activation keeps it for later updates of its own registration
            out["deviceIdentityToken"] = device["deviceIdentityToken"]
        return self.rest.reply(request, out, status=201 if fresh else 200)

    def _matching(self, request: web.Request, scope: str | None) -> list[dict[str, Any]]:
        q = request.query
        client_id, device_id = q.get("clientId"), q.get("deviceId")
        if scope is not None and client_id not in (None, scope):
            msg = "push-subscribe lists only the caller's own devices"
            raise _forbidden(msg)
        client_id = client_id if scope is None else scope
        return [
            d
            for d in self.store.devices.values()
            if (client_id is None or d.get("clientId") == client_id)
            and (device_id is None or d["id"] == device_id)
        ]

    def _list(self, request: web.Request, scope: str | None) -> web.Response:
        rows = [_public(d) for d in self._matching(request, scope)]
        return self.rest.paged(request, rows, "deviceRegistrations")

    def _remove_where(self, request: web.Request, scope: str | None) -> web.Response:
        if "clientId" not in request.query and "deviceId" not in request.query:
            msg = "removeWhere needs a clientId or deviceId parameter"
            raise ProtocolError(msg, code=40000, status_code=400)
        for d in self._matching(request, scope):
            self.store.devices.pop(d["id"], None)
        self.store.save()
        return web.Response(status=204)

    # -- publish -----------------------------------------------------------------------------

    async def _publish(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("recipient"), dict):
            msg = "publish needs a recipient object and a notification and/or data"
            raise ProtocolError(msg, code=40000, status_code=400)
        recipient = body["recipient"]
        payload = {k: body[k] for k in ("notification", "data", "web") if k in body}
        if not payload or not all(isinstance(v, dict) for v in payload.values()):
            msg = "publish needs notification and/or data objects"
            raise ProtocolError(msg, code=40000, status_code=400)
        if set(recipient) == {"clientId"} and isinstance(recipient["clientId"], str):
            devices = self.store.for_client(recipient["clientId"])
        elif set(recipient) == {"deviceId"} and isinstance(recipient["deviceId"], str):
            found = self.store.devices.get(recipient["deviceId"])
            devices = [found] if found is not None else []
        else:
            msg = "recipient must be {clientId} or {deviceId} (direct transport recipients are not supported)"
            raise ProtocolError(msg, code=40000, status_code=400)
        text = json.dumps(payload, separators=(",", ":"))
        if len(text.encode()) > MAX_PAYLOAD:
            msg = f"push payload is {len(text.encode())} bytes; Web Push allows at most {MAX_PAYLOAD}"
            raise ProtocolError(msg, code=40009, status_code=413)
        results = await asyncio.gather(*(self._deliver(d, text) for d in devices))
        failed = [r for r in results if r is not None]
        if devices:
            self.store.save()
        return {"delivered": len(devices) - len(failed), "failed": failed}

    async def _deliver(self, device: dict[str, Any], text: str) -> dict[str, Any] | None:
        """One Web Push delivery; the device's state records the outcome. ``None`` on success."""
        recipient = device["push"]["recipient"]
        endpoint = b64decode_any(recipient["targetUrl"]).decode()
        subscription: dict[str, Any] = {"endpoint": endpoint, "keys": dict(recipient["encryptionKey"])}
        gone = False
        try:
            async with self._gate:
                # In a thread: encryption and the VAPID signature cost milliseconds of CPU per
                # delivery (bench/push), which must not stall the server's realtime connections.
                await asyncio.to_thread(
                    webpush,
                    subscription,
                    data=text,
                    vapid_private_key=self.store.vapid,
                    vapid_claims={"sub": self.subject},
                    ttl=24 * 3600,
                    timeout=DELIVERY_TIMEOUT_S,
                )
        except WebPushException as exc:
            status = getattr(exc.response, "status_code", None)
            gone = status in (404, 410)
            reason = f"push service answered HTTP {status}" if status else f"Web Push failed: {exc.message}"
        except OSError as exc:  # requests' connection errors and timeouts are OSErrors
            reason = f"push service unreachable: {type(exc).__name__}"
        else:
            device["push"]["state"] = "ACTIVE"
            device["push"].pop("error", None)
            self.delivered += 1
            return None
        self.failed += 1
        error = AgentWorkerError(reason, code=50000, status_code=500 if not gone else 410).to_error_info()
        device["push"]["state"] = "FAILED" if gone else "FAILING"
        device["push"]["error"] = error
        log.warning(
            "push_delivery_failed", device_id=device["id"], client_id=device.get("clientId"), reason=reason
        )
        return {"deviceId": device["id"], "error": error}
