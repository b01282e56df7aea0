"""The shapes that keep fewer objects per folded message behave as the ones they replace: a wire-log
entry is its list of events, a step's emptied text trackers are dropped (a fresh one is the same)."""

from __future__ import annotations

from typing import Any

from agent_worker.protocol.nodes import LogEntry, WireLog
from agent_worker.protocol.vercel.reducer import VercelProjection


def test_a_log_entry_is_a_copy_of_its_events() -> None:
    log = WireLog()
    events: list[dict[str, Any]] = [{"type": "start"}, {"type": "start-step"}]
    assert log.record("01", "m1", False, events, None, False) == "incremental"
    events.append({"type": "finish"})  # the caller's list is not the log's
    entry = log[0]
    assert isinstance(entry, LogEntry) and entry.events is entry
    assert entry == [{"type": "start"}, {"type": "start-step"}]
    assert (entry.serial, entry.message_id, entry.inputs, entry.decoded_through) == ("01", "m1", False, "01")
    assert log.record("01", "m1", False, [{"type": "text-delta"}], "02", True) == "incremental"
    assert entry == [{"type": "start"}, {"type": "start-step"}, {"type": "text-delta"}]
    assert entry.decoded_through == "02"
    assert "serial='01'" in repr(entry) and "text-delta" in repr(entry)
    # An older serial is inserted before it (a refold), built the same way.
    assert log.record("00", None, True, [{"kind": "user-message"}], None, False) == "refold"
    assert [(e.serial, e.inputs, list(e)) for e in log] == [
        ("00", True, [{"kind": "user-message"}]),
        ("01", False, [{"type": "start"}, {"type": "start-step"}, {"type": "text-delta"}]),
    ]


def _fold(proj: VercelProjection, *chunks: dict[str, Any]) -> None:
    for chunk in chunks:
        proj.fold_output(chunk, "A")


def test_finish_step_drops_a_message_s_emptied_trackers_and_a_later_step_folds_as_before() -> None:
    proj = VercelProjection()
    _fold(
        proj,
        {"type": "start", "messageId": "A"},
        {"type": "start-step"},
        {"type": "text-start", "id": "t0"},
        {"type": "text-delta", "id": "t0", "delta": "Hi"},
        {"type": "text-end", "id": "t0"},
        {"type": "finish-step"},
    )
    assert "A" not in proj._trackers
    _fold(
        proj,
        {"type": "text-delta", "id": "t0", "delta": "late"},  # its stream ended: ignored, as before
        {"type": "start-step"},
        {"type": "text-start", "id": "t0"},
        {"type": "text-delta", "id": "t0", "delta": "again"},
        {"type": "text-end", "id": "t0"},
        {"type": "finish-step"},
        {"type": "finish"},
    )
    assert proj.messages[0].message["parts"] == [
        {"type": "step-start"},
        {"type": "text", "text": "Hi"},
        {"type": "step-start"},
        {"type": "text", "text": "again"},
    ]


def test_finish_step_keeps_the_trackers_of_a_tool_call_for_its_output() -> None:
    proj = VercelProjection()
    _fold(
        proj,
        {"type": "start", "messageId": "A"},
        {"type": "start-step"},
        {"type": "text-start", "id": "t0"},
        {"type": "tool-input-start", "toolCallId": "c1", "toolName": "weather"},
        {"type": "tool-input-available", "toolCallId": "c1", "toolName": "weather", "input": {"city": "P"}},
        {"type": "finish-step"},
    )
    trackers = proj._trackers["A"]
    assert trackers.text == {} and trackers.reasoning == {} and "c1" in trackers.tools
    _fold(proj, {"type": "tool-output-available", "toolCallId": "c1", "output": {"t": 20}})
    tool = proj.messages[0].message["parts"][-1]
    assert tool["state"] == "output-available" and tool["output"] == {"t": 20}
