"""Micro-benchmark of the two wire codecs: ``python -m bench.codecs``.

One assistant reply of ``--tokens`` text deltas (plus a tool call and its result) goes through each
codec's encoder (``encode`` → ``WireOp``\\ s), then every resulting message — the publish, one append
per delta, the closing appends — is decoded and folded into a :class:`ConversationTree`, as an agent
or a ``chat`` device does. Reports µs per token for encode and for decode+fold, and the cost of
reading the folded messages back (``visible_messages``). In-process, CPU-bound, best of repeated
loops. Not a test.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from agent_worker.protocol.codecs import OPENAI_RESPONSES, VERCEL, codec_for
from agent_worker.protocol.headers import build_output_headers
from agent_worker.protocol.tree import ConversationTree
from agent_worker.protocol.wire import AppendOp, InboundMessage, PublishOp, UpdateOp, WireOp

TOKEN = "word "


def vercel_events(tokens: int) -> list[dict[str, Any]]:
    call = {"toolCallId": "call_1", "toolName": "get_weather"}
    return [
        {"type": "start"},
        {"type": "start-step"},
        {"type": "tool-input-start", **call},
        {"type": "tool-input-delta", "toolCallId": "call_1", "inputTextDelta": '{"city":"Paris"}'},
        {"type": "tool-input-available", **call, "input": {"city": "Paris"}},
        {"type": "tool-output-available", "toolCallId": "call_1", "output": {"tempC": 21}},
        {"type": "finish-step"},
        {"type": "start-step"},
        {"type": "text-start", "id": "t1"},
        *({"type": "text-delta", "id": "t1", "delta": TOKEN} for _ in range(tokens)),
        {"type": "text-end", "id": "t1"},
        {"type": "finish-step"},
        {"type": "finish", "finishReason": "stop"},
    ]


def openai_events(tokens: int) -> list[dict[str, Any]]:
    fc = {"id": "fc_1", "type": "function_call", "call_id": "call_1", "name": "get_weather"}
    msg = {"id": "msg_2", "type": "message", "role": "assistant"}
    text_at = {"item_id": "msg_2", "output_index": 0, "content_index": 0}
    return [
        {"type": "response.output_item.added", "output_index": 0, "item": {**fc, "arguments": ""}},
        {
            "type": "response.function_call_arguments.delta",
            "item_id": "fc_1",
            "output_index": 0,
            "delta": "{}",
        },
        {
            "type": "response.function_call_arguments.done",
            "item_id": "fc_1",
            "output_index": 0,
            "arguments": "{}",
        },
        {"type": "response.output_item.done", "output_index": 0, "item": {**fc, "status": "completed"}},
        {
            "type": "function_call_output",
            "item": {"type": "function_call_output", "call_id": "call_1", "output": "21"},
        },
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": {**msg, "status": "in_progress", "content": []},
        },
        {"type": "response.content_part.added", **text_at, "part": {"type": "output_text", "text": ""}},
        *({"type": "response.output_text.delta", **text_at, "delta": TOKEN} for _ in range(tokens)),
        {"type": "response.output_text.done", **text_at, "text": TOKEN * tokens},
        {"type": "response.output_item.done", "output_index": 0, "item": {**msg, "status": "completed"}},
    ]


def _deliveries(ops: list[WireOp]) -> list[InboundMessage]:
    """What a subscriber receives for these ops (serials as a realtime channel would assign)."""
    serials: dict[str, str] = {}
    out: list[InboundMessage] = []
    for n, op in enumerate(ops):
        version = f"{n:08d}"
        if isinstance(op, PublishOp):
            serial = version
            if op.stream_key is not None:
                serials[op.stream_key] = serial
            action = "message.create"
        elif isinstance(op, AppendOp | UpdateOp):
            serial = serials[op.stream_key]
            action = "message.append" if isinstance(op, AppendOp) else "message.update"
        name = op.message.name or "ai-output"
        msg = op.message
        out.append(InboundMessage(name, msg.data, msg.extras, action, serial, version))  # type: ignore[arg-type]
    return out


def _best_us(fn: Callable[[], Any], per: int, min_s: float) -> float:
    best = float("inf")
    spent = 0.0
    while spent < min_s:
        t0 = time.perf_counter()
        fn()
        took = time.perf_counter() - t0
        spent += took
        best = min(best, took)
    return best / per * 1e6


def measure(tag: str, events: Sequence[Mapping[str, Any]], tokens: int, min_s: float) -> dict[str, float]:
    codec = codec_for(tag)
    headers = build_output_headers(
        codec_message_id="CA",
        run_id="R1",
        run_client_id="alice",
        invocation_id="I1",
        input_codec_message_id="CU",
    )

    def encode() -> list[WireOp]:
        encoder = codec.new_encoder(dict(headers))
        ops: list[WireOp] = []
        for event in events:
            ops.extend(encoder.encode(event))
        return ops

    deliveries = _deliveries(encode())

    def fold() -> ConversationTree:
        tree = ConversationTree(codec=tag)
        for message in deliveries:
            tree.apply(message)
        return tree

    tree = fold()
    return {
        "encode": _best_us(encode, tokens, min_s),
        "decode+fold": _best_us(fold, tokens, min_s),
        "read messages (µs per read)": _best_us(tree.visible_messages, 1, min_s),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.codecs", description=__doc__)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--min-s", type=float, default=1.0, help="timing budget per measurement")
    args = parser.parse_args(argv)
    rows = {
        VERCEL: measure(VERCEL, vercel_events(args.tokens), args.tokens, args.min_s),
        OPENAI_RESPONSES: measure(OPENAI_RESPONSES, openai_events(args.tokens), args.tokens, args.min_s),
    }
    print(f"{args.tokens} text deltas + one tool call and result, best of repeated loops")
    print(f"{'':32}{VERCEL:>28}{OPENAI_RESPONSES:>20}")
    for key in rows[VERCEL]:
        unit = "" if "read" in key else " (µs per token)"
        print(f"{key + unit:32}{rows[VERCEL][key]:>28.2f}{rows[OPENAI_RESPONSES][key]:>20.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
