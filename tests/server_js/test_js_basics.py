"""ably-js 2.28 against the embedded server: connection, channels, publish, REST, mutable messages."""

from __future__ import annotations

from typing import Any

import pytest

from tests.server_js.server_js_support import scenario, strictly_increasing

pytestmark = pytest.mark.node

MAX_MESSAGE_SIZE = 4096
EXTRAS = {
    "headers": {"x-kind": "greeting", "n": "1"},
    "ai": {"transport": {"status": "streaming", "ids": [1, 2, 3]}},
    "flag": True,
    "num": 12.5,
    "text": "unicode ✓ ünï",
}
PUBLISHED = ["one", "two", "three", "eph", "bin"]


def by_name(messages: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (found,) = [m for m in messages if m["name"] == name]
    return found


@pytest.fixture(scope="module")
def basics(protocol: str) -> dict[str, Any]:
    """One Node run per wire format; the tests below each check one behaviour of it."""
    server = {"max_message_size": MAX_MESSAGE_SIZE}
    return scenario("basics.mjs", protocol, server=server, maxMessageSize=MAX_MESSAGE_SIZE)


def test_connect_time_ping_attach(basics: dict[str, Any]) -> None:
    conn = basics["connection"]
    assert conn["aId"] and conn["bId"] and conn["aId"] != conn["bId"]
    assert conn["aHasKey"]
    assert conn["aClientId"] == "alice"
    assert abs(basics["time"]["server"] - basics["time"]["local"]) < 60_000
    assert isinstance(basics["ping"], int | float)
    assert basics["attach"]["state"] == "attached"
    assert basics["attach"]["resumed"] is False
    assert {"publish", "subscribe", "presence", "presence_subscribe"} <= set(basics["attach"]["modes"])


def test_publish_serials_echo_and_delivery(basics: dict[str, Any]) -> None:
    pub = basics["publish"]
    serials = pub["single"]["serials"] + pub["batch"]["serials"] + pub["ephemeral"]["serials"]
    serials += pub["binary"]["serials"]
    assert len(serials) == 5
    durable = [s for i, s in enumerate(serials) if i != 3]  # an ephemeral message need not have one
    assert all(isinstance(s, str) for s in durable)
    assert strictly_increasing(durable)

    a_id = basics["connection"]["aId"]
    # seenA: echo of alice's own publishes; seenD: a subscriber using the other wire format
    for seen in (basics["seenB"], basics["seenA"], basics["seenD"]):
        mine = [m for m in seen if m["name"] in PUBLISHED]
        assert [m["name"] for m in mine] == PUBLISHED
        assert [m["serial"] for i, m in enumerate(mine) if i != 3] == durable
        assert all(m["clientId"] == "alice" and m["connectionId"] == a_id for m in mine)
        assert all(m["action"] == "message.create" for m in mine)
        assert by_name(mine, "one")["data"] == "hello"
        assert by_name(mine, "two")["data"] == {"structured": [1, "x"]}
        assert by_name(mine, "bin")["data"] == {"binary": "AAEC+g=="}
        assert by_name(mine, "three")["extras"] == EXTRAS

    # echoMessages: false suppresses carol's own message but not alice's
    names_c = [m["name"] for m in basics["seenC"]]
    assert "carol-own" not in names_c
    assert "marker-c" in names_c and "one" in names_c
    assert "carol-own" in [m["name"] for m in basics["seenB"]]


def test_extras_verbatim_and_ephemeral_not_in_history(basics: dict[str, Any]) -> None:
    eph = by_name(basics["seenB"], "eph")
    assert eph["data"] == "ephemeral"
    assert eph["extras"]["ephemeral"] is True
    names = [m["name"] for m in basics["history"]]
    assert "eph" not in names
    assert names == ["marker-c", "carol-own", "bin", "three", "two", "one"]
    assert by_name(basics["history"], "three")["extras"] == EXTRAS
    assert by_name(basics["history"], "bin")["data"] == {"binary": "AAEC+g=="}
    other = basics["historyOtherFormat"]
    assert [m["name"] for m in other] == names
    assert by_name(other, "bin")["data"] == {"binary": "AAEC+g=="}
    assert by_name(other, "three")["extras"] == EXTRAS


def test_detach_stops_delivery(basics: dict[str, Any]) -> None:
    assert basics["detachState"] == "detached"
    assert basics["seenBAfterDetach"] == ["after-reattach"]


def test_rest_publish_and_link_paging(basics: dict[str, Any]) -> None:
    rest = basics["rest"]
    assert len(rest["publish"]["serials"]) == 5
    assert strictly_increasing(rest["publish"]["serials"])
    assert rest["backwards"] == ["r5", "r4", "r3", "r2", "r1"]
    assert rest["backwardsPages"] == [2, 2, 1]
    assert rest["forwards"] == ["r1", "r2", "r3", "r4", "r5"]
    assert rest["forwardsPages"] == [2, 2, 1]
    assert rest["extras"] == [{"headers": {"i": str(i)}} for i in range(1, 6)]


def test_rest_publish_is_idempotent_on_message_id(basics: dict[str, Any]) -> None:
    idem = basics["idempotent"]
    assert [(m["id"], m["data"]) for m in idem["history"]] == [("fixed-id:0", "once")]
    assert len(idem["first"]["serials"]) == 1


def test_rest_get_update_delete_versions(basics: dict[str, Any]) -> None:
    mut = basics["mutable"]
    target = mut["target"]
    assert mut["got"]["serial"] == target
    assert (mut["got"]["action"], mut["got"]["data"], mut["got"]["name"]) == ("message.create", "d1", "r1")

    upd = mut["update"]["versionSerial"]
    after = mut["afterUpdate"]
    assert isinstance(upd, str) and upd > target
    assert (after["action"], after["data"], after["serial"]) == ("message.update", "edited", target)
    assert after["name"] == "r1" and after["extras"] == {"headers": {"i": "1"}}  # carried forward
    assert after["version"]["serial"] == upd
    assert after["version"]["description"] == "fix typo"
    assert after["version"]["metadata"] == {"k": "v"}

    dele = mut["delete"]["versionSerial"]
    assert isinstance(dele, str) and dele > upd
    assert mut["afterDelete"]["action"] == "message.delete"
    assert mut["afterDelete"]["version"]["serial"] == dele

    versions = mut["versions"]
    assert [v["action"] for v in versions] == ["message.create", "message.update", "message.delete"]
    assert [v["version"]["serial"] for v in versions] == [target, upd, dele]
    assert [v["data"] for v in versions[:2]] == ["d1", "edited"]

    entries = [m for m in mut["history"] if m["serial"] == target]
    assert len(entries) == 1 and entries[0]["action"] == "message.delete"


def test_realtime_update_and_delete_reach_subscribers(basics: dict[str, Any]) -> None:
    rt = basics["realtimeMutable"]
    upd, dele = rt["update"]["versionSerial"], rt["delete"]["versionSerial"]
    assert isinstance(upd, str) and isinstance(dele, str) and upd < dele
    seen = rt["seenB"]
    assert [m["action"] for m in seen] == ["message.create", "message.update", "message.delete"]
    assert seen[1]["data"] == "hello, edited"
    assert seen[1]["version"]["serial"] == upd and seen[1]["version"]["description"] == "rt"
    assert seen[2]["version"]["serial"] == dele


def test_max_message_size(basics: dict[str, Any]) -> None:
    limits = basics["maxMessageSize"]
    # ably-js enforces the maxMessageSize the server advertised in connectionDetails ...
    assert limits["realtimePublish"]["code"] == 40009
    # ... and the server enforces it itself, over REST and for realtime appends
    assert limits["restPublish"]["code"] == 40009
    assert limits["restPublish"]["statusCode"] == 400
    assert limits["realtimeAppend"]["code"] == 40009
    assert limits["connectionStateAfter"] == "connected"
    assert limits["channelStateAfter"] == "attached"
