"""The OpenAI Responses codec (``openai-responses``): encoder, decoder with mid-stream-join repair,
reducer, Responses input and correlation readers — unit tests plus differential runs against the
official JS ``ResponsesCodec`` (tests/js/protocol/codec.mjs with ``codec: "openai"``)."""

from __future__ import annotations

from typing import Any

import pytest

from agent_worker.errors import CodecError
from agent_worker.protocol.codecs import OPENAI_RESPONSES, VERCEL, detect_codec
from agent_worker.protocol.headers import build_input_headers, js_json
from agent_worker.protocol.openai.decoder import ResponsesDecoder
from agent_worker.protocol.openai.encoder import (
    ResponsesEncoder,
    encode_regenerate,
    encode_tool_approval_response,
    encode_tool_result,
    encode_tool_result_error,
    encode_user_message,
    user_text_message,
)
from agent_worker.protocol.openai.reducer import (
    OpenAIProjection,
    approved_unexecuted_calls,
    to_responses_input,
    unanswered_calls,
)
from agent_worker.protocol.tree import ConversationTree
from agent_worker.protocol.wire import InboundMessage
from tests.protocol.protocol_support import (
    Channel,
    inbound_json,
    js_codec,
    message_json,
    run_encoder,
    section_10_output_headers,
)

DEFAULTS = section_10_output_headers()


def _msg_item(item_id: str) -> dict[str, Any]:
    return {"id": item_id, "type": "message", "role": "assistant", "status": "in_progress", "content": []}


def reply_events() -> list[dict[str, Any]]:
    """A full Responses stream: reasoning (summary + raw text), text + refusal, a function call,
    its output, an approval request, and the framing events the codec drops."""
    fc = {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather", "arguments": ""}
    return [
        {"type": "response.created", "sequence_number": 0, "response": {"id": "resp_1"}},
        {"type": "response.in_progress", "sequence_number": 1, "response": {"id": "resp_1"}},
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": {"id": "rs_1", "type": "reasoning", "summary": []},
        },
        {
            "type": "response.reasoning_summary_part.added",
            "item_id": "rs_1",
            "output_index": 0,
            "summary_index": 0,
            "part": {"type": "summary_text", "text": ""},
        },
        {
            "type": "response.reasoning_summary_text.delta",
            "item_id": "rs_1",
            "output_index": 0,
            "summary_index": 0,
            "delta": "Weighing ",
        },
        {
            "type": "response.reasoning_summary_text.delta",
            "item_id": "rs_1",
            "output_index": 0,
            "summary_index": 0,
            "delta": "options…",
        },
        {
            "type": "response.reasoning_summary_text.done",
            "item_id": "rs_1",
            "output_index": 0,
            "summary_index": 0,
            "text": "Weighing options…",
        },
        {
            "type": "response.reasoning_summary_part.done",
            "item_id": "rs_1",
            "output_index": 0,
            "summary_index": 0,
            "part": {"type": "summary_text", "text": "Weighing options…"},
        },
        {
            "type": "response.content_part.added",
            "item_id": "rs_1",
            "output_index": 0,
            "content_index": 0,
            "part": {"type": "reasoning_text", "text": ""},
        },
        {
            "type": "response.reasoning_text.delta",
            "item_id": "rs_1",
            "output_index": 0,
            "content_index": 0,
            "delta": "raw thought",
        },
        {
            "type": "response.reasoning_text.done",
            "item_id": "rs_1",
            "output_index": 0,
            "content_index": 0,
            "text": "raw thought",
        },
        {
            "type": "response.output_item.done",
            "output_index": 0,
            "item": {
                "id": "rs_1",
                "type": "reasoning",
                "status": "completed",
                "encrypted_content": "gAAA",
                "summary": [{"type": "summary_text", "text": "Weighing options…"}],
            },
        },
        {"type": "response.output_item.added", "output_index": 1, "item": _msg_item("msg_1")},
        {
            "type": "response.content_part.added",
            "item_id": "msg_1",
            "output_index": 1,
            "content_index": 0,
            "part": {"type": "output_text", "text": "", "annotations": []},
        },
        {
            "type": "response.output_text.delta",
            "item_id": "msg_1",
            "output_index": 1,
            "content_index": 0,
            "delta": "Héllo ",
            "logprobs": [],
        },
        {
            "type": "response.output_text.delta",
            "item_id": "msg_1",
            "output_index": 1,
            "content_index": 0,
            "delta": "wörld",
            "logprobs": [],
        },
        {
            "type": "response.output_text.done",
            "item_id": "msg_1",
            "output_index": 1,
            "content_index": 0,
            "text": "Héllo wörld",
            "logprobs": [],
        },
        {
            "type": "response.content_part.done",
            "item_id": "msg_1",
            "output_index": 1,
            "content_index": 0,
            "part": {"type": "output_text", "text": "Héllo wörld", "annotations": []},
        },
        {
            "type": "response.content_part.added",
            "item_id": "msg_1",
            "output_index": 1,
            "content_index": 1,
            "part": {"type": "refusal", "refusal": ""},
        },
        {
            "type": "response.refusal.delta",
            "item_id": "msg_1",
            "output_index": 1,
            "content_index": 1,
            "delta": "I can't help",
        },
        {
            "type": "response.refusal.done",
            "item_id": "msg_1",
            "output_index": 1,
            "content_index": 1,
            "refusal": "I can't help",
        },
        {
            "type": "response.output_item.done",
            "output_index": 1,
            "item": {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [
                    {
                        "type": "output_text",
                        "text": "Héllo wörld",
                        "annotations": [],
                        "logprobs": [{"token": "H", "logprob": -0.1, "bytes": [72], "top_logprobs": []}],
                    },
                    {"type": "refusal", "refusal": "I can't help"},
                ],
            },
        },
        {"type": "response.output_item.added", "output_index": 2, "item": fc},
        {
            "type": "response.function_call_arguments.delta",
            "item_id": "fc_1",
            "output_index": 2,
            "delta": '{"city":',
        },
        {
            "type": "response.function_call_arguments.delta",
            "item_id": "fc_1",
            "output_index": 2,
            "delta": '"Paris"}',
        },
        {
            "type": "response.function_call_arguments.done",
            "item_id": "fc_1",
            "output_index": 2,
            "arguments": '{"city":"Paris"}',
            "name": "get_weather",
        },
        {
            "type": "response.output_item.done",
            "output_index": 2,
            "item": {**fc, "arguments": '{"city":"Paris"}', "status": "completed"},
        },
        {
            "type": "function_call_output",
            "item": {"type": "function_call_output", "call_id": "call_1", "output": '{"tempC":21}'},
        },
        {
            "type": "tool-approval-request",
            "call_id": "call_2",
            "name": "delete_file",
            "arguments": '{"path":"/tmp/x"}',
        },
        {"type": "response.completed", "sequence_number": 30, "response": {"id": "resp_1"}},
    ]


HOSTED: list[dict[str, Any]] = [
    {"type": "response.web_search_call.in_progress", "item_id": "ws_1", "output_index": 3},
    {
        "type": "response.output_item.added",
        "output_index": 3,
        "item": {"id": "ws_1", "type": "web_search_call"},
    },
    {"type": "response.code_interpreter_call_code.delta", "item_id": "ci", "output_index": 3, "delta": "x"},
    {"type": "response.output_text.annotation.added", "item_id": "msg_1", "annotation": {}},
    {
        "type": "response.content_part.added",
        "item_id": "msg_1",
        "output_index": 1,
        "content_index": 2,
        "part": {"type": "output_audio"},
    },
    {
        "type": "response.output_text.delta",
        "item_id": "gone",
        "output_index": 1,
        "content_index": 0,
        "delta": "x",
    },
    {"type": "response.output_item.done", "output_index": 3, "item": {"id": "mcp_1", "type": "mcp_call"}},
]


def encode_all(events: list[dict[str, Any]], enc: ResponsesEncoder | None = None) -> Channel:
    ch = Channel()
    enc = enc or ResponsesEncoder(DEFAULTS)
    streams: dict[str, str] = {}
    for event in events:
        ch.run_ops(enc.encode(event), streams)
    ch.run_ops(enc.cancel_open_streams(), streams)
    return ch


def fold(messages: list[InboundMessage]) -> dict[str, Any]:
    """Decode with one decoder and fold into one projection, like one tree node (the JS oracle)."""
    dec = ResponsesDecoder()
    proj = OpenAIProjection()
    decoded: list[Any] = []
    for msg in messages:
        d = dec.decode(msg)
        decoded.append({"inputs": d.inputs, "outputs": d.outputs})
        cmid = msg.transport_headers.get("codec-message-id")
        for ev in d.inputs:
            proj.fold_input(ev, cmid)
        for ev in d.outputs:
            proj.fold_output(ev, cmid)
    messages_json = [m.to_json() for m in proj.messages]
    bare = [m["message"] for m in messages_json]
    return {
        "decoded": decoded,
        "messages": messages_json,
        "responsesInput": to_responses_input(bare),
        "unanswered": unanswered_calls(bare),
        "approved": approved_unexecuted_calls(bare),
    }


USER_H = build_input_headers(codec_message_id="CU", event_id="E1", run_client_id="u")
TOOL_H = build_input_headers(codec_message_id="CA", event_id="E4", run_id="R1", run_client_id="u")


def client_inputs() -> list[tuple[dict[str, Any], dict[str, str], Any]]:
    """(JS publishInput input, headers, the Python encoding) for every input kind."""
    two_parts = {
        "role": "user",
        "items": [
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}],
            }
        ],
    }
    empty = {"role": "user", "items": [{"type": "message", "role": "user", "content": []}]}
    regen_h = build_input_headers(codec_message_id="C3", event_id="E3", parent="CU", regenerates="CA")
    approve = {"call_id": "call_2", "approved": True}
    deny = {"call_id": "call_3", "approved": False, "reason": "no"}
    return [
        (
            {"kind": "user-message", "message": user_text_message("Weather?")},
            USER_H,
            encode_user_message(user_text_message("Weather?"), USER_H),
        ),
        ({"kind": "user-message", "message": two_parts}, USER_H, encode_user_message(two_parts, USER_H)),
        ({"kind": "user-message", "message": empty}, USER_H, encode_user_message(empty, USER_H)),
        ({"kind": "regenerate", "target": "CA", "parent": "CU"}, regen_h, encode_regenerate(regen_h)),
        (
            {"kind": "tool-approval-response", "codecMessageId": "CA", "payload": approve},
            TOOL_H,
            encode_tool_approval_response("call_2", True, TOOL_H),
        ),
        (
            {"kind": "tool-approval-response", "codecMessageId": "CA", "payload": deny},
            TOOL_H,
            encode_tool_approval_response("call_3", False, TOOL_H, reason="no"),
        ),
        (
            {"kind": "tool-result", "codecMessageId": "CA", "payload": {"call_id": "call_4", "output": "ok"}},
            TOOL_H,
            encode_tool_result("call_4", "ok", TOOL_H),
        ),
        (
            {
                "kind": "tool-result-error",
                "codecMessageId": "CA",
                "payload": {"call_id": "call_5", "message": "it broke"},
            },
            TOOL_H,
            encode_tool_result_error("call_5", "it broke", TOOL_H),
        ),
    ]


class TestEncoder:
    def test_text_stream_ops(self) -> None:
        """A content part opens a stream keyed item_id:content_index; deltas append; done closes."""
        ops = ResponsesEncoder(DEFAULTS).encode(
            {
                "type": "response.content_part.added",
                "item_id": "m",
                "output_index": 0,
                "content_index": 0,
                "part": {"type": "output_text", "text": ""},
            }
        )
        assert len(ops) == 1 and ops[0].kind == "publish" and ops[0].stream_key is not None
        extras = ops[0].message.extras["ai"]
        assert extras["transport"]["stream-id"] == "m:0"
        assert extras["codec"] == {
            "kind": "output_text",
            "item_id": "m",
            "output_index": "0",
            "content_index": "0",
            "part": js_json({"type": "output_text", "text": ""}),
        }

    def test_framing_events_encode_to_nothing(self) -> None:
        enc = ResponsesEncoder(DEFAULTS)
        for etype in ("response.created", "response.completed", "error", "response.content_part.done"):
            assert enc.encode({"type": etype}) == []

    @pytest.mark.parametrize("event", HOSTED, ids=lambda e: f"{e['type']}")
    def test_hosted_tools_and_unknown_events_are_refused(self, event: dict[str, Any]) -> None:
        with pytest.raises(CodecError):
            ResponsesEncoder(DEFAULTS).encode(event)

    def test_user_message_must_be_one_text_message_item(self) -> None:
        with pytest.raises(CodecError, match="exactly one message item"):
            encode_user_message({"role": "user", "items": []}, USER_H)
        image = {"type": "message", "role": "user", "content": [{"type": "input_image", "image_url": "x"}]}
        with pytest.raises(CodecError, match="input_image"):
            encode_user_message({"role": "user", "items": [image]}, USER_H)


class TestDecoder:
    def test_reply_folds_to_items(self) -> None:
        ch = encode_all(reply_events())
        live = fold(ch.live)
        assert fold(ch.history())["messages"] == live["messages"]
        (message,) = live["messages"]
        items = message["message"]["items"]
        assert [i["type"] for i in items] == ["reasoning", "message", "function_call", "function_call_output"]
        assert items[0]["summary"] == [{"type": "summary_text", "text": "Weighing options…"}]
        assert items[0]["encrypted_content"] == "gAAA"
        assert items[1]["content"][0]["text"] == "Héllo wörld"
        assert items[1]["content"][1] == {"type": "refusal", "refusal": "I can't help"}
        assert items[2]["arguments"] == '{"city":"Paris"}'
        assert message["message"]["toolCallStates"]["call_2"]["approval"] == "pending"

    def test_mid_stream_join_synthesises_the_container_item(self) -> None:
        """A joiner whose first contact is a text stream's update still gets the message item."""
        ch = encode_all(reply_events()[:16])  # up to the second text delta
        text_create = next(
            i for i, m in enumerate(ch.live) if m.transport_headers.get("stream-id") == "msg_1:0"
        )
        first = ch.live[text_create + 1]
        joined = InboundMessage(
            name="ai-output",
            data="Héllo ",
            extras=first.extras,
            action="message.update",
            serial=first.serial,
            version_serial=first.version_serial,
        )
        out = fold([joined, *ch.live[text_create + 2 :]])
        assert out["decoded"][0]["outputs"][0] == {
            "type": "response.output_item.added",
            "item": _msg_item("msg_1"),
            "output_index": 1,
        }
        (message,) = out["messages"]
        assert message["message"]["items"][0]["content"] == [
            {"type": "output_text", "text": "Héllo wörld", "annotations": []}
        ]

    def test_codec_is_detected_from_codec_headers(self) -> None:
        ch = encode_all(reply_events())
        for m in encode_user_message(user_text_message("hi"), USER_H):
            ch.publish(m)
        tags = {detect_codec(m) for m in ch.live}
        assert tags == {OPENAI_RESPONSES}
        tree = ConversationTree()
        tree.apply_all(ch.live)
        assert tree.codecs.adapter_tag == OPENAI_RESPONSES
        assert tree.codecs.mixed == ()
        vercel_user = InboundMessage(
            "ai-input",
            "hi",
            {
                "ai": {
                    "transport": {"codec-message-id": "X"},
                    "codec": {"kind": "user-message", "partType": "text"},
                }
            },
            serial="z1",
        )
        tree.apply(vercel_user)
        assert list(tree.codecs.mixed) == [OPENAI_RESPONSES, VERCEL]


@pytest.mark.node
class TestAgainstJs:
    def test_every_output_event_encodes_like_js(self) -> None:
        """The same events through the JS ResponsesCodec encoder and ours: identical wire ops, and
        the same events refused (hosted tools, unmodelled items, deltas without a stream)."""
        events = [*reply_events(), *HOSTED]
        stamps = {"step-start-serial": "S_step"}
        js = js_codec("encode", codec="openai", defaultHeaders=DEFAULTS, stamps=stamps, chunks=events)
        assert js["ok"], js
        enc = ResponsesEncoder(DEFAULTS)
        enc.set_default_header("step-start-serial", "S_step")
        py = run_encoder(enc, events)
        assert py["ops"] == js["ops"]
        assert [e["type"] for e in py["errors"]] == [e["type"] for e in js["errors"]]
        assert len(js["errors"]) == len(HOSTED)

    def test_cancel_and_append_recovery_match_js(self) -> None:
        events = reply_events()[:16]
        js = js_codec(
            "encode",
            codec="openai",
            defaultHeaders=DEFAULTS,
            chunks=events,
            cancelAtEnd=True,
            failAppends=[1, 3],
        )
        py = run_encoder(ResponsesEncoder(DEFAULTS), events, cancel_at_end=True, fail_appends=[1, 3])
        assert py["ops"] == js["ops"]
        assert any(op["op"] == "update" for op in py["ops"])

    def test_client_inputs_encode_like_js(self) -> None:
        items = [
            {"input": i, "headers": h, "messageId": h["codec-message-id"]} for i, h, _ in client_inputs()
        ]
        bad = {"role": "user", "items": []}
        items.append(
            {"input": {"kind": "user-message", "message": bad}, "headers": USER_H, "messageId": "CU"}
        )
        js = js_codec("inputs", codec="openai", items=items)
        py = [
            [message_json(m) for m in (out if isinstance(out, list) else [out])]
            for _, _, out in client_inputs()
        ]
        assert py == [op["messages"] for op in js["ops"]]
        assert [e["kind"] for e in js["errors"]] == ["user-message"]

    @pytest.mark.parametrize("view", ["live", "history", "history+live"])
    def test_reply_and_inputs_decode_fold_and_convert_like_js(self, view: str) -> None:
        """Decoded events, folded messages, Responses input and correlation equal the JS codec's."""
        ch = Channel()
        for m in encode_user_message(user_text_message("Weather?"), USER_H):
            ch.publish(m, client_id="u")
        streams: dict[str, str] = {}
        enc = ResponsesEncoder(DEFAULTS)
        for event in reply_events():
            ch.run_ops(enc.encode(event), streams)
        for _, _, out in client_inputs()[3:]:
            ch.publish(out, client_id="u")
        msgs = {"live": ch.live, "history": ch.history(), "history+live": [*ch.history(), *ch.live]}[view]
        js = js_codec("decode", codec="openai", messages=[inbound_json(m) for m in msgs])
        assert js["ok"], js
        py = fold(msgs)
        for key in ("decoded", "messages", "responsesInput", "unanswered", "approved"):
            assert py[key] == js[key], key

    def test_mid_stream_join_and_cancel_decode_like_js(self) -> None:
        """A joiner at every stream's first update, and a cancelled stream, fold like JS."""
        ch = encode_all(reply_events()[:21])  # cancel leaves the refusal stream cancelled
        joined: list[InboundMessage] = []
        seen: set[str | None] = set()
        for m in ch.live:
            if m.action == "message.append" and m.serial not in seen:
                seen.add(m.serial)
                joined.append(
                    InboundMessage(
                        "ai-output", m.data, m.extras, "message.update", m.serial, m.version_serial
                    )
                )
            elif m.action == "message.append":
                joined.append(m)
        js = js_codec("decode", codec="openai", messages=[inbound_json(m) for m in joined])
        py = fold(joined)
        for key in ("decoded", "messages", "responsesInput"):
            assert py[key] == js[key], key
        assert py["messages"]  # the repair made the parts land
