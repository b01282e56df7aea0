"""Pure rendering: view items → blocks → text, and the live printer's screen output."""

from __future__ import annotations

import io

from agent_worker.client.render import (
    Block,
    LivePrinter,
    MessageItem,
    RunStatusItem,
    Span,
    conversation_view,
    make_console,
    plain_text,
    render,
    render_ui_messages,
)
from agent_worker.protocol.headers import build_extras, build_input_headers
from agent_worker.protocol.tree import ConversationTree
from agent_worker.protocol.vercel.encoder import encode_user_message
from agent_worker.protocol.wire import InboundMessage


def user(text: str, n: int = 1, author: str | None = "alice") -> MessageItem:
    return MessageItem(
        f"u{n}", {"id": f"m{n}", "role": "user", "parts": [{"type": "text", "text": text}]}, author, n
    )


def assistant(cmid: str, *parts: dict[str, object]) -> MessageItem:
    return MessageItem(cmid, {"id": cmid, "role": "assistant", "parts": list(parts)}, run_id="r1")


class TestRender:
    def test_messages_tools_and_marks(self) -> None:
        """Text, reasoning, tool calls with results and run marks each render on their own line."""
        items: list[MessageItem | RunStatusItem] = [
            user("weather in Paris?"),
            assistant(
                "a1",
                {"type": "step-start"},
                {"type": "reasoning", "text": "look it up"},
                {
                    "type": "tool-weather",
                    "toolCallId": "c1",
                    "state": "output-available",
                    "input": {"city": "Paris"},
                    "output": {"tempC": 21},
                },
                {"type": "text", "text": "It is 21°C."},
            ),
            RunStatusItem("r1", "cancelled"),
            RunStatusItem("r2", "error", "model exploded"),
            RunStatusItem("r3", "suspended"),
        ]
        assert plain_text(render(items)) == (
            "#1 alice> weather in Paris?\n"
            "assistant>   ∴ look it up\n"
            '  ⚙ weather {"city":"Paris"} → {"tempC":21}\n'
            "It is 21°C.\n"
            "  ⊘ cancelled\n"
            "  ✖ error: model exploded\n"
            "  ⏸ waiting for a tool result or approval"
        )
        assert plain_text(render(items[:1], decorate=False)) == "user> weather in Paris?"

    def test_streaming_tool_input_hides_partial_json(self) -> None:
        """While the tool input streams only the tool name shows, so the line only ever grows."""
        streaming = assistant(
            "a1", {"type": "tool-x", "toolCallId": "c", "state": "input-streaming", "input": {"a": 1}}
        )
        done = assistant(
            "a1", {"type": "tool-x", "toolCallId": "c", "state": "input-available", "input": {"a": 12}}
        )
        first, second = plain_text(render([streaming])), plain_text(render([done]))
        assert first == "assistant>   ⚙ x"
        assert second.startswith(first)

    def test_render_ui_messages_is_role_labelled(self) -> None:
        messages = [
            {"id": "1", "role": "user", "parts": [{"type": "text", "text": "hi"}]},
            {
                "id": "2",
                "role": "assistant",
                "parts": [{"type": "step-start"}, {"type": "text", "text": "yo"}],
            },
        ]
        assert render_ui_messages(messages) == "user> hi\nassistant> yo"


class TestConversationView:
    def test_user_numbers_authors_and_optimistic_input(self) -> None:
        """Inputs folded into a tree become numbered user items with their authors."""
        tree = ConversationTree()
        for n, (cmid, text) in enumerate((("c1", "first"), ("c2", "second")), start=1):
            headers = build_input_headers(
                codec_message_id=cmid, event_id=f"e{n}", run_client_id="bob", parent="c1" if n == 2 else None
            )
            for wire in encode_user_message(
                {"id": f"m{n}", "role": "user", "parts": [{"type": "text", "text": text}]}, headers
            ):
                tree.apply(InboundMessage(wire.name, wire.data, wire.extras, serial=f"s{n}", client_id="bob"))
        items = conversation_view(tree, {"c1": "bob", "c2": "bob"})
        assert plain_text(render(items)) == "#1 bob> first\n#2 bob> second"
        assert [i.number for i in items if isinstance(i, MessageItem)] == [1, 2]
        # A run that ended in error before any output is marked after its input.
        tree.apply(
            InboundMessage(
                "ai-run-start",
                None,
                build_extras(
                    {"run-id": "r1", "run-client-id": "bob", "parent": "c2", "input-codec-message-id": "c2"}
                ),
                serial="s3",
            )
        )
        tree.apply(
            InboundMessage(
                "ai-run-end",
                None,
                build_extras(
                    {
                        "run-id": "r1",
                        "run-client-id": "bob",
                        "run-reason": "error",
                        "error-message": "no model",
                    }
                ),
                serial="s4",
            )
        )
        assert (
            plain_text(render(conversation_view(tree, {})))
            == "#1 user> first\n#2 user> second\n  ✖ error: no model"
        )


def screen(printer_ops: list[tuple[str, list[Block]] | tuple[str, str]]) -> str:
    out = io.StringIO()
    printer = LivePrinter(make_console(out, color=False))
    for op, arg in printer_ops:
        if op == "update":
            assert isinstance(arg, list)
            printer.update(arg)
        elif op == "notice":
            assert isinstance(arg, str)
            printer.notice(arg)
        elif op == "settle":
            printer.settle()
    return out.getvalue()


def b(key: str, text: str) -> Block:
    return Block(key, (Span(text),))


class TestLivePrinter:
    def test_growth_is_appended(self) -> None:
        """Only new suffixes are written while blocks grow; new blocks start on new lines."""
        out = screen(
            [
                ("update", [b("u", "you> hi")]),
                ("update", [b("u", "you> hi"), b("a", "assistant> He")]),
                ("update", [b("u", "you> hi"), b("a", "assistant> Hello")]),
                ("update", [b("u", "you> hi"), b("a", "assistant> Hello!"), b("s", "  ⊘ cancelled")]),
            ]
        )
        assert out == "you> hi\nassistant> Hello!\n  ⊘ cancelled"

    def test_changed_past_is_reprinted_under_a_marker(self) -> None:
        """An earlier block that changes (an edit switched branch) is reprinted from that block on."""
        out = screen(
            [
                ("update", [b("u1", "you> 2+2?"), b("a1", "assistant> 5")]),
                ("update", [b("u2", "you> 2+2 exactly?"), b("a2", "assistant> 4")]),
            ]
        )
        assert out == "you> 2+2?\nassistant> 5\n↻ conversation updated\nyou> 2+2 exactly?\nassistant> 4"

    def test_notice_mid_stream_restarts_the_block(self) -> None:
        """After a notice the still-growing block is printed again from its start, never glued."""
        out = screen(
            [
                ("update", [b("a", "assistant> Once")]),
                ("notice", "reconnected"),
                ("update", [b("a", "assistant> Once")]),
                ("update", [b("a", "assistant> Once upon")]),
                ("settle", ""),
            ]
        )
        assert out == "assistant> Once\nreconnected\nassistant> Once upon\n"
