"""What a run said, in a few words: enough to tell a user who was away what happened.

Fed every UIMessageChunk the run sends (:meth:`RunDigest.observe`); keeps the first ``limit``
characters of the reply text, the names of tool calls still without a result (client-side tools when
the run suspends) and of those awaiting approval. Bounded: a long reply costs ``limit`` characters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["RunDigest"]


class RunDigest:
    __slots__ = ("_kept", "_text", "approvals", "limit", "tools")

    def __init__(self, limit: int = 400) -> None:
        self.limit = limit
        self._text: list[str] = []
        self._kept = 0  # characters in _text (summing them per delta was quadratic in fragments)
        self.tools: dict[str, str] = {}
        self.approvals: list[str] = []

    def observe(self, chunk: Mapping[str, Any]) -> None:
        """One output event of either dialect: a Vercel UIMessageChunk or an OpenAI Responses event."""
        kind = chunk.get("type")
        raw_item = chunk.get("item")
        item: Mapping[str, Any] = raw_item if isinstance(raw_item, Mapping) else {}
        call = kind == "response.output_item.added" and item.get("type") == "function_call"
        if kind in ("text-delta", "response.output_text.delta"):
            room = self.limit - self._kept
            if room > 0:
                kept = str(chunk.get("delta", ""))[:room]
                self._text.append(kept)
                self._kept += len(kept)
        elif kind in ("tool-input-start", "tool-input-available") and len(self.tools) < 64:
            self.tools[str(chunk.get("toolCallId"))] = str(chunk.get("toolName", "tool"))
        elif call and len(self.tools) < 64:
            self.tools[str(item.get("call_id"))] = str(item.get("name") or "tool")
        elif kind in ("tool-output-available", "tool-output-error"):
            self.tools.pop(str(chunk.get("toolCallId")), None)  # answered: no longer waiting
        elif kind == "function_call_output":
            self.tools.pop(str(item.get("call_id")), None)
        elif kind == "tool-approval-request" and len(self.approvals) < 16:
            call_id = str(chunk.get("toolCallId", chunk.get("call_id")))
            self.approvals.append(self.tools.get(call_id) or str(chunk.get("name") or "a tool"))

    @property
    def text(self) -> str:
        return "".join(self._text).strip()
