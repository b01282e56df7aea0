"""Ably-style JWT minting, shared by ``agent-worker token`` and the worker's dev token endpoint.

A JWT is what browser and Python clients use against the embedded server (and against Ably): the
header names the signing key (``kid`` = key name), the claims carry the capability as a JSON *string*
and the optional client id. Ably's JWT format is described at https://ably.com/docs/auth/token/jwt.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jwt

from agent_worker.errors import AuthError, ConfigError
from agent_worker.tokens import decode_jwt, encode_jwt

if TYPE_CHECKING:
    from aiohttp import web

__all__ = [
    "DEFAULT_CAPABILITY",
    "ApiKey",
    "decode_token",
    "make_token_handler",
    "mint_token",
    "parse_capability",
    "parse_ttl",
]

#: What a chat device needs on its session channels (AIT docs, setup/authentication).
# push-subscribe: a tab may register its own browser for push notifications (docs/push.md).
DEFAULT_CAPABILITY: dict[str, list[str]] = {
    "*": ["publish", "subscribe", "history", "presence", "push-subscribe"]
}

_MAX_TTL_S = 24 * 3600
_TTL_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_TTL_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An Ably API key ``<appId>.<keyId>:<secret>``; the secret stays out of ``repr``."""

    name: str
    secret: str

    @classmethod
    def parse(cls, key: str) -> ApiKey:
        name, sep, secret = key.strip().partition(":")
        if not sep or not secret or "." not in name:
            msg = "an Ably API key looks like '<appId>.<keyId>:<secret>' (see `agent-worker run` output)"
            raise ConfigError(msg)
        return cls(name=name, secret=secret)

    def __repr__(self) -> str:
        return f"ApiKey(name={self.name!r}, secret=<hidden>)"


def parse_ttl(text: str | float | int) -> float:
    """``"1h"``, ``"30m"``, ``"90s"``, ``"500ms"``, ``"2d"`` or plain seconds → seconds."""
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        match = _TTL_RE.match(text)
        if match is None:
            msg = f"invalid ttl {text!r}: use a number with an optional unit, e.g. 3600, 90s, 30m, 1h"
            raise ConfigError(msg)
        seconds = float(match.group(1)) * _TTL_UNITS[match.group(2) or "s"]
    if not 0 < seconds <= _MAX_TTL_S:
        msg = f"ttl must be between 1 second and 24 hours, got {seconds:g}s"
        raise ConfigError(msg)
    return seconds


def parse_capability(text: str | Mapping[str, Sequence[str]] | None) -> dict[str, list[str]]:
    """Validate a capability (JSON text or mapping): ``{resource: [operation, ...]}``."""
    if text is None:
        return {k: list(v) for k, v in DEFAULT_CAPABILITY.items()}
    raw: Any
    if isinstance(text, str):
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            msg = f'capability must be JSON like \'{{"chat:*": ["publish", "subscribe"]}}\': {exc}'
            raise ConfigError(msg) from exc
    else:
        raw = text
    if not isinstance(raw, Mapping) or not raw:
        msg = "capability must be a non-empty JSON object of resource -> list of operations"
        raise ConfigError(msg)
    out: dict[str, list[str]] = {}
    for resource, ops in raw.items():
        if not isinstance(resource, str) or not isinstance(ops, list) or not ops:
            msg = f"capability entry {resource!r} must map to a non-empty list of operations"
            raise ConfigError(msg)
        if not all(isinstance(op, str) and op for op in ops):
            msg = f"capability operations for {resource!r} must be non-empty strings"
            raise ConfigError(msg)
        out[resource] = list(ops)
    return out


def mint_token(
    key: ApiKey | str,
    *,
    client_id: str | None,
    capability: str | Mapping[str, Sequence[str]] | None = None,
    ttl_s: float = 3600.0,
    now: float | None = None,
) -> str:
    """Sign an HS256 JWT for ``key`` granting ``capability`` to ``client_id`` for ``ttl_s`` seconds.

    ``client_id=None`` mints an anonymous token (no ``x-ably-clientId``); ``"*"`` lets the holder
    pick any client id.
    """
    api_key = ApiKey.parse(key) if isinstance(key, str) else key
    cap = parse_capability(capability)
    if client_id is not None and not client_id:
        msg = "client id must be non-empty (omit it for an anonymous token)"
        raise ConfigError(msg)
    issued = int(time.time() if now is None else now)
    return encode_jwt(
        api_key.name,
        api_key.secret,
        issued_s=issued,
        expires_s=issued + max(1, int(ttl_s)),
        # Ably reads the capability claim as a JSON *string*, not a nested object.
        capability_json=json.dumps(cap, separators=(",", ":")),
        client_id=client_id,
    )


def decode_token(token: str, key: ApiKey | str | None = None) -> dict[str, Any]:
    """Claims of ``token``; verified against ``key`` when given (for tests and `token --decode`)."""
    secret = None if key is None else (ApiKey.parse(key) if isinstance(key, str) else key).secret
    try:
        claims = decode_jwt(token, secret, check_expiry=True)
    except jwt.PyJWTError as exc:
        msg = f"invalid token: {exc}"
        raise AuthError(msg, code=40144) from exc
    return claims


def make_token_handler(
    key: ApiKey | str,
    default_capability: str | Mapping[str, Sequence[str]] | None = None,
    *,
    default_ttl_s: float = 3600.0,
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """An aiohttp handler for ``GET /api/auth/token?clientId=...&ttl=...`` (local development only).

    It answers with the bare JWT as ``application/jwt`` — the body shape ably-js accepts from an
    ``authUrl`` — so a browser can use ``new Ably.Realtime({authUrl: '/api/auth/token?clientId=me'})``.
    The capability is fixed by the server (``default_capability``); callers cannot widen it. It hands
    out tokens to anyone who can reach it, which is why the worker keeps it off unless enabled.
    """
    from aiohttp import web  # noqa: PLC0415 - aiohttp is only needed where the handler is mounted

    api_key = ApiKey.parse(key) if isinstance(key, str) else key
    capability = parse_capability(default_capability)

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.remote not in ("127.0.0.1", "::1"):
            body = {
                "error": {"code": 40300, "statusCode": 403, "message": "dev tokens are for loopback only"}
            }
            return web.json_response(body, status=403)
        client_id = request.query.get("clientId") or request.query.get("client_id") or None
        if client_id == "*":
            message = "a wildcard clientId would let the holder act as anyone; ask for a concrete one"
            return web.json_response(
                {"error": {"code": 40012, "statusCode": 400, "message": message}}, status=400
            )
        ttl_text = request.query.get("ttl")
        try:
            ttl_s = parse_ttl(ttl_text) if ttl_text else default_ttl_s
            token = mint_token(api_key, client_id=client_id, capability=capability, ttl_s=ttl_s)
        except ConfigError as exc:
            body = {"error": {"code": 40003, "statusCode": 400, "message": exc.message}}
            return web.json_response(body, status=400)
        return web.Response(text=token, content_type="application/jwt", headers={"Cache-Control": "no-store"})

    return handler
