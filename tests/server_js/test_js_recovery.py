"""ably-js token renewal across expiry and in-band AUTH; surfaced continuity loss + gap fill."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from agent_worker.server import EmbeddedServer
from tests.server_js.server_js_support import scenario

pytestmark = pytest.mark.node

TTL_S = 2


def control(server: EmbeddedServer) -> Callable[[dict[str, Any]], Any]:
    def handle(request: dict[str, Any]) -> dict[str, Any]:
        if request["op"] == "mint":
            return {"token": server.mint_token(client_id="renewer", ttl_s=request["ttl_s"])}
        assert request["op"] == "drop"
        n = server.drop_connections(client_id=request["clientId"], resume=request["resume"])
        return {"dropped": n}

    return handle


@pytest.fixture(scope="module")
def tokens(protocol: str) -> dict[str, Any]:
    return scenario("tokens.mjs", protocol, control=control, ttlSeconds=TTL_S)


@pytest.fixture(scope="module")
def continuity(protocol: str) -> dict[str, Any]:
    return scenario("continuity.mjs", protocol, control=control)


def test_expired_token_is_renewed_and_the_connection_resumed(tokens: dict[str, Any]) -> None:
    expiries = [e for e in tokens["log"] if e["kind"] == "connection" and e["event"] == "disconnected"]
    assert expiries and all(e["code"] == 40142 for e in expiries)
    assert tokens["calls"] >= 2 + len(expiries)  # first token, one per expiry, authorize()
    assert tokens["ids"]["last"] == tokens["ids"]["first"]
    assert tokens["clientId"] == "renewer"
    assert tokens["states"] == {"connection": "connected", "channel": "attached"}
    channel = [e for e in tokens["log"] if e["kind"] == "channel"]
    assert all(e["resumed"] for e in channel if e["event"] in ("attached", "update")), channel


def test_in_band_authorize_keeps_the_connection(tokens: dict[str, Any]) -> None:
    auth = tokens["authorize"]
    assert auth["newCall"] and auth["hasToken"]
    assert auth["idAfter"] == tokens["ids"]["first"]


def test_no_message_lost_or_doubled_across_renewals(tokens: dict[str, Any]) -> None:
    assert tokens["seen"] == [f"m-{i}" for i in range(24)] + ["end"]


def test_continuity_loss_is_surfaced(continuity: dict[str, Any]) -> None:
    assert continuity["drop"] == {"dropped": 1}
    assert continuity["idAfter"] != continuity["idBefore"]
    assert any(not e["resumed"] for e in continuity["log"] if e["event"] in ("attached", "update"))


def test_history_until_attach_fills_the_gap(continuity: dict[str, Any]) -> None:
    live = continuity["live"]
    assert len(live) == len(set(live))
    assert live[:5] == [f"m-{i}" for i in range(5)]
    assert live[-5:] == [f"m-{i}" for i in range(10, 15)]
    # untilAttach stops at the new attach point: everything before it, newest first
    history = continuity["history"]
    assert all(int(name[2:]) < 10 for name in history)
    assert set(live) | set(history) == {f"m-{i}" for i in range(15)}
    assert continuity["pages"][0] == 4
