"""ably-js presence: enter/update/leave/get, SYNC, LEAVE on close and on an abrupt process death."""

from __future__ import annotations

from typing import Any

import pytest

from tests.server_js.server_js_support import scenario

pytestmark = pytest.mark.node


@pytest.fixture(scope="module")
def presence(protocol: str) -> dict[str, Any]:
    # an abruptly dropped member stays present this long (a resume would cancel its LEAVE)
    return scenario("presence.mjs", protocol, server={"presence_leave_delay_ms": 1500})


def members(listing: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    return [(m["clientId"], m["data"]) for m in listing]


def test_enter_update_leave_get(presence: dict[str, Any]) -> None:
    assert members(presence["membersAfterEnter"]) == [("p1", {"mood": "thoughtful"}), ("p2", "hi")]
    assert members(presence["membersAfterLeave"]) == [("p1", {"mood": "thoughtful"})]
    events = [(e["action"], e["clientId"]) for e in presence["events"]]
    assert events[:4] == [("enter", "p1"), ("enter", "p2"), ("update", "p1"), ("leave", "p2")]
    (leave,) = [e for e in presence["events"] if e["action"] == "leave" and e["clientId"] == "p2"]
    assert leave["data"] == "bye"


def test_late_attacher_receives_members_by_sync(presence: dict[str, Any]) -> None:
    assert members(presence["lateMembers"]) == [("p1", {"mood": "thoughtful"})]


def test_leave_is_synthesized_when_a_member_dies(presence: dict[str, Any]) -> None:
    assert ("ghost", "boo") in members(presence["membersWithGhost"])
    leaves = [e for e in presence["events"] if e["action"] == "leave" and e["clientId"] == "ghost"]
    assert len(leaves) == 1
    assert leaves[0]["connectionId"] == presence["ghost"]["connectionId"]
    assert "ghost" not in [c for c, _ in members(presence["membersAfterGhost"])]


def test_leave_on_close(presence: dict[str, Any]) -> None:
    assert presence["events"][-1]["action"] == "leave"
    assert presence["events"][-1]["clientId"] == "p1"
    assert presence["membersAfterClose"] == []
