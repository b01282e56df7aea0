"""Terminal rendering of a conversation: a pure view → blocks function, and a live printer.

:func:`conversation_view` reads the visible branch out of a
:class:`~agent_worker.protocol.tree.ConversationTree`; :func:`render` turns it into :class:`Block`\\ s
of styled text. Both are pure, so tests assert on :func:`plain_text`. :class:`LivePrinter` prints
blocks as they grow — tokens are written as they arrive by printing only the new suffix — and, when
something already printed changes (an edit switches branch, history fills a gap), reprints from the
first changed block under a marker line.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

from rich.console import Console
from rich.text import Text

from agent_worker.protocol.tree import ConversationTree, RunNode
from agent_worker.protocol.vercel.reducer import is_tool_part, tool_name

__all__ = [
    "Block",
    "LivePrinter",
    "MessageItem",
    "RunStatusItem",
    "Span",
    "ViewItem",
    "conversation_view",
    "make_console",
    "plain_text",
    "render",
    "render_ui_messages",
]

_MAX_JSON = 400


@dataclass(frozen=True, slots=True)
class MessageItem:
    """One visible message. ``number`` counts user messages from 1 (what ``/edit N`` names)."""

    codec_message_id: str
    message: Mapping[str, Any]
    author: str | None = None
    number: int | None = None
    run_id: str | None = None


@dataclass(frozen=True, slots=True)
class RunStatusItem:
    """The end mark of a visible run that did not complete (cancelled, failed, suspended)."""

    run_id: str
    status: str
    error: str | None = None


ViewItem = MessageItem | RunStatusItem


@dataclass(frozen=True, slots=True)
class Span:
    text: str
    style: str = ""


@dataclass(frozen=True, slots=True)
class Block:
    """One printed unit (a message, or a run's status mark); printed on its own line(s)."""

    key: str
    spans: tuple[Span, ...]

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.spans)


# --- view -------------------------------------------------------------------------------------------


def conversation_view(tree: ConversationTree, authors: Mapping[str, str] | None = None) -> list[ViewItem]:
    """The selected branch as view items: messages in order, with run status marks after each run."""
    who = authors or {}
    items: list[ViewItem] = []
    last_of_run: dict[str, int] = {}
    index_of_message: dict[str, int] = {}
    number = 0
    for cm in tree.visible_messages():
        node = tree.node_by_codec_message_id(cm.codec_message_id)
        run_id = node.run_id if isinstance(node, RunNode) else None
        role = cm.message.get("role")
        n: int | None = None
        if role == "user" and run_id is None:
            number += 1
            n = number
        items.append(MessageItem(cm.codec_message_id, cm.message, who.get(cm.codec_message_id), n, run_id))
        index_of_message[cm.codec_message_id] = len(items) - 1
        if run_id is not None:
            last_of_run[run_id] = len(items) - 1
    inserts: list[tuple[int, RunStatusItem]] = []
    for node in tree.visible_nodes():
        if not isinstance(node, RunNode) or node.status in ("active", "complete"):
            continue
        mark = RunStatusItem(node.run_id, node.status, node.error.message if node.error else None)
        if node.run_id in last_of_run:
            at = last_of_run[node.run_id] + 1
        elif node.parent is not None and node.parent in index_of_message:
            at = index_of_message[node.parent] + 1
        else:
            at = len(items)
        inserts.append((at, mark))
    # Insert back to front so earlier positions stay valid; ties keep run order.
    for at, mark in sorted(inserts, key=lambda p: p[0], reverse=True):
        items.insert(at, mark)
    return items


# --- rendering --------------------------------------------------------------------------------------


def _json(value: Any) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= _MAX_JSON else text[: _MAX_JSON - 1] + "…"


def _tool_line(part: Mapping[str, Any]) -> list[Span]:
    spans = [Span(f"  ⚙ {tool_name(part)}", "yellow")]
    state = part.get("state")
    if state != "input-streaming" and "input" in part:
        spans.append(Span(f" {_json(part.get('input'))}", "yellow"))
    if state == "output-available":
        spans.append(Span(f" → {_json(part.get('output'))}", "yellow"))
    elif state == "output-error":
        spans.append(Span(f" ✖ {part.get('errorText', 'error')}", "red"))
    elif state == "output-denied":
        spans.append(Span(" ✖ denied", "red"))
    elif state == "approval-requested":
        spans.append(Span(" (approval requested)", "magenta"))
    elif state == "approval-responded":
        approved = bool((part.get("approval") or {}).get("approved"))
        spans.append(Span(" (approved)" if approved else " (denied)", "magenta"))
    return spans


def _part_spans(part: Mapping[str, Any]) -> list[Span] | None:
    """Spans of one part, or None for parts that print nothing (step boundaries, transient data)."""
    ptype = str(part.get("type", ""))
    if ptype == "text":
        return [Span(str(part.get("text", "")))]
    if ptype == "reasoning":
        return [Span(f"  ∴ {part.get('text', '')}", "dim italic")]
    if is_tool_part(part):
        return _tool_line(part)
    if ptype == "file":
        return [Span(f"[file {part.get('mediaType', '')} {part.get('url', '')}]", "blue")]
    if ptype == "source-url":
        return [Span(f"  ↗ {part.get('url', '')}", "blue")]
    if ptype == "source-document":
        return [Span(f"  ↗ {part.get('title', '')}", "blue")]
    if ptype.startswith("data-"):
        return [Span(f"[{ptype} {_json(part.get('data'))}]", "blue")]
    return None


def _item_spans(item: Mapping[str, Any], message: Mapping[str, Any]) -> list[Span] | None:
    """Spans of one OpenAI Responses item (``openai-responses`` sessions), or None to skip it."""
    itype = item.get("type")
    raw_content = item.get("content")
    content: list[Any] = raw_content if isinstance(raw_content, list) else []
    if itype == "message":
        texts = [str(p.get("text", "")) for p in content if p.get("type") in ("input_text", "output_text")]
        refusals = [
            Span(f"[refused] {p.get('refusal', '')}", "red") for p in content if p.get("type") == "refusal"
        ]
        return [Span("".join(texts)), *refusals] if texts or refusals else None
    if itype == "reasoning":
        summary = "".join(str(p.get("text", "")) for p in item.get("summary") or [])
        raw = "".join(str(p.get("text", "")) for p in item.get("content") or [])
        return [Span(f"  ∴ {summary or raw}", "dim italic")] if summary or raw else None
    if itype == "function_call":
        call_id = item.get("call_id")
        spans = [Span(f"  ⚙ {item.get('name', '')} {item.get('arguments', '')}", "yellow")]
        output = next(
            (
                i
                for i in message.get("items", [])
                if i.get("type") == "function_call_output" and i.get("call_id") == call_id
            ),
            None,
        )
        state = (message.get("toolCallStates") or {}).get(call_id) or {}
        if state.get("approval") == "pending":
            spans.append(Span(" (approval requested)", "magenta"))
        elif state.get("approval") in ("approved", "denied") and output is None:
            spans.append(Span(f" ({state['approval']})", "magenta"))
        if output is not None:
            failed = state.get("result") == "failed" or state.get("approval") == "denied"
            spans.append(
                Span(
                    f" {'✖' if failed else '→'} {_json(output.get('output'))}", "red" if failed else "yellow"
                )
            )
        return spans
    if itype == "function_call_output":
        calls = {i.get("call_id") for i in message.get("items", []) if i.get("type") == "function_call"}
        return (
            None if item.get("call_id") in calls else [Span(f"  ⚙ → {_json(item.get('output'))}", "yellow")]
        )
    return None


def _message_spans(message: Mapping[str, Any]) -> list[list[Span]]:
    if isinstance(message.get("items"), list):  # an OpenAIMessage
        rendered = (_item_spans(i, message) for i in message["items"] if isinstance(i, Mapping))
    else:  # a UIMessage
        rendered = (_part_spans(p) for p in message.get("parts") or () if isinstance(p, Mapping))
    return [spans for spans in rendered if spans is not None]


def _message_block(item: MessageItem, *, decorate: bool) -> Block:
    role = str(item.message.get("role", ""))
    if role == "user":
        label = item.author if decorate and item.author else "user"
        prefix = f"#{item.number} " if decorate and item.number is not None else ""
        spans: list[Span] = [Span(f"{prefix}{label}> ", "bold cyan")]
    else:
        spans = [Span(f"{role}> ", "bold green")]
    for i, rendered in enumerate(_message_spans(item.message)):
        if i:
            spans.append(Span("\n"))
        spans.extend(rendered)
    return Block(item.codec_message_id, tuple(spans))


def _status_block(item: RunStatusItem) -> Block:
    if item.status == "cancelled":
        spans = (Span("  ⊘ cancelled", "yellow"),)
    elif item.status == "error":
        spans = (Span(f"  ✖ error: {item.error or 'agent reported an error'}", "bold red"),)
    elif item.status == "suspended":
        spans = (Span("  ⏸ waiting for a tool result or approval", "magenta"),)
    else:
        spans = (Span(f"  [{item.status}]", "dim"),)
    return Block(f"status:{item.run_id}", spans)


def render(items: Sequence[ViewItem], *, decorate: bool = True) -> list[Block]:
    """Blocks for a view. ``decorate=False`` drops authors and ``#N`` numbers (role labels only)."""
    out: list[Block] = []
    for item in items:
        if isinstance(item, MessageItem):
            out.append(_message_block(item, decorate=decorate))
        else:
            out.append(_status_block(item))
    return out


def render_ui_messages(messages: Sequence[Mapping[str, Any]]) -> str:
    """Plain transcript of bare UIMessages (role labels only) — comparable across implementations."""
    items = [MessageItem(str(m.get("id", i)), m) for i, m in enumerate(messages)]
    return plain_text(render(items, decorate=False))


def plain_text(blocks: Sequence[Block]) -> str:
    return "\n".join(b.text for b in blocks)


# --- live printing ----------------------------------------------------------------------------------


def make_console(file: IO[str] | None = None, *, color: bool = True) -> Console:
    """A console that never wraps or highlights by itself (the printer relies on exact text)."""
    return Console(
        file=file,
        color_system="auto" if color else None,
        highlight=False,
        markup=False,
        emoji=False,
        soft_wrap=True,
    )


class LivePrinter:
    """Prints a growing conversation: new text is appended; a changed past is reprinted."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._printed: list[Block] = []
        self._at_line_start = True
        self._restart_last = False  # foreign output followed the last block: reprint it if it grows

    def _write(self, spans: Sequence[Span], skip: int = 0) -> None:
        text = Text()
        for span in spans:
            if skip >= len(span.text):
                skip -= len(span.text)
                continue
            text.append(span.text[skip:], style=span.style or None)
            skip = 0
        if text.plain:
            self.console.print(text, end="")
            self._at_line_start = text.plain.endswith("\n")

    def _newline(self) -> None:
        if not self._at_line_start:
            self.console.print("", end="\n")
            self._at_line_start = True

    def _divergence(self, blocks: Sequence[Block]) -> int | None:
        printed = self._printed
        for i, old in enumerate(printed):
            if i >= len(blocks) or old.key != blocks[i].key:
                return i
            if i < len(printed) - 1 and old.text != blocks[i].text:
                return i
            if i == len(printed) - 1 and not blocks[i].text.startswith(old.text):
                return i
        return None

    def update(self, blocks: Sequence[Block]) -> None:
        """Bring the screen up to date with ``blocks``."""
        diverged = self._divergence(blocks)
        if diverged is not None:
            self._newline()
            self._write([Span("↻ conversation updated", "dim")])
            self._newline()
            del self._printed[diverged:]
            self._restart_last = False
            self._print_from(blocks, diverged)
            return
        if self._printed:
            last = len(self._printed) - 1
            old = self._printed[last]
            if blocks[last].text != old.text:
                if self._restart_last:
                    self._newline()
                    self._write(blocks[last].spans)
                else:
                    self._write(blocks[last].spans, skip=len(old.text))
                self._printed[last] = blocks[last]
                self._restart_last = False
            self._print_from(blocks, last + 1)
        else:
            self._print_from(blocks, 0)

    def _print_from(self, blocks: Sequence[Block], start: int) -> None:
        for block in blocks[start:]:
            self._newline()
            self._write(block.spans)
            self._printed.append(block)
            self._restart_last = False

    def settle(self) -> None:
        """Nothing is streaming: end the line so the user's typing starts on a fresh one."""
        if not self._at_line_start:
            self._newline()
            self._restart_last = bool(self._printed)

    def notice(self, text: str, style: str = "dim") -> None:
        """A line outside the conversation; a block still streaming is reprinted after it."""
        self._newline()
        self._write([Span(text, style)])
        self._newline()
        self._restart_last = bool(self._printed)

    def interrupted(self) -> None:
        """Something else wrote to the terminal (e.g. the user's echoed input line)."""
        self._at_line_start = True
        self._restart_last = bool(self._printed)
