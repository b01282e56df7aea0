"""UIMessages → model messages, header helpers and tree edge cases."""

from __future__ import annotations

from typing import Any

import pytest

from agent_worker.protocol.convert import DENIED_TOOL_RESULT, to_model_messages
from agent_worker.protocol.headers import (
    MISSING,
    build_cancel_headers,
    build_input_headers,
    build_transport_headers,
    parse_run_lifecycle,
    parse_step_lifecycle,
    read_bool,
    read_json,
    run_end_error,
)
from agent_worker.protocol.model import (
    AssistantMessage,
    FilePart,
    ReasoningPart,
    SystemMessage,
    TextPart,
    ToolCallPart,
    ToolMessage,
    ToolResultPart,
    UserMessage,
)
from agent_worker.protocol.tree import ConversationTree
from agent_worker.protocol.wire import InboundMessage


def tool(state: str, call_id: str, **extra: Any) -> dict[str, Any]:
    return {"type": "tool-lookup", "toolCallId": call_id, "state": state, "input": {"q": call_id}, **extra}


class TestToModelMessages:
    def test_step_boundaries_split_assistant_and_tool_messages(self) -> None:
        """Each step becomes assistant(call) + tool(result); text after the last step closes the turn."""
        messages: list[dict[str, Any]] = [
            {"id": "s", "role": "system", "parts": [{"type": "text", "text": "be brief"}]},
            {
                "id": "u",
                "role": "user",
                "parts": [
                    {"type": "text", "text": "hi"},
                    {"type": "file", "url": "https://x/a.png", "mediaType": "image/png"},
                    {"type": "data-ctx", "data": 1},
                ],
            },
            {
                "id": "a",
                "role": "assistant",
                "parts": [
                    {"type": "step-start"},
                    {"type": "reasoning", "text": "hmm"},
                    {"type": "text", "text": "let me look"},
                    tool("output-available", "c1", output={"n": 1}),
                    tool("output-error", "c2", errorText="boom"),
                    {"type": "step-start"},
                    tool("output-denied", "c3", approval={"id": "ap", "approved": False, "reason": "no way"}),
                    tool("output-denied", "c4", approval={"id": "", "approved": False}),
                    {"type": "step-start"},
                    {"type": "text", "text": ""},
                    {"type": "text", "text": "done"},
                    {"type": "source-url", "sourceId": "s", "url": "u"},
                ],
            },
        ]
        assert to_model_messages(messages) == [
            SystemMessage("be brief"),
            UserMessage((TextPart("hi"), FilePart("https://x/a.png", "image/png"))),
            AssistantMessage(
                (
                    ReasoningPart("hmm"),
                    TextPart("let me look"),
                    ToolCallPart("c1", "lookup", {"q": "c1"}),
                    ToolCallPart("c2", "lookup", {"q": "c2"}),
                )
            ),
            ToolMessage(
                (
                    ToolResultPart("c1", "lookup", {"n": 1}),
                    ToolResultPart("c2", "lookup", "boom", is_error=True),
                )
            ),
            AssistantMessage(
                (ToolCallPart("c3", "lookup", {"q": "c3"}), ToolCallPart("c4", "lookup", {"q": "c4"}))
            ),
            ToolMessage(
                (
                    ToolResultPart("c3", "lookup", "no way", is_error=True),
                    ToolResultPart("c4", "lookup", DENIED_TOOL_RESULT, is_error=True),
                )
            ),
            AssistantMessage((TextPart("done"),)),
        ]

    def test_incomplete_calls_and_dynamic_tools(self) -> None:
        """Streaming calls are skipped; pending ones kept unless ignore_incomplete_tool_calls."""
        msg = {
            "id": "a",
            "role": "assistant",
            "parts": [
                tool("input-streaming", "c0"),
                tool("input-available", "c1"),
                {
                    "type": "dynamic-tool",
                    "toolName": "dyn",
                    "toolCallId": "c2",
                    "state": "output-available",
                    "input": 1,
                    "output": 2,
                },
                tool("approval-responded", "c3", approval={"id": "ap", "approved": True}),
                tool("output-available", "c4", output="p", preliminary=True),
                tool("output-available", "c5", output="remote", providerExecuted=True),
            ],
        }
        full = to_model_messages([msg])
        assert full == [
            AssistantMessage(
                (
                    ToolCallPart("c1", "lookup", {"q": "c1"}),
                    ToolCallPart("c2", "dyn", 1),
                    ToolCallPart("c3", "lookup", {"q": "c3"}),
                    ToolCallPart("c4", "lookup", {"q": "c4"}),
                    ToolCallPart("c5", "lookup", {"q": "c5"}),
                )
            ),
            ToolMessage((ToolResultPart("c2", "dyn", 2), ToolResultPart("c4", "lookup", "p"))),
        ]
        trimmed = to_model_messages([msg], ignore_incomplete_tool_calls=True)
        assert [p.call_id for p in trimmed[0].parts if isinstance(p, ToolCallPart)] == ["c2", "c3", "c5"]  # type: ignore[union-attr]


class TestHeaderHelpers:
    @pytest.mark.parametrize(
        ("headers", "expected"),
        [
            ({}, (104008, "agent reported an error", 500)),
            ({"error-code": "40003", "error-message": "bad"}, (40003, "bad", 400)),
            ({"error-code": "9"}, (9, "agent reported an error", 500)),
            ({"error-code": "oops"}, (104008, "agent reported an error", 500)),
            ({"error-code": "60000"}, (60000, "agent reported an error", 500)),
        ],
    )
    def test_run_end_error(self, headers: dict[str, str], expected: tuple[int, str, int]) -> None:
        """headers.ts buildRunEndError: code default 104008, status = code/100 within 10000..59999."""
        err = run_end_error(headers)
        assert (err.code, err.message, err.status_code) == expected

    def test_field_readers(self) -> None:
        """boolField: only 'true' is true; jsonField: malformed → undefined, 'null' → None."""
        assert read_bool({"a": "TRUE"}, "a") is False and read_bool({}, "a") is None
        assert read_json({"a": "{x"}, "a") is MISSING and read_json({"a": "null"}, "a") is None
        assert read_json({"a": "NaN"}, "a") is MISSING

    def test_optional_headers_are_omitted(self) -> None:
        """Absent values are omitted; run-client-id '*' is dropped on inputs; empty structural ids too."""
        assert build_input_headers(codec_message_id="C", event_id="E", run_client_id="*", parent="") == {
            "role": "user",
            "codec-message-id": "C",
            "event-id": "E",
        }
        assert (
            build_transport_headers(role="assistant", codec_message_id="C", run_client_id="")["run-client-id"]
            == ""
        )
        with pytest.raises(ValueError, match="run-id"):
            build_cancel_headers(event_id="E")

    def test_lifecycle_parsing(self) -> None:
        """Run lifecycle needs a run-id; a step-end without step-start-serial is discarded."""
        t = {"run-id": "R", "run-reason": "error", "error-code": "50000"}
        ev = parse_run_lifecycle(InboundMessage("ai-run-end", None, {"ai": {"transport": t}}, serial="s"))
        assert ev is not None and ev.reason == "error" and ev.error is not None and ev.error.code == 50000
        assert parse_run_lifecycle(InboundMessage("ai-run-end", None, {"ai": {"transport": {}}})) is None
        assert ev.client_id == "" and ev.invocation_id == ""
        step_end = {"run-id": "R", "step-id": "S"}
        assert (
            parse_step_lifecycle(InboundMessage("ai-step-end", None, {"ai": {"transport": step_end}})) is None
        )


class TestTreeEdgeCases:
    def test_run_less_outputs_are_skipped(self) -> None:
        """An ai-output without run-id creates no node (tree.ts 'no run-id ... skipping')."""
        t = {"role": "assistant", "codec-message-id": "CA", "stream": "false"}
        tree = ConversationTree()
        res = tree.apply(
            InboundMessage("ai-output", "", {"ai": {"transport": t, "codec": {"kind": "start"}}}, serial="s1")
        )
        assert not res.folded and tree.nodes() == []

    def test_event_index_keeps_the_first_message(self) -> None:
        """find_event returns the first message with that event-id, whatever its name."""
        tree = ConversationTree()
        first = InboundMessage(
            "ai-cancel", None, {"ai": {"transport": {"event-id": "E", "run-id": "R"}}}, serial="s1"
        )
        tree.apply(first)
        tree.apply(InboundMessage("ai-input", "x", {"ai": {"transport": {"event-id": "E"}}}, serial="s2"))
        assert tree.find_event("E") is first

    def test_delete_removes_an_optimistic_input(self) -> None:
        """delete() drops the node and its codec-message-id index entry."""
        headers = build_input_headers(codec_message_id="C1", event_id="E1")
        extras = {
            "ai": {
                "transport": {**headers, "stream": "false"},
                "codec": {"kind": "user-message", "partType": "text"},
            }
        }
        tree = ConversationTree()
        tree.apply(InboundMessage("ai-input", "hi", extras, serial=None))
        assert tree.node("C1") is not None
        tree.delete("C1")
        assert tree.node("C1") is None and tree.node_by_codec_message_id("C1") is None and tree.nodes() == []

    def test_optimistic_input_reconciles_with_its_echo(self) -> None:
        """A serial-less (optimistic) fold is rebuilt from the log when the echo arrives — no duplicate."""
        headers = build_input_headers(codec_message_id="C1", event_id="E1")
        extras = {
            "ai": {
                "transport": {**headers, "stream": "false"},
                "codec": {"kind": "user-message", "partType": "text"},
            }
        }
        tree = ConversationTree()
        tree.apply(InboundMessage("ai-input", "hi", extras, serial=None))
        tree.apply(InboundMessage("ai-input", "hi", extras, serial="s1", version_serial="s1"))
        tree.apply(InboundMessage("ai-input", "hi", extras, serial="s1", version_serial="s1"))
        node = tree.node("C1")
        assert node is not None and node.messages[0].message["parts"] == [{"text": "hi", "type": "text"}]
        assert node.serial == "s1"  # type: ignore[union-attr]
