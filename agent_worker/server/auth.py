"""API keys, HS256 JWT tokens, token requests, capabilities and clientId rules.

Pure apart from reading the clock passed in by the caller. Secrets never appear in a ``repr``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt

from agent_worker.errors import AuthError
from agent_worker.tokens import decode_jwt, encode_jwt, unverified_header

__all__ = [
    "ALL_OPS",
    "ApiKey",
    "Capability",
    "KeyRing",
    "NonceCache",
    "Principal",
    "TokenClaims",
    "generate_key",
]

ALL_OPS = frozenset(
    {
        "publish",
        "subscribe",
        "presence",
        "history",
        "stats",
        "channel-metadata",
        "push-subscribe",
        "push-admin",
        "privileged-headers",
        "object-subscribe",
        "object-publish",
        "annotation-subscribe",
        "annotation-publish",
        "message-update-own",
        "message-update-any",
        "message-delete-own",
        "message-delete-any",
    }
)

DEFAULT_TOKEN_TTL_MS = 60 * 60 * 1000
MAX_TOKEN_TTL_MS = 24 * 60 * 60 * 1000
TOKEN_REQUEST_MAX_SKEW_MS = 2 * 60 * 1000


def _auth_error(message: str, code: int, status: int | None = None) -> AuthError:
    return AuthError(message, code=code, status_code=status)


# --- capabilities ------------------------------------------------------------------------------


def _strip_qualifier(resource: str) -> str:
    # "[*]*" and "[qualifier]name" address channels with qualifiers; we have none, so the
    # qualifier only widens the match.
    if resource.startswith("[") and "]" in resource:
        return resource[resource.index("]") + 1 :]
    return resource


def resource_matches(pattern: str, name: str) -> bool:
    """Ably-style resource match with ``:``-segment wildcards.

    ``*`` alone matches everything; a ``*`` segment matches exactly one segment, except as the last
    segment where it matches the rest (one or more segments). Wildcards replace whole segments only,
    as on Ably: ``conversations:alice-*`` names just that channel, it is not a prefix match.
    """
    pattern = _strip_qualifier(pattern)
    if pattern == "*":
        return True
    p = pattern.split(":")
    n = name.split(":")
    for i, seg in enumerate(p):
        last = i == len(p) - 1
        if i >= len(n):
            return False
        if last and seg == "*":
            return True
        if seg == "*":
            continue
        if seg != n[i]:
            return False
    return len(n) == len(p)


def _covers(outer: str, inner: str) -> bool:
    """Whether every channel ``inner`` matches is matched by ``outer`` (both resource patterns)."""
    outer, inner = _strip_qualifier(outer), _strip_qualifier(inner)
    if outer in ("*", inner):
        return True
    if "*" not in inner:
        return resource_matches(outer, inner)
    if outer.endswith(":*") and "*" not in outer[:-2]:  # whole segments: `ns:*` covers `ns:a:*`
        return inner.startswith(outer[:-1])
    return resource_matches(outer, inner.replace("*", "x"))


def narrower_resource(a: str, b: str) -> str | None:
    """The intersection of two resource patterns when one contains the other, else ``None``."""
    if _covers(b, a):
        return a
    if _covers(a, b):
        return b
    return None


@dataclass(frozen=True, slots=True)
class Capability:
    """``resource -> ops`` as in Ably's capability JSON."""

    grants: Mapping[str, frozenset[str]]
    # ops_for() per channel name: checked on every publish (a connection's capability is one object)
    _ops: dict[str, frozenset[str]] = field(default_factory=dict, init=False, compare=False, repr=False)

    @classmethod
    def full(cls) -> Capability:
        return cls({"*": frozenset({"*"})})

    @classmethod
    def parse(cls, value: Any) -> Capability:
        """Parse a capability JSON string or object; malformed input is ``AuthError(40000)``."""
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except (ValueError, RecursionError):
                msg = "capability is not valid JSON"
                raise _auth_error(msg, 40000, 400) from None
        if not isinstance(value, dict) or not value:
            msg = "capability must be a non-empty JSON object"
            raise _auth_error(msg, 40000, 400)
        grants: dict[str, frozenset[str]] = {}
        for resource, ops in value.items():
            if not isinstance(resource, str) or not isinstance(ops, list) or not ops:
                msg = "capability entries must map a resource name to a non-empty list of operations"
                raise _auth_error(msg, 40000, 400)
            for op in ops:
                if not isinstance(op, str) or (op != "*" and op not in ALL_OPS):
                    msg = f"capability has an unknown operation {op!r}"
                    raise _auth_error(msg, 40000, 400)
            if "*" in ops and len(ops) > 1:  # Ably refuses ["*", "publish"] (ably-js rest/capability)
                msg = f"invalid capability for {resource!r}: '*' must be the only operation"
                raise _auth_error(msg, 40000, 400)
            grants[resource] = frozenset(ops)
        return cls(grants)

    def ops_for(self, channel: str) -> frozenset[str]:
        cached = self._ops.get(channel)
        if cached is not None:
            return cached
        out: set[str] = set()
        for resource, ops in self.grants.items():
            if resource_matches(resource, channel):
                out |= ALL_OPS if "*" in ops else ops
        if len(self._ops) >= 1024:
            self._ops.clear()
        result = self._ops[channel] = frozenset(out)
        return result

    def allows(self, channel: str, op: str) -> bool:
        return op in self.ops_for(channel)

    def canonical(self) -> str:
        """Canonical JSON (sorted resources and operations), as both SDKs sign it."""
        ordered = OrderedDict((r, sorted(self.grants[r])) for r in sorted(self.grants))
        return json.dumps(ordered, separators=(",", ":"))

    def to_dict(self) -> dict[str, list[str]]:
        return {r: sorted(ops) for r, ops in self.grants.items()}

    def restrict_to(self, outer: Capability) -> Capability:
        """``self`` narrowed to what ``outer`` permits; ``AuthError(40160)`` if nothing remains.

        Resources intersect to the narrower of two nested patterns (``ns:*`` and ``ns:a:*`` give
        ``ns:a:*``, whichever side holds which), operations to their common subset.
        """
        grants: dict[str, set[str]] = {}
        for resource, ops in self.grants.items():
            for outer_res, outer_ops in outer.grants.items():
                narrower = narrower_resource(resource, outer_res)
                if narrower is None:
                    continue
                if "*" in outer_ops:
                    kept = set(ops)
                elif "*" in ops:
                    kept = set(outer_ops)
                else:
                    kept = set(ops) & set(outer_ops)
                if kept:
                    grants.setdefault(narrower, set()).update(kept)
        if not grants:
            msg = "requested capability is not permitted by the key"
            raise _auth_error(msg, 40160, 401)
        return Capability({r: frozenset({"*"} if "*" in ops else ops) for r, ops in grants.items()})


# --- keys, tokens, principals ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ApiKey:
    """``appId.keyId:secret``; the secret is kept out of ``repr``."""

    name: str  # "appId.keyId"
    secret: str = field(repr=False)
    capability: Capability = field(default_factory=Capability.full)

    @classmethod
    def parse(cls, text: str) -> ApiKey:
        name, sep, secret = text.partition(":")
        app, dot, key_id = name.partition(".")
        if not sep or not dot or not app or not key_id or not secret:
            msg = "API key must look like APP.KEY:SECRET"
            raise _auth_error(msg, 40101, 401)
        return cls(name=name, secret=secret)

    @property
    def text(self) -> str:
        return f"{self.name}:{self.secret}"


def generate_key(app_id: str = "local") -> str:
    """A fresh random key string ``app.key:secret``."""
    return f"{app_id}.{secrets.token_hex(3)}:{secrets.token_urlsafe(24)}"


@dataclass(frozen=True, slots=True)
class TokenClaims:
    key_name: str
    client_id: str | None  # None = anonymous; "*" = may assume any clientId
    capability: Capability
    issued_ms: int
    expires_ms: int


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a connection or REST request acts as."""

    key_name: str
    client_id: str | None  # concrete identity, None when anonymous or wildcard without a choice
    wildcard: bool  # token/key allows assuming any clientId
    capability: Capability
    expires_ms: int | None = None  # None for basic (key) auth

    def can_assume(self, client_id: str) -> bool:
        if client_id == "*":
            return False
        return self.wildcard or self.client_id == client_id


class NonceCache:
    """Remembers token-request nonces for the skew window (replays are 40105)."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._seen: OrderedDict[str, int] = OrderedDict()
        self._max = max_entries

    def check_and_add(self, key_name: str, nonce: str, now_ms: int) -> bool:
        horizon = now_ms - 2 * TOKEN_REQUEST_MAX_SKEW_MS
        while self._seen and (next(iter(self._seen.values())) < horizon or len(self._seen) > self._max):
            self._seen.popitem(last=False)
        k = f"{key_name}\n{nonce}"
        if k in self._seen:
            return False
        self._seen[k] = now_ms
        return True


def _check_token_times(exp: float, issued_ms: int, now_ms: int) -> None:
    """The clock's checks of a token (40142 expired, 40003 lifetime over the maximum)."""
    if round(exp * 1000) <= now_ms:
        msg = "token expired"
        raise _auth_error(msg, 40142, 401)
    if exp * 1000 - min(issued_ms, now_ms) > MAX_TOKEN_TTL_MS + 1000:
        msg = f"token lifetime exceeds the maximum of {MAX_TOKEN_TTL_MS // 3_600_000} hours"
        raise _auth_error(msg, 40003, 400)


class KeyRing:
    """The keys a server accepts, and everything derived from them."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self._keys = {k.name: k for k in keys}
        if not self._keys:
            msg = "at least one API key is required"
            raise ValueError(msg)
        self.nonces = NonceCache()
        # Tokens that passed every check but the clock ones, with their exp: a worker's connections
        # and REST requests (100 history reads in a burst) present one token, verified once.
        self._verified: dict[str, tuple[TokenClaims, float]] = {}
        # Authorization: Bearer values already decoded to a verified token (the base64 step, per
        # history read); bounded like _verified, and a hit still goes through verify_token.
        self._bearer: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"KeyRing(names={sorted(self._keys)})"

    @property
    def default(self) -> ApiKey:
        return next(iter(self._keys.values()))

    def get(self, name: str) -> ApiKey | None:
        return self._keys.get(name)

    # -- basic -----------------------------------------------------------------------------

    def check_key(self, text: str) -> ApiKey:
        name, _, secret = text.partition(":")
        key = self._keys.get(name)
        if key is None or not hmac.compare_digest(key.secret.encode(), secret.encode()):
            msg = "invalid key"
            raise _auth_error(msg, 40101, 401)
        return key

    def check_basic_header(self, value: str) -> ApiKey:
        try:
            text = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, ValueError):
            msg = "malformed Basic credentials"
            raise _auth_error(msg, 40101, 401) from None
        return self.check_key(text)

    # -- tokens ----------------------------------------------------------------------------

    def mint(
        self,
        *,
        key: ApiKey | None = None,
        client_id: str | None = None,
        capability: Capability | None = None,
        ttl_ms: int = DEFAULT_TOKEN_TTL_MS,
        now_ms: int,
    ) -> tuple[str, TokenClaims]:
        key = key or self.default
        cap = capability.restrict_to(key.capability) if capability is not None else key.capability
        claims = TokenClaims(
            key_name=key.name,
            client_id=client_id,
            capability=cap,
            issued_ms=now_ms,
            expires_ms=now_ms + ttl_ms,
        )
        token = encode_jwt(
            key.name,
            key.secret,
            issued_s=now_ms // 1000,
            # NumericDate may be fractional (RFC 7519): keep the expiry to the millisecond, as Ably does.
            expires_s=_seconds(now_ms + ttl_ms),
            capability_json=cap.canonical(),
            client_id=client_id,
        )
        return token, claims

    def verify_token(self, token: str, now_ms: int) -> TokenClaims:
        """Verify an Ably JWT; errors carry Ably token codes (40142 expired, 40144 bad format...)."""
        cached = self._verified.get(token)
        if cached is not None:
            hit, expiry = cached
            _check_token_times(expiry, hit.issued_ms, now_ms)
            return hit
        if token.count(".") != 2:
            msg = "token unrecognised (only JWTs are issued by this server)"
            raise _auth_error(msg, 40143, 401)
        try:
            header = unverified_header(token)
        except (jwt.PyJWTError, RecursionError):
            msg = "invalid JWT format"
            raise _auth_error(msg, 40144, 401) from None
        kid = header.get("kid")
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            msg = "JWT is not signed by a key this server knows (kid)"
            raise _auth_error(msg, 40101, 401)
        try:
            payload = decode_jwt(token, key.secret, require_exp=True)
        except jwt.InvalidSignatureError:
            msg = "JWT signature does not verify"
            raise _auth_error(msg, 40144, 401) from None
        except jwt.PyJWTError:
            msg = "invalid JWT format"
            raise _auth_error(msg, 40144, 401) from None
        exp = payload.get("exp")
        if not isinstance(exp, int | float):
            msg = "JWT exp claim must be a number"
            raise _auth_error(msg, 40144, 401)
        iat = payload.get("iat")
        issued_ms = int(iat * 1000) if isinstance(iat, int | float) else now_ms
        _check_token_times(exp, issued_ms, now_ms)
        cap_raw = payload.get("x-ably-capability")
        capability = Capability.parse(cap_raw) if cap_raw is not None else key.capability
        capability = capability.restrict_to(key.capability)
        client_id = payload.get("x-ably-clientId")
        if client_id is not None and not isinstance(client_id, str):
            msg = "JWT x-ably-clientId claim must be a string"
            raise _auth_error(msg, 40144, 401)
        claims = TokenClaims(
            key_name=key.name,
            client_id=client_id or None,
            capability=capability,
            issued_ms=issued_ms,
            expires_ms=round(exp * 1000),
        )
        if isinstance(iat, int | float):  # without iat, issued_ms is the clock's: not cached
            if len(self._verified) >= 4096:
                self._verified.clear()
            self._verified[token] = (claims, exp)
        return claims

    def check_bearer_header(self, value: str, now_ms: int) -> TokenClaims:
        """``Authorization: Bearer`` carries base64(token) in both SDKs; accept a raw JWT too."""
        known = self._bearer.get(value)
        if known is not None:
            return self.verify_token(known, now_ms)
        raw = value
        value = value.strip()
        token = value
        if value.count(".") != 2:
            try:
                token = base64.b64decode(value, validate=True).decode()
            except (binascii.Error, ValueError):
                token = value
        claims = self.verify_token(token, now_ms)
        if token in self._verified:  # only what verified (and was cached) is remembered
            if len(self._bearer) >= 4096:
                self._bearer.clear()
            self._bearer[raw] = token
        return claims

    # -- token requests --------------------------------------------------------------------

    def token_from_request(
        self, key_name: str, body: Any, now_ms: int, *, basic_key: ApiKey | None = None
    ) -> dict[str, Any]:
        """Verify a signed TokenRequest for ``/keys/{key_name}/requestToken``; return TokenDetails."""
        key = self._keys.get(key_name)
        if key is None:
            msg = f"no such key {key_name!r}"
            raise _auth_error(msg, 40101, 401)
        if not isinstance(body, dict):
            msg = "token request body must be an object"
            raise _auth_error(msg, 40000, 400)
        body = {k: v for k, v in body.items() if v is not None}
        if body.get("keyName", key_name) != key_name:
            msg = "token request keyName does not match the URL"
            raise _auth_error(msg, 40101, 401)
        mac = body.get("mac")
        if mac is None:
            # ably-server accepts an unsigned request made with Basic auth for the same key.
            if basic_key is None or basic_key.name != key.name:
                msg = "token request is not signed"
                raise _auth_error(msg, 40101, 401)
        else:
            text = "\n".join(
                [
                    key_name,
                    _str(body.get("ttl")),
                    _str(body.get("capability")),
                    _str(body.get("clientId")),
                    _str(body.get("timestamp")),
                    _str(body.get("nonce")),
                    "",
                ]
            )
            expected = base64.b64encode(hmac.new(key.secret.encode(), text.encode(), hashlib.sha256).digest())
            if not isinstance(mac, str) or not hmac.compare_digest(expected, mac.encode()):
                msg = "token request signature (mac) does not verify"
                raise _auth_error(msg, 40101, 401)
            ts = body.get("timestamp")
            if not isinstance(ts, int | float) or abs(now_ms - int(ts)) > TOKEN_REQUEST_MAX_SKEW_MS:
                msg = "token request timestamp not current"
                raise _auth_error(msg, 40104, 401)
            nonce = body.get("nonce")
            if not isinstance(nonce, str) or len(nonce) < 16:
                msg = "token request nonce must be a string of at least 16 characters"
                raise _auth_error(msg, 40000, 400)
            if not self.nonces.check_and_add(key_name, nonce, now_ms):
                msg = "token request nonce replayed"
                raise _auth_error(msg, 40105, 401)
        ttl = body.get("ttl")
        ttl_ms = DEFAULT_TOKEN_TTL_MS if ttl in (None, "") else _int(ttl, "ttl")
        if ttl_ms <= 0 or ttl_ms > MAX_TOKEN_TTL_MS:
            msg = "token request ttl out of range"
            raise _auth_error(msg, 40003, 400)
        cap_raw = body.get("capability")
        capability = key.capability if cap_raw in (None, "") else Capability.parse(cap_raw)
        capability = capability.restrict_to(key.capability)
        client_id = body.get("clientId")
        if client_id is not None and (not isinstance(client_id, str) or not client_id):
            msg = "token request clientId must be a non-empty string"
            raise _auth_error(msg, 40012, 400)
        token, claims = self.mint(
            key=key, client_id=client_id, capability=capability, ttl_ms=ttl_ms, now_ms=now_ms
        )
        return token_details(token, claims)


def token_details(token: str, claims: TokenClaims) -> dict[str, Any]:
    out: dict[str, Any] = {
        "token": token,
        "keyName": claims.key_name,
        "issued": claims.issued_ms,
        "expires": claims.expires_ms,
        "capability": claims.capability.canonical(),
    }
    if claims.client_id is not None:
        out["clientId"] = claims.client_id
    return out


def _seconds(ms: int) -> int | float:
    """Milliseconds as JWT seconds: an integer when whole, else fractional."""
    return ms // 1000 if ms % 1000 == 0 else ms / 1000


def _str(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _int(value: Any, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        msg = f"token request {name} must be an integer"
        raise _auth_error(msg, 40003, 400) from None


def resolve_client_id(
    claimed: str | None, requested: str | None, *, via_token: bool
) -> tuple[str | None, bool]:
    """Apply Ably's clientId rules; return ``(client_id, wildcard)`` or raise ``AuthError(40102)``.

    Basic auth: the requested id (or anonymous). Token with a concrete claim: that id, and a
    different requested id is refused. Claim ``*``: any requested id. No claim: anonymous only.
    """
    if requested == "*":
        requested = None
    if not via_token:
        return requested, requested is None
    if claimed == "*":
        return requested, True
    if claimed is None:
        if requested is not None:
            msg = f"clientId {requested!r} is incompatible with a token that has no clientId"
            raise _auth_error(msg, 40102, 401)
        return None, False
    if requested is not None and requested != claimed:
        msg = f"clientId {requested!r} is incompatible with the token's clientId"
        raise _auth_error(msg, 40102, 401)
    return claimed, False
