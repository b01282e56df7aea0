"""The Ably REST API subset both SDKs use: time, requestToken, messages, mutations, presence.

Channel names and serials are decoded from the raw path with ``unquote_plus``: ably-python encodes
spaces as ``+`` (``quote_plus``) while ably-js encodes ``+`` itself as ``%2B``.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Callable
from typing import Any
from urllib.parse import quote_plus, unquote_plus

import structlog
from aiohttp import web

from agent_worker.errors import AgentWorkerError, AuthError, ProtocolError
from agent_worker.limits import read_body
from agent_worker.server import constants as C
from agent_worker.server.auth import Principal, TokenClaims, resolve_client_id
from agent_worker.server.codec import (
    content_type_for,
    decode_body,
    encode_body,
    format_from_accept,
    format_from_content_type,
    inbound_payload,
    join_items,
    outbound_payload,
)
from agent_worker.server.hub import Hub, check_channel_name
from agent_worker.server.log import APPEND, DELETE, UPDATE
from agent_worker.server.push import PushApi

__all__ = ["RestApi"]

log = structlog.get_logger(__name__)

_MAX_LIMIT = 1000


def _int_param(q: Any, name: str, default: int | None = None) -> int | None:
    raw = q.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        msg = f"query parameter {name!r} must be an integer"
        raise ProtocolError(msg, code=40003) from None


def _limit(q: Any) -> int:
    limit = _int_param(q, "limit", 100)
    if limit is None or limit < 1 or limit > _MAX_LIMIT:
        msg = f"limit must be between 1 and {_MAX_LIMIT}"
        raise ProtocolError(msg, code=40003)
    return limit


def _token_principal(claims: TokenClaims) -> Principal:
    """A token's principal: a ``*`` clientId makes it a wildcard, not an identity."""
    wildcard = claims.client_id == "*"
    client_id = None if wildcard else claims.client_id
    return Principal(claims.key_name, client_id, wildcard, claims.capability, claims.expires_ms)


# quote_plus for an ASCII string in one str.translate: the characters quote_plus keeps (letters,
# digits, "_.-~"), a space as "+", every other one as %XX (upper-case hex, as quote_plus writes it).
_ALWAYS_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")
_QUOTE_PLUS = {c: "+" if c == 32 else f"%{c:02X}" for c in range(128) if chr(c) not in _ALWAYS_SAFE}


def _quote_plus(text: str) -> str:
    return text.translate(_QUOTE_PLUS) if text.isascii() else quote_plus(text)


def _urlencode(params: dict[str, str]) -> str:
    """``urllib.parse.urlencode(params)`` for str keys and values, byte for byte (a Link header per
    page: urlencode was a third of a history request's CPU)."""
    return "&".join(f"{_quote_plus(k)}={_quote_plus(v)}" for k, v in params.items())


def _header_safe(text: str) -> str:
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in text)[:500]


class RestApi:
    def __init__(self, hub: Hub, connection_lookup: Callable[[str], Any] | None = None) -> None:
        self.hub = hub
        # connectionKey -> live realtime connection (for publishes on behalf of one), if any
        self.connection_lookup: Callable[[str], Any] = connection_lookup or (lambda _key: None)
        cfg = hub.config
        self.push = PushApi(
            self, cfg.data_dir, cfg.push_vapid_subject, allow_loopback_http=cfg.push_allow_loopback_http
        )

    # -- plumbing ----------------------------------------------------------------------------

    def _reply(
        self, request: web.Request, body: Any, status: int = 200, headers: dict[str, str] | None = None
    ) -> web.Response:
        fmt = format_from_accept(request.headers.get("Accept"))
        out = {"Content-Type": content_type_for(fmt)}
        out.update(headers or {})
        return web.Response(body=encode_body(body, fmt), status=status, headers=out)

    def error_response(self, request: web.Request, exc: AgentWorkerError) -> web.Response:
        info = exc.to_error_info()
        return self._reply(
            request,
            {"error": info},
            status=exc.status_code,
            headers={"X-Ably-Errorcode": str(exc.code), "X-Ably-Errormessage": _header_safe(exc.message)},
        )

    def principal(self, request: web.Request) -> Principal:
        keyring = self.hub.keyring
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "basic" and value:
            key = keyring.check_basic_header(value)
            requested = None
            raw_cid = request.headers.get("X-Ably-ClientId")
            if raw_cid:
                try:
                    requested = base64.b64decode(raw_cid, validate=True).decode()
                except (binascii.Error, ValueError):
                    msg = "X-Ably-ClientId must be base64"
                    raise AuthError(msg, code=40012, status_code=400) from None
            cid, wildcard = resolve_client_id(None, requested, via_token=False)
            return Principal(key.name, cid, wildcard, key.capability, None)
        if scheme.lower() == "bearer" and value:
            return _token_principal(keyring.check_bearer_header(value, self.hub.now_ms()))
        token = request.query.get("access_token") or request.query.get("accessToken")
        if token:
            return _token_principal(keyring.verify_token(token, self.hub.now_ms()))
        if request.query.get("key"):
            key = keyring.check_key(request.query["key"])
            return Principal(key.name, None, True, key.capability, None)
        msg = "no credentials: use Basic or Bearer authorization"
        raise AuthError(msg, code=40101, status_code=401)

    async def _body(self, request: web.Request) -> Any:
        cfg = self.hub.config
        raw = await read_body(request, cfg.body_limit, cfg.http_body_timeout_s)
        return decode_body(raw, format_from_content_type(request.headers.get("Content-Type")))

    @staticmethod
    def _links(base: str, params: dict[str, str], cursor: str | None) -> dict[str, str]:
        # The query without its cursor is encoded once: it is the first page's, the current page's
        # when the request had no cursor, and the next page's with the cursor added last.
        plain = {k: v for k, v in params.items() if k != "cursor"}
        first = _urlencode(plain)
        current = first if len(plain) == len(params) else _urlencode(params)
        links = [f'<./{base}?{first}>; rel="first"', f'<./{base}?{current}>; rel="current"']
        if cursor is not None:
            nxt = "cursor=" + _quote_plus(cursor)
            links.append(
                f'<./{base}?{first}&{nxt}>; rel="next"' if first else f'<./{base}?{nxt}>; rel="next"'
            )
        return {"Link": ", ".join(links)}

    # -- dispatch ----------------------------------------------------------------------------

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        try:
            parts = [unquote_plus(p) for p in request.rel_url.raw_path.split("/")[1:]]
            method = request.method
            if parts == ["time"] and method == "GET":
                return self._reply(request, [self.hub.now_ms()])
            if parts in (["is-the-internet-up.txt"], ["health"]):
                return web.Response(text="yes", content_type="text/plain")
            if len(parts) == 3 and parts[0] == "keys" and parts[2] == "requestToken" and method == "POST":
                return await self._request_token(request, parts[1])
            if parts == ["stats"] and method == "GET":
                self.principal(request)
                return self._reply(request, [], headers=self._links("stats", dict(request.query), None))
            if len(parts) >= 2 and parts[0] == "push":
                return await self.push.dispatch(request, parts[1:])
            if len(parts) >= 2 and parts[0] == "channels":
                return await self._channel(request, parts[1], parts[2:])
            if parts in ([""], []) and method == "GET":
                return self._reply(request, {"server": "agent-worker embedded Ably-compatible server"})
            msg = "not found"
            raise ProtocolError(msg, code=40400, status_code=404)
        except AgentWorkerError as exc:
            log.info("rest_refused", path=request.path, code=exc.code, reason=exc.message)
            response = self.error_response(request, exc)
            if exc.code == 40800:  # the body stalled: no keep-alive (closed after aiohttp's lingering read)
                response.force_close()
            return response
        except Exception:
            log.exception("rest_handler_failed", path=request.path)
            return self.error_response(request, AgentWorkerError("internal error", code=50000))

    async def _request_token(self, request: web.Request, key_name: str) -> web.Response:
        body = await self._body(request)
        basic = None
        header = request.headers.get("Authorization", "")
        if header.lower().startswith("basic "):
            basic = self.hub.keyring.check_basic_header(header[6:])
        details = self.hub.keyring.token_from_request(key_name, body, self.hub.now_ms(), basic_key=basic)
        return self._reply(request, details)

    async def _channel(self, request: web.Request, name: str, rest: list[str]) -> web.Response:
        check_channel_name(name)
        principal = self.principal(request)
        method = request.method
        hub = self.hub
        hub.rules.require_identified(name, principal.client_id)
        if not rest and method == "GET":
            hub.require(principal, name, "channel-metadata")
            return self._reply(request, self._details(name))
        if rest == ["messages"] and method == "POST":
            return await self._publish(request, name, principal)
        if rest == ["messages"] and method == "GET":
            hub.require(principal, name, "history")
            return self._history(request, name)
        if len(rest) == 2 and rest[0] == "messages":
            if method == "GET":
                hub.require(principal, name, "history")
                record = self._record(name, rest[1])
                fmt = format_from_accept(request.headers.get("Accept"))
                return self._reply(request, outbound_payload(record.render_latest(), fmt))
            if method == "PATCH":
                return await self._mutate(request, name, rest[1], principal)
        if len(rest) == 3 and rest[0] == "messages" and rest[2] == "versions" and method == "GET":
            hub.require(principal, name, "history")
            record = self._record(name, rest[1])
            fmt = format_from_accept(request.headers.get("Accept"))
            items = [outbound_payload(v, fmt) for v in record.render_versions()]
            if request.query.get("direction") == "backwards":
                items.reverse()
            return self._reply(request, items, headers=self._links("versions", dict(request.query), None))
        if rest == ["presence"] and method == "GET":
            hub.require(principal, name, "subscribe")
            return self._presence(request, name)
        if rest == ["presence", "history"] and method == "GET":
            hub.require(principal, name, "history")
            return self._presence_history(request, name)
        msg = "not found"
        raise ProtocolError(msg, code=40400, status_code=404)

    def _record(self, channel: str, serial: str) -> Any:
        record = self.hub.channel(channel).log.records.get(serial)
        if record is None:
            msg = f"no message with serial {serial!r} on channel {channel!r}"
            raise ProtocolError(msg, code=40400, status_code=404)
        return record

    def _details(self, name: str) -> dict[str, Any]:
        rt = self.hub.channels.get(name)
        atts = list(rt.attachments.values()) if rt else []
        members = len(rt.presence.members) if rt else 0
        metrics = {
            "connections": len(atts),
            "publishers": sum(1 for a in atts if a.modes & C.MODE_PUBLISH),
            "subscribers": sum(1 for a in atts if a.modes & C.MODE_SUBSCRIBE),
            "presenceConnections": sum(1 for a in atts if a.modes & C.MODE_PRESENCE),
            "presenceMembers": members,
            "presenceSubscribers": sum(1 for a in atts if a.modes & C.MODE_PRESENCE_SUBSCRIBE),
        }
        return {
            "channelId": name,
            "name": name,
            "status": {"isActive": bool(atts), "occupancy": {"metrics": metrics}},
        }

    # -- messages ----------------------------------------------------------------------------

    async def _publish(self, request: web.Request, name: str, principal: Principal) -> web.Response:
        body = await self._body(request)
        raw = body if isinstance(body, list) else [body]
        if not raw or body is None:
            msg = "publish body must be a message or a non-empty array of messages"
            raise ProtocolError(msg, code=40001)
        fmt = format_from_content_type(request.headers.get("Content-Type"))
        items = [inbound_payload(m, fmt) for m in raw]
        for m in items:
            if m.get("action", 0) != 0:
                msg = "use PATCH /channels/{channel}/messages/{serial} to update, delete or append"
                raise ProtocolError(msg, code=40003)
        base = secrets.token_urlsafe(9)
        publisher = self._on_behalf_of(raw, principal)
        published = self.hub.publish(name, items, principal, publisher_id=publisher, id_base=base)
        given = items[0].get("id")
        first_id = given if isinstance(given, str) else f"{base}:0"
        message_id = first_id.rsplit(":", 1)[0] if ":" in first_id else first_id
        return self._reply(
            request, {"channel": name, "messageId": message_id, "serials": published.serials}, status=201
        )

    def _on_behalf_of(self, raw: list[Any], principal: Principal) -> str | None:
        """The realtime connection a publish names with ``connectionKey`` (TM2h), or ``None``;
        a key that is not a live connection of the same client is 40006, as on Ably."""
        keys = {m["connectionKey"] for m in raw if isinstance(m, dict) and m.get("connectionKey") is not None}
        if not keys:
            return None
        conn = self.connection_lookup(keys.pop()) if len(keys) == 1 else None
        if conn is None or (
            principal.client_id is not None and conn.principal.client_id != principal.client_id
        ):
            msg = "Malformed message; invalid connectionKey"
            raise ProtocolError(msg, code=40006, status_code=400)
        connection_id: str = conn.id
        return connection_id

    async def _mutate(
        self, request: web.Request, name: str, serial: str, principal: Principal
    ) -> web.Response:
        body = await self._body(request)
        fmt = format_from_content_type(request.headers.get("Content-Type"))
        item = inbound_payload(body, fmt)
        if item.get("action") not in (UPDATE, DELETE, APPEND):
            msg = "PATCH body must carry action 1 (update), 2 (delete) or 5 (append)"
            raise ProtocolError(msg, code=40003)
        item["serial"] = serial
        published = self.hub.publish(name, [item], principal)
        return self._reply(request, {"versionSerial": published.serials[0]})

    def _history(self, request: web.Request, name: str) -> web.Response:
        q = request.query
        direction = q.get("direction", "backwards")
        if direction not in ("backwards", "forwards"):
            msg = "direction must be 'backwards' or 'forwards'"
            raise ProtocolError(msg, code=40003)
        limit = _int_param(q, "limit", 100)
        if limit is None or limit < 1 or limit > _MAX_LIMIT:
            msg = f"limit must be between 1 and {_MAX_LIMIT}"
            raise ProtocolError(msg, code=40003)
        start, end = _int_param(q, "start"), _int_param(q, "end")
        if start is not None and end is not None and start > end:
            msg = "start must not be after end"
            raise ProtocolError(msg, code=40003)
        horizon = self.hub.rules.history_horizon(name, self.hub.now_ms())
        if horizon is not None:  # a channel without a persistence rule keeps two minutes (Ably)
            start = horizon if start is None else max(start, horizon)
        until = q.get("from_serial") or q.get("fromSerial") or None
        page, cursor = self.hub.channel(name).log.history(
            backwards=direction == "backwards",
            limit=limit,
            start=start,
            end=end,
            until=until,
            cursor=q.get("cursor") or None,
        )
        fmt = format_from_accept(request.headers.get("Accept"))
        body = join_items([r.history_item(fmt) for r in page], fmt)
        headers = {"Content-Type": content_type_for(fmt), **self._links("messages", dict(q), cursor)}
        return web.Response(body=body, headers=headers)

    # -- presence ----------------------------------------------------------------------------

    def _presence(self, request: web.Request, name: str) -> web.Response:
        q = request.query
        limit = _limit(q)
        members = self.hub.channel(name).presence.snapshot(
            client_id=q.get("clientId") or None, connection_id=q.get("connectionId") or None
        )
        return self._offset_page(request, members, limit, "presence")

    def _presence_history(self, request: web.Request, name: str) -> web.Response:
        q = request.query
        limit = _limit(q)
        events = list(self.hub.channel(name).presence.history)
        start, end = _int_param(q, "start"), _int_param(q, "end")
        events = [
            e
            for e in events
            if (start is None or e.get("timestamp", 0) >= start)
            and (end is None or e.get("timestamp", 0) <= end)
        ]
        if q.get("direction", "backwards") == "backwards":
            events.reverse()
        return self._offset_page(request, events, limit, "history")

    def reply(self, request: web.Request, body: Any, status: int = 200) -> web.Response:
        return self._reply(request, body, status)

    def paged(self, request: web.Request, rows: list[dict[str, Any]], link: str) -> web.Response:
        """A ``limit``/``cursor`` page of ``rows`` (for the push API)."""
        return self._offset_page(request, rows, _limit(request.query), link)

    def _offset_page(
        self, request: web.Request, rows: list[dict[str, Any]], limit: int, link: str
    ) -> web.Response:
        """The page of ``rows`` at the ``cursor`` offset, linking to the next one while rows remain."""
        q = request.query
        offset = _int_param(q, "cursor", 0) or 0
        page = rows[offset : offset + limit]
        nxt = str(offset + limit) if offset + limit < len(rows) else None
        fmt = format_from_accept(request.headers.get("Accept"))
        items = [outbound_payload(r, fmt) for r in page]
        return self._reply(request, items, headers=self._links(link, dict(q), nxt))
