"""The codec registry: every wire codec the worker speaks, and how a message tells which it is.

A codec is its adapter tag plus factories for its decoder and reducer projection; the rest of the
protocol layer (tree, branch walk, view) is codec-agnostic. The adapter tag itself only travels in
the client's Ably-Agent header, never per message, so a session's codec is recognised from the
codec headers of its messages: each codec has its own ``ai-output`` kinds, its own user-message
``partType`` and its own tool-call id header (``toolCallId`` vs ``call_id``).

Adding a codec: a ``protocol/<name>/`` package (encoder on :class:`EncoderCore`, decoder on
:class:`DecoderCore`, a :class:`Projection`), one :class:`Codec` entry here with its classifier,
and an output dialect in ``runtime/dialects.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from agent_worker.errors import CodecError
from agent_worker.protocol.codec_core import DecoderCore, EncoderCore, Projection
from agent_worker.protocol.headers import AI_INPUT, AI_OUTPUT, KIND, PART_TYPE
from agent_worker.protocol.openai.decoder import ResponsesDecoder
from agent_worker.protocol.openai.encoder import DROPPED_EVENTS, GROUP_BY_KIND, ResponsesEncoder
from agent_worker.protocol.openai.reducer import OpenAIProjection
from agent_worker.protocol.vercel.decoder import UIMessageDecoder
from agent_worker.protocol.vercel.encoder import UIMessageEncoder
from agent_worker.protocol.vercel.reducer import VercelProjection
from agent_worker.protocol.wire import InboundMessage

__all__ = ["CODECS", "OPENAI_RESPONSES", "VERCEL", "Codec", "codec_for", "detect_codec"]

VERCEL = "vercel-ai-sdk-ui-message"
OPENAI_RESPONSES = "openai-responses"


@dataclass(frozen=True, slots=True)
class Codec:
    adapter_tag: str
    new_decoder: Callable[[], DecoderCore]
    new_projection: Callable[[], Projection]
    new_encoder: Callable[[dict[str, str]], EncoderCore]
    """One assistant message's encoder, from its default output headers."""


CODECS: dict[str, Codec] = {
    VERCEL: Codec(VERCEL, UIMessageDecoder, VercelProjection, UIMessageEncoder),
    OPENAI_RESPONSES: Codec(OPENAI_RESPONSES, ResponsesDecoder, OpenAIProjection, ResponsesEncoder),
}

_OPENAI_OUTPUT_KINDS = frozenset(
    {*GROUP_BY_KIND, "response.output_item.added", "response.output_item.done", "function_call_output"}
    | DROPPED_EVENTS
)
_TOOL_KINDS = ("tool-result", "tool-result-error", "tool-approval-response", "tool-approval-request")


def codec_for(adapter_tag: str) -> Codec:
    """The codec with that adapter tag; unknown tags are a clear error."""
    codec = CODECS.get(adapter_tag)
    if codec is None:
        known = ", ".join(sorted(CODECS))
        msg = f"unknown codec {adapter_tag!r} (known: {known})"
        raise CodecError(msg, field="codec", code=40003)
    return codec


def _classify(name: str | None, codec: Mapping[str, str]) -> str | None:
    kind = codec.get(KIND)
    if not isinstance(kind, str):
        return None
    if kind in _TOOL_KINDS:
        if "call_id" in codec:
            return OPENAI_RESPONSES
        return VERCEL if "toolCallId" in codec else None
    if name == AI_INPUT:
        if kind != "user-message":
            return None  # regenerate is wire-only and identical in both codecs
        part_type = codec.get(PART_TYPE)
        if part_type is None:
            return None
        return OPENAI_RESPONSES if part_type.startswith("input_") else VERCEL
    if name == AI_OUTPUT:
        return OPENAI_RESPONSES if kind in _OPENAI_OUTPUT_KINDS else VERCEL
    return None


def detect_codec(msg: InboundMessage) -> str | None:
    """The adapter tag a message's codec headers belong to, or None when they don't tell."""
    return _classify(msg.name, msg.codec_headers)


class CodecSelector:
    """A session's codec: pinned, or chosen by the first message whose codec headers tell.

    Until then messages decode with the Vercel codec (the default, and what an unclassifiable
    message most likely is). Messages of a different codec than the chosen one are *foreign*: they
    are not decoded, and :attr:`mixed` names every codec seen so the runtime can fail the run
    with a clear error instead of folding half a conversation.
    """

    def __init__(self, pinned: str | None = None) -> None:
        self.codec = codec_for(pinned or VERCEL)
        self.locked = pinned is not None
        self.decoder: DecoderCore = self.codec.new_decoder()
        self.foreign: set[str] = set()

    @property
    def adapter_tag(self) -> str:
        return self.codec.adapter_tag

    @property
    def mixed(self) -> tuple[str, ...]:
        """Every codec seen on the channel when more than one was, else ``()``."""
        return tuple(sorted({self.adapter_tag, *self.foreign})) if self.foreign else ()

    def admit(self, msg: InboundMessage) -> tuple[bool, bool]:
        """``(decode, switched)``: whether to decode ``msg``, and whether the codec just changed
        (the caller refolds what it folded with the previous one)."""
        tag = _classify(msg.name, msg.codec_headers)
        if tag is None or (tag == self.codec.adapter_tag and self.locked):
            return True, False  # the usual case: one more message of the session's codec
        if not self.locked:
            self.locked = True
            if tag != self.adapter_tag:
                self.codec = codec_for(tag)
                self.decoder = self.codec.new_decoder()
                return True, True
            return True, False
        if tag != self.adapter_tag:
            self.foreign.add(tag)
            return False, False
        return True, False
