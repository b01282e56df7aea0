"""Helpers that point the official ably-python SDK at an :class:`EmbeddedServer`.

ably-python 3.1.4 ignores ``port`` for WebSockets, so both helpers use the trailing-slash endpoint
``"127.0.0.1:PORT/"``: realtime connects to ``ws://127.0.0.1:PORT/?…`` and REST requests become
``http://127.0.0.1:PORT/:80`` + absolute path, which ``urljoin`` collapses to the right URL. Over
plain HTTP ably-python refuses Basic auth, so both use token auth with JWTs the server mints.
"""

from __future__ import annotations

import json
from typing import Any

from ably import AblyRealtime, AblyRest
from ably.types.tokendetails import TokenDetails

from agent_worker.server.app import EmbeddedServer, TokenMint
from agent_worker.server.auth import ApiKey, KeyRing

__all__ = ["RemoteServer", "python_realtime", "python_rest", "sdk_endpoint", "sdk_token_details"]


class RemoteServer(TokenMint):
    """A server running elsewhere (e.g. ``agent-worker server``), known by endpoint and key.

    Offers what the helpers below need from an :class:`EmbeddedServer`: ``host``, ``port``,
    ``endpoint``, ``mint_token`` and ``token_details`` (JWTs signed locally with ``key``).
    """

    def __init__(self, endpoint: str, key: str) -> None:
        host, _, port = endpoint.rpartition(":")
        self.host, self.port, self.endpoint = host, int(port), endpoint
        self._keyring = KeyRing([ApiKey.parse(key)])

    def __repr__(self) -> str:
        return f"RemoteServer(endpoint={self.endpoint!r})"


Target = EmbeddedServer | RemoteServer


def sdk_endpoint(server: Target) -> str:
    """The ``endpoint`` option value that works for ably-python realtime and REST alike."""
    return f"{server.host}:{server.port}/"


def sdk_token_details(
    server: Target,
    client_id: str | None = None,
    capability: dict[str, list[str]] | None = None,
    ttl_s: float = 3600,
) -> TokenDetails:
    """A fresh server-minted JWT as an ably-python ``TokenDetails``.

    Return this (not a bare string) from an ``auth_callback``: ably-python insists that a renewed
    token's clientId matches the one it already has, and a bare string has none.
    """
    d = server.token_details(client_id=client_id, capability=capability, ttl_s=ttl_s)
    return TokenDetails(
        token=d["token"],
        expires=d["expires"],
        issued=d["issued"],
        capability=json.loads(d["capability"]),
        client_id=d.get("clientId"),
    )


def _sdk_options(
    server: Target,
    client_id: str | None,
    token: str | None,
    *,
    capability: dict[str, list[str]] | None,
    ttl_s: float,
    opts: dict[str, Any],
) -> dict[str, Any]:
    """Client options shared by realtime and REST: endpoint, token auth, clientId, then ``opts``."""
    options: dict[str, Any] = {"endpoint": sdk_endpoint(server), "tls": False}
    if token is not None:
        options["token"] = token
    else:

        async def auth_callback(_params: Any) -> TokenDetails:
            # A fresh JWT on every (re-)auth, so renewal works as against Ably.
            return sdk_token_details(server, client_id, capability, ttl_s)

        options["auth_callback"] = auth_callback
    if client_id is not None:
        options["client_id"] = client_id
    options.update(opts)
    return options


def python_realtime(
    server: Target,
    client_id: str | None = None,
    token: str | None = None,
    *,
    capability: dict[str, list[str]] | None = None,
    ttl_s: float = 3600,
    **opts: Any,
) -> AblyRealtime:
    """An ``AblyRealtime`` connected (auto-connect) to ``server`` with token auth.

    With ``token`` the client uses that fixed JWT (it cannot renew); otherwise an ``auth_callback``
    mints a JWT for ``client_id`` / ``capability`` on each auth. Extra ``opts`` go to the SDK.
    """
    return AblyRealtime(
        **_sdk_options(server, client_id, token, capability=capability, ttl_s=ttl_s, opts=opts)
    )


def python_rest(
    server: Target,
    client_id: str | None = None,
    token: str | None = None,
    *,
    capability: dict[str, list[str]] | None = None,
    ttl_s: float = 3600,
    **opts: Any,
) -> AblyRest:
    """An ``AblyRest`` for ``server`` with token auth (see :func:`python_realtime`)."""
    return AblyRest(**_sdk_options(server, client_id, token, capability=capability, ttl_s=ttl_s, opts=opts))
