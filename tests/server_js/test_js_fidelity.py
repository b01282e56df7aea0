"""ably-js sees Ably's behaviour where an app can tell the difference (issue 16).

One Node run per wire format against a server with two keys (one restricted by a capability) and
channel rules: ``conversations`` has mutable messages, ``private`` is identified-only, the test's own
namespace has no rule (so Ably's defaults: no appends, short history).
"""

from __future__ import annotations

from typing import Any

import pytest

from agent_worker.server import EmbeddedServer
from agent_worker.server.channel_rules import ChannelRule
from tests.server_js.server_js_support import scenario

pytestmark = pytest.mark.node

RESTRICTED_KEY = "app.restricted:restricted-secret-long-enough-xxxxxxxx"
UNPERSISTED_MS = 2000


@pytest.fixture(scope="module")
def seen(protocol: str) -> dict[str, Any]:
    def control(server: EmbeddedServer) -> Any:
        def handle(request: dict[str, Any]) -> dict[str, Any]:
            n = server.drop_connections(request["drop"], resume=request["resume"])
            return {"dropped": n}

        return handle

    def prepare(server: EmbeddedServer) -> dict[str, Any]:
        return {"restrictedKey": RESTRICTED_KEY, "restrictedNs": "team", "unpersistedMs": UNPERSISTED_MS}

    return scenario(
        "fidelity.mjs",
        protocol,
        server={
            "keys": ["local.dev:local-dev-secret-not-for-production", RESTRICTED_KEY],
            "key_capabilities": {"app.restricted": '{"team:inside:*":["publish","subscribe","history"]}'},
            "channel_rules": (
                ChannelRule("conversations", mutable_messages=True),
                ChannelRule("private", identified_only=True),
            ),
            "unpersisted_history_ms": UNPERSISTED_MS,
        },
        prepare=prepare,
        control=control,
        timeout=150.0,
    )


def test_params_modes_win_over_mode_flags(seen: dict[str, Any]) -> None:
    got = seen["paramsModes"]
    assert got["modes"] == ["presence", "subscribe"]
    assert got["params"] == {"modes": "presence,subscribe"}
    assert got["publish"]["code"] == 40165 and got["publish"]["statusCode"] == 401
    assert got["enter"] is None


def test_subscribe_only_cannot_publish_or_enter(seen: dict[str, Any]) -> None:
    got = seen["subscribeOnly"]
    assert got["modes"] == ["subscribe"]
    assert got["publish"]["code"] == 40165
    assert got["enter"]["code"] == 40165
    assert (got["state"], got["connection"]) == ("attached", "connected")


def test_unknown_params_are_dropped_unsupported_ones_refused(seen: dict[str, Any]) -> None:
    got = seen["params"]
    assert got["echoed"] == {"rewind": "1"}
    assert got["occupancy"]["code"] == 40000 and got["occupancy"]["statusCode"] == 400
    assert got["derived"]["code"] == 40000
    assert "not supported" in got["derived"]["message"]
    assert got["qualified"]["code"] == 40000


def test_rewind_sets_has_backlog_only_with_messages(seen: dict[str, Any]) -> None:
    got = seen["backlog"]
    assert got["empty"] is False
    assert got["full"] is True
    assert got["rewound"] == ["second"]


def test_reattach_after_continuity_loss_is_not_rewound_again(seen: dict[str, Any]) -> None:
    assert seen["rewindOnce"] == ["old", "new"]


def test_recover_of_a_live_connection_takes_it_over(seen: dict[str, Any]) -> None:
    got = seen["recover"]
    assert got["sameId"] and got["newKey"] and got["reason"] is None
    # The old client's key stopped working: it gets a new connection (80008), not the same one back.
    assert got["oldClientNewId"] and got["oldClientReason"] == 80008
    assert got["secondStillId"]


def test_unrecoverable_connection_key_is_80018(seen: dict[str, Any]) -> None:
    assert seen["unrecoverable"] == {"reason": 80018, "keyReplaced": True}


def test_rest_publish_with_connection_key_is_attributed(seen: dict[str, Any]) -> None:
    got = seen["onBehalf"]
    assert got["connectionId"] == got["expected"]
    assert got["badKey"]["code"] == 40006


def test_token_expiry_is_kept_to_the_millisecond(seen: dict[str, Any]) -> None:
    got = seen["tokens"]
    assert got["ttl"] == 1
    # ably-js cannot renew a bare token: it reports the server's 40142 as 40171 (no means to renew).
    assert got["expiredUse"] is not None and got["expiredUse"]["code"] in (40142, 40171)


def test_invalid_capabilities_are_400(seen: dict[str, Any]) -> None:
    got = seen["tokens"]
    assert (got["invalidStar"]["code"], got["invalidStar"]["statusCode"]) == (40000, 400)
    assert (got["invalidOp"]["code"], got["invalidOp"]["statusCode"]) == (40000, 400)


def test_key_capability_intersects_nested_namespaces(seen: dict[str, Any]) -> None:
    got = seen["restricted"]
    assert got["capability"] == {"team:inside:*": ["history", "publish", "subscribe"]}
    assert got["inside"] == "attached"
    assert got["outside"]["code"] == 40160
    assert got["emptyIntersection"]["statusCode"] == 401


def test_mutations_need_the_mutable_messages_rule(seen: dict[str, Any]) -> None:
    got = seen["rules"]
    for op in ("append", "update", "restUpdate"):
        assert (got[op]["code"], got[op]["statusCode"]) == (93002, 400), op
    assert got["mutableAppend"] == "ok"


def test_identified_only_namespace(seen: dict[str, Any]) -> None:
    got = seen["rules"]
    assert got["anonAttach"]["code"] == 40161
    assert got["anonRest"]["code"] == 40161
    assert got["namedAttach"] is None


def test_history_without_persistence_rule_is_short(seen: dict[str, Any]) -> None:
    got = seen["rules"]["history"]
    assert got["ephemeral"] == []
    assert got["kept"] == ["kept"]
