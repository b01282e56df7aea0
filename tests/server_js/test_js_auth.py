"""ably-js token auth (JWT literal, authCallback, authUrl, TokenRequest) and capability scoping."""

from __future__ import annotations

from typing import Any

import pytest

from agent_worker.server import EmbeddedServer
from tests.server_js.server_js_support import scenario

pytestmark = pytest.mark.node

SCOPE = {"conversations:alice:*": ["publish", "subscribe", "history", "presence"]}


@pytest.fixture(scope="module")
def auth(protocol: str) -> dict[str, Any]:
    def mint(server: EmbeddedServer) -> dict[str, str]:
        return {
            "token": server.mint_token(client_id="tok-user", capability={"*": ["*"]}, ttl_s=600),
            "scopedToken": server.mint_token(client_id="alice", capability=SCOPE, ttl_s=600),
        }

    return scenario("auth.mjs", protocol, prepare=mint)


def test_wrong_secret_fails_the_connection(auth: dict[str, Any]) -> None:
    assert auth["badKey"] == {"state": "failed", "code": 40101}


@pytest.mark.parametrize("way", ["literal", "authCallback", "authUrl"])
def test_jwt_from_mint_token(auth: dict[str, Any], way: str) -> None:
    seen = auth[way]
    assert seen["clientId"] == "tok-user"
    assert len(seen["serials"]) == 1
    assert [m["data"] for m in seen["history"]] == ["via token"]
    assert seen["history"][0]["clientId"] == "tok-user"


def test_auth_callback_and_url_were_used(auth: dict[str, Any]) -> None:
    assert auth["authCallback"]["calls"] >= 1
    assert auth["authUrl"]["hits"] >= 1


def test_token_request_is_exchanged_by_the_server(auth: dict[str, Any]) -> None:
    assert auth["tokenRequest"]["clientId"] == "tr-user"
    assert auth["tokenRequest"]["history"][0]["clientId"] == "tr-user"
    rt = auth["requestToken"]
    assert rt["hasToken"] and rt["clientId"] == "rt-user" and rt["ttlMs"] == 60_000
    assert len(rt["restPublish"]["serials"]) == 1
    assert [(m["data"], m["clientId"]) for m in rt["restHistory"]] == [("rest via token", "rt-user")]


def test_scoped_token_works_inside_its_scope(auth: dict[str, Any]) -> None:
    scoped = auth["scoped"]
    assert scoped["clientId"] == "alice"
    assert scoped["allowed"]["state"] == "attached"
    assert len(scoped["allowed"]["serials"]) == 1
    assert scoped["allowed"]["history"] == ["allowed"]
    assert len(scoped["restAllowed"]["serials"]) == 1


@pytest.mark.parametrize("operation", ["attach", "publish", "history", "restPublish", "restHistory"])
def test_scoped_token_is_refused_elsewhere(auth: dict[str, Any], operation: str) -> None:
    error = auth["scoped"]["denied"][operation]
    assert error is not None, f"{operation} outside conversations:alice:* was allowed"
    assert error["code"] == 40160


def test_refusals_leave_connection_and_allowed_channel_intact(auth: dict[str, Any]) -> None:
    scoped = auth["scoped"]
    assert scoped["denied"]["attachState"] == "failed"
    assert scoped["afterwards"]["connection"] == "connected"
    assert scoped["afterwards"]["allowedChannel"] == "attached"
    assert len(scoped["afterwards"]["serials"]) == 1
