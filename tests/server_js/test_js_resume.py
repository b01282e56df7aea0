"""ably-js across forced connection drops mid-stream: RESUMED, same connection, no loss, no dups."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from agent_worker.server import EmbeddedServer
from tests.server_js.server_js_support import scenario, strictly_increasing

pytestmark = pytest.mark.node

COUNT = 60


def dropper(server: EmbeddedServer) -> Callable[[dict[str, Any]], Any]:
    def handle(request: dict[str, Any]) -> dict[str, Any]:
        assert request["op"] == "drop"
        dropped = server.drop_connections(client_id=request.get("clientId"))
        return {"dropped": dropped}

    return handle


@pytest.fixture(scope="module")
def resume(protocol: str) -> dict[str, Any]:
    return scenario("resume.mjs", protocol, control=dropper)


def test_connections_resume_with_the_same_id(resume: dict[str, Any]) -> None:
    assert [d["at"] for d in resume["drops"]] == [15, 40]
    assert resume["ids"]["after"] == resume["ids"]["before"]
    assert resume["finalStates"] == {
        "agent": "connected",
        "watcher": "connected",
        "chA": "attached",
        "chW": "attached",
    }
    for log, drops in ((resume["agentLog"], 1), (resume["watcherLog"], 2)):
        states = [e["state"] for e in log if e["kind"] == "connection"]
        assert states.count("disconnected") == drops, states
        assert not {"suspended", "failed", "closed"} & set(states)
        assert all(
            e["id"] in resume["ids"]["before"].values()
            for e in log
            if e["kind"] == "connection" and e["state"] == "connected"
        )


def test_every_reattach_is_resumed(resume: dict[str, Any]) -> None:
    for log in (resume["agentLog"], resume["watcherLog"]):
        channel = [e for e in log if e["kind"] == "channel"]
        attached = [e for e in channel if e["event"] == "attached"]
        assert attached, "the channel never re-attached after the drop"
        assert all(e["resumed"] for e in attached), channel
        lost = [e for e in channel if e["event"] in ("update", "detached", "suspended", "failed")]
        assert not lost, channel


def test_no_missing_or_duplicate_messages(resume: dict[str, Any]) -> None:
    names = [m["name"] for m in resume["plain"]]
    assert names == [f"m-{i}" for i in range(COUNT)] + ["end"]
    assert strictly_increasing([m["serial"] for m in resume["plain"]])
    assert resume["publishSerials"] == [m["serial"] for m in resume["plain"]][:COUNT]
    assert strictly_increasing(resume["appendVersions"])


def test_streamed_text_is_complete_and_not_doubled(resume: dict[str, Any]) -> None:
    stream = resume["stream"]
    assert stream["text"] == resume["expectedText"]
    assert stream["stale"] == 0, stream["actions"]
