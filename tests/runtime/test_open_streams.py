"""OpenStreams: which streamed messages a session last saw ``streaming``, live or from history."""

from __future__ import annotations

from agent_worker.protocol.wire import Action, InboundMessage
from agent_worker.runtime.folding import OpenStreams


def wire(serial: str, action: Action, status: str | None, run_id: str = "r1") -> InboundMessage:
    transport = {"stream": "true", "run-id": run_id}
    if status is not None:
        transport["status"] = status
    return InboundMessage(
        name="ai-output", data="x", extras={"ai": {"transport": transport}}, action=action, serial=serial
    )


def test_live_create_then_closing_append() -> None:
    streams = OpenStreams()
    streams.observe(wire("s1", "message.create", "streaming"))
    streams.observe(wire("s1", "message.append", None))
    assert [m.serial for m in streams.of_run("r1")] == ["s1"]
    assert streams.of_run("r2") == []
    streams.observe(wire("s1", "message.append", "complete"))
    assert streams.of_run("r1") == []


def test_history_order_and_rolled_up_entries() -> None:
    streams = OpenStreams()
    # Newest page first: the closing append of s1 folds before its create.
    streams.observe(wire("s1", "message.append", "cancelled"))
    streams.observe(wire("s1", "message.create", "streaming"))
    # A rolled-up history entry of a stream a dead writer left open.
    streams.observe(wire("s2", "message.append", "streaming"))
    streams.observe(InboundMessage(name="ai-output", data="", extras={}, serial="s3"))  # not a stream
    assert [m.serial for m in streams.of_run("r1")] == ["s2"]


def test_bounded() -> None:
    streams = OpenStreams(limit=2)
    for i in range(5):
        streams.observe(wire(f"s{i}", "message.create", "streaming"))
    assert [m.serial for m in streams.of_run("r1")] == ["s3", "s4"]
