"""ably-js appendMessage streaming: pipelined appends, late joiner, history({untilAttach: true})."""

from __future__ import annotations

from typing import Any

import pytest

from tests.server_js.server_js_support import scenario, strictly_increasing

pytestmark = pytest.mark.node


@pytest.fixture(scope="module")
def stream(protocol: str) -> dict[str, Any]:
    return scenario("streaming.mjs", protocol)


def events_for(seen: list[dict[str, Any]], serial: str) -> list[dict[str, Any]]:
    return [m for m in seen if m["serial"] == serial]


def test_pipelined_appends_return_increasing_version_serials(stream: dict[str, Any]) -> None:
    for done in stream["completed"]:
        assert len(done["versions"]) == 3
        assert strictly_increasing([done["serial"], *done["versions"]])
    live = stream["live"]
    assert len(live["versions"]) == 4
    assert strictly_increasing([live["serial"], *live["versions"]])


def test_early_subscriber_gets_create_then_deltas(stream: dict[str, Any]) -> None:
    for done in [*stream["completed"], stream["live"]]:
        events = events_for(stream["seenEarly"], done["serial"])
        assert events[0]["action"] == "message.create"
        assert all(e["action"] == "message.append" for e in events[1:])
        assert [e["version"]["serial"] for e in events[1:]] == done["versions"]
        assert "".join(e["data"] for e in events) == done["text"]


def test_late_joiner_gets_full_text_then_deltas(stream: dict[str, Any]) -> None:
    live = stream["live"]
    events = events_for(stream["seenLate"], live["serial"])
    first, rest = events[0], events[1:]
    assert first["action"] == "message.update"
    assert first["data"] == "Hello wor"  # everything so far, at first contact
    assert first["version"]["serial"] == live["versions"][1]
    assert [e["action"] for e in rest] == ["message.append", "message.append"]
    assert [e["data"] for e in rest] == ["ld", "!"]
    assert first["data"] + "".join(e["data"] for e in rest) == live["text"]
    # no rewind: nothing completed before the attach is replayed live
    assert {m["serial"] for m in stream["seenLate"]} == {live["serial"], stream["after"]}


def test_history_until_attach_returns_each_message_once_rolled_up(stream: dict[str, Any]) -> None:
    paged = stream["untilAttach"]
    items = paged["items"]
    assert paged["pages"] == [2, 2, 1]
    done = stream["completed"]
    expected = [stream["live"]["serial"], stream["plain"], *[d["serial"] for d in reversed(done)]]
    assert [m["serial"] for m in items] == expected  # newest first, each exactly once
    assert stream["after"] not in {m["serial"] for m in items}
    for d in done:
        (entry,) = [m for m in items if m["serial"] == d["serial"]]
        assert (entry["action"], entry["data"], entry["name"]) == ("message.update", d["text"], d["name"])
        assert entry["version"]["serial"] == d["versions"][-1]
    (plain,) = [m for m in items if m["serial"] == stream["plain"]]
    assert (plain["action"], plain["data"]) == ("message.create", "just text")
    (live,) = [m for m in items if m["serial"] == stream["live"]["serial"]]
    assert live["data"].startswith("Hello") and stream["live"]["text"].startswith(live["data"])
    assert [m["serial"] for m in stream["untilAttachWhole"]] == expected


def test_plain_history_includes_messages_after_attach(stream: dict[str, Any]) -> None:
    serials = [m["serial"] for m in stream["history"]]
    assert serials[0] == stream["after"]
    assert len(serials) == len(set(serials)) == 6
