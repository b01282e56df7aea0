"""Connection keys that the server can later recognise as its own. Pure.

Ably signs each connection key, so a resume or recover with a key it never issued is answered with
80018 (invalid format) while a genuine key whose connection is gone gets 80008 (expired). The
signing secret is derived from the server's default API key, so keys stay recognisable across a
restart (their connections are gone then: 80008, as on Ably).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = ["ConnectionKeys"]


class ConnectionKeys:
    def __init__(self, key_secret: str) -> None:
        self._secret = hashlib.sha256(b"agent-worker connection keys\0" + key_secret.encode()).digest()

    def __repr__(self) -> str:
        return "ConnectionKeys()"

    def _sign(self, body: str) -> str:
        return hmac.new(self._secret, body.encode(), hashlib.sha256).hexdigest()[:16]

    def issue(self, connection_id: str) -> str:
        """``{connectionId}!{nonce}.{signature}``; a fresh key for every call."""
        body = f"{connection_id}!{secrets.token_urlsafe(9)}"
        return f"{body}.{self._sign(body)}"

    def verify(self, key: str) -> bool:
        body, sep, sig = key.rpartition(".")
        if not sep or "!" not in body:
            return False
        return hmac.compare_digest(self._sign(body), sig)
