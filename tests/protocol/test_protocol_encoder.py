"""Encoder: the §10 wire sequences op by op, every §8.1 chunk kind, and a differential run against the
official JS encoder."""

from __future__ import annotations

from typing import Any

import pytest

from agent_worker.errors import CodecError
from agent_worker.protocol.headers import (
    AI_RUN_END,
    AI_RUN_START,
    AI_STEP_END,
    AI_STEP_START,
    build_lifecycle_headers,
    build_step_headers,
    js_json,
    lifecycle_message,
)
from agent_worker.protocol.vercel.encoder import UIMessageEncoder
from agent_worker.protocol.wire import AppendOp, PublishOp
from tests.protocol.protocol_support import ALL_OUTPUT_CHUNKS as ALL_CHUNKS
from tests.protocol.protocol_support import js_codec, run_encoder, section_10_output_headers

# §10 fixtures
B_DEFAULTS = section_10_output_headers()
B = {**B_DEFAULTS, "step-start-serial": "S_step"}


def encoder() -> UIMessageEncoder:
    enc = UIMessageEncoder(B_DEFAULTS)
    enc.set_default_header("step-start-serial", "S_step")
    return enc


def discrete(codec: dict[str, str], data: Any = "") -> dict[str, Any]:
    return {
        "name": "ai-output",
        "data": data,
        "extras": {"ai": {"transport": {**B, "stream": "false"}, "codec": codec}},
    }


class TestSection10Wire:
    def test_output_headers_are_the_documented_base_set(self) -> None:
        """build_output_headers yields exactly §10's B (before step-start-serial is injected)."""
        assert B == {
            "role": "assistant",
            "codec-message-id": "CA",
            "run-id": "R1",
            "run-client-id": "user-abc",
            "parent": "CU",
            "invocation-id": "I1",
            "input-client-id": "user-abc",
            "input-codec-message-id": "CU",
            "step-id": "I1-step-0",
            "step-client-id": "user-abc",
            "step-start-serial": "S_step",
        }

    def test_a_simple_text_reply(self) -> None:
        """§10(a) steps 6-13: start, start-step, a text stream of two deltas closed complete, finish."""
        chunks = [
            {"type": "start"},
            {"type": "start-step"},
            {"type": "text-start", "id": "txt-0"},
            {"type": "text-delta", "id": "txt-0", "delta": "Hi"},
            {"type": "text-delta", "id": "txt-0", "delta": " there"},
            {"type": "text-end", "id": "txt-0"},
            {"type": "finish-step"},
            {"type": "finish", "finishReason": "stop"},
        ]
        got = run_encoder(encoder(), chunks)
        stream_t = {**B, "stream": "true", "status": "streaming", "stream-id": "txt-0"}
        text_c = {"kind": "text", "id": "txt-0"}
        assert got["errors"] == []
        assert got["ops"] == [
            {
                "op": "publish",
                "messages": [discrete({"kind": "start", "messageId": "CA"})],
                "serials": ["s0001"],
            },
            {"op": "publish", "messages": [discrete({"kind": "start-step"})], "serials": ["s0002"]},
            {
                "op": "publish",
                "messages": [
                    {
                        "name": "ai-output",
                        "data": "",
                        "extras": {"ai": {"transport": stream_t, "codec": text_c}},
                    }
                ],
                "serials": ["s0003"],
            },
            {
                "op": "append",
                "message": {
                    "serial": "s0003",
                    "data": "Hi",
                    "extras": {"ai": {"transport": stream_t, "codec": text_c}},
                },
            },
            {
                "op": "append",
                "message": {
                    "serial": "s0003",
                    "data": " there",
                    "extras": {"ai": {"transport": stream_t, "codec": text_c}},
                },
            },
            {
                "op": "append",
                "message": {
                    "serial": "s0003",
                    "data": "",
                    "extras": {"ai": {"transport": {**stream_t, "status": "complete"}, "codec": text_c}},
                },
            },
            {"op": "publish", "messages": [discrete({"kind": "finish-step"})], "serials": ["s0004"]},
            {
                "op": "publish",
                "messages": [discrete({"kind": "finish", "finishReason": "stop"})],
                "serials": ["s0005"],
            },
        ]

    def test_b_streamed_tool_call_then_result(self) -> None:
        """§10(b) steps 8-12: a tool-input stream keyed by toolCallId, closed with the name, output."""
        enc = encoder()
        ops = [
            *enc.encode({"type": "tool-input-start", "toolCallId": "call_1", "toolName": "getWeather"}),
            *enc.encode({"type": "tool-input-delta", "toolCallId": "call_1", "inputTextDelta": '{"city":'}),
            *enc.encode({"type": "tool-input-delta", "toolCallId": "call_1", "inputTextDelta": '"Paris"}'}),
            *enc.encode(
                {
                    "type": "tool-input-available",
                    "toolCallId": "call_1",
                    "toolName": "getWeather",
                    "input": {"city": "Paris"},
                }
            ),
            *enc.encode({"type": "tool-output-available", "toolCallId": "call_1", "output": {"tempC": 21}}),
        ]
        stream_t = {**B, "stream": "true", "status": "streaming", "stream-id": "call_1"}
        tool_c = {"kind": "tool-input", "toolCallId": "call_1", "toolName": "getWeather"}
        assert isinstance(ops[0], PublishOp) and ops[0].stream_key is not None
        assert ops[0].message.extras == {"ai": {"transport": stream_t, "codec": tool_c}}
        assert [op.message.data for op in ops[1:4]] == ['{"city":', '"Paris"}', ""]
        assert all(isinstance(op, AppendOp) and op.stream_key == ops[0].stream_key for op in ops[1:4])
        closing = ops[3]
        assert isinstance(closing, AppendOp) and closing.closing
        assert closing.message.extras == {
            "ai": {"transport": {**stream_t, "status": "complete"}, "codec": tool_c}
        }
        assert isinstance(ops[4], PublishOp)
        assert ops[4].message.data == {"output": {"tempC": 21}}
        assert ops[4].message.extras["ai"]["codec"] == {
            "kind": "tool-output-available",
            "toolCallId": "call_1",
        }

    def test_b_unstreamed_tool_input_is_one_discrete_publish(self) -> None:
        """tool-input-available with no open stream publishes kind tool-input with data = input."""
        ops = encoder().encode(
            {
                "type": "tool-input-available",
                "toolCallId": "c9",
                "toolName": "getWeather",
                "input": {"city": "Paris"},
            }
        )
        assert len(ops) == 1 and isinstance(ops[0], PublishOp) and ops[0].stream_key is None
        assert ops[0].message.data == {"city": "Paris"}
        assert ops[0].message.extras == {
            "ai": {
                "transport": {**B, "stream": "false"},
                "codec": {"kind": "tool-input", "toolCallId": "c9", "toolName": "getWeather"},
            }
        }

    def test_c_cancel_closes_open_streams_once(self) -> None:
        """§10(c) step 13: the open text stream gets one closing append with status cancelled."""
        enc = encoder()
        enc.encode({"type": "text-start", "id": "txt-0"})
        enc.encode({"type": "text-delta", "id": "txt-0", "delta": "Once upon"})
        enc.encode({"type": "reasoning-start", "id": "r0"})
        enc.encode({"type": "reasoning-end", "id": "r0"})
        assert len(enc.open_stream_keys) == 1
        cancels = enc.cancel_open_streams()
        assert len(cancels) == 1 and cancels[0].closing
        assert cancels[0].message.data == ""
        assert cancels[0].message.extras == {
            "ai": {
                "transport": {**B, "stream": "true", "status": "cancelled", "stream-id": "txt-0"},
                "codec": {"kind": "text", "id": "txt-0"},
            }
        }
        assert enc.cancel_open_streams() == []
        assert len(enc.open_stream_keys) == 0

    def test_recovery_update_carries_the_full_text(self) -> None:
        """After a failed append the repair is an update with the accumulated text and the final status."""
        enc = encoder()
        key = enc.encode({"type": "text-start", "id": "t"})[0]
        assert isinstance(key, PublishOp) and key.stream_key is not None
        enc.encode({"type": "text-delta", "id": "t", "delta": "Hello "})
        enc.encode({"type": "text-delta", "id": "t", "delta": "world"})
        upd = enc.recovery_update(key.stream_key)
        assert upd.message.data == "Hello world"
        assert upd.message.extras["ai"]["transport"]["status"] == "complete"
        enc.cancel_open_streams()
        assert enc.recovery_update(key.stream_key).message.extras["ai"]["transport"]["status"] == "cancelled"

    def test_lifecycle_messages(self) -> None:
        """§10(a) steps 4, 5, 14, 15 and §10(d) step 12: exact lifecycle headers, no data, no codec tier."""
        start = lifecycle_message(
            AI_RUN_START,
            build_lifecycle_headers(
                run_id="R1",
                run_client_id="user-abc",
                parent="CU",
                invocation_id="I1",
                input_client_id="user-abc",
                input_codec_message_id="CU",
            ),
        )
        assert start.name == "ai-run-start" and start.data is None
        assert start.extras == {
            "ai": {
                "transport": {
                    "run-id": "R1",
                    "run-client-id": "user-abc",
                    "parent": "CU",
                    "invocation-id": "I1",
                    "input-client-id": "user-abc",
                    "input-codec-message-id": "CU",
                }
            }
        }
        step_start = build_step_headers(
            run_id="R1",
            step_id="I1-step-0",
            invocation_id="I1",
            run_client_id="user-abc",
            input_client_id="user-abc",
            step_client_id="user-abc",
        )
        assert "step-start-serial" not in step_start and "step-reason" not in step_start
        step_end = lifecycle_message(
            AI_STEP_END,
            build_step_headers(
                run_id="R1",
                step_id="I1-step-0",
                step_start_serial="S_step",
                invocation_id="I1",
                run_client_id="user-abc",
                input_client_id="user-abc",
                step_client_id="user-abc",
                reason="complete",
            ),
        )
        assert step_end.extras["ai"]["transport"]["step-start-serial"] == "S_step"
        assert step_end.extras["ai"]["transport"]["step-reason"] == "complete"
        assert lifecycle_message(AI_STEP_START, step_start).name == "ai-step-start"
        end = build_lifecycle_headers(
            run_id="R1",
            run_client_id="user-abc",
            reason="error",
            invocation_id="I1",
            input_client_id="user-abc",
            input_codec_message_id="CU",
            error_code=104008,
            error_message="unable to complete run; boom",
        )
        assert end == {
            "run-id": "R1",
            "run-client-id": "user-abc",
            "run-reason": "error",
            "invocation-id": "I1",
            "input-client-id": "user-abc",
            "input-codec-message-id": "CU",
            "error-code": "104008",
            "error-message": "unable to complete run; boom",
        }
        assert lifecycle_message(AI_RUN_END, end).extras == {"ai": {"transport": end}}


class TestEncoderErrors:
    @pytest.mark.parametrize(
        "ctype", ["custom", "reasoning-file", "steering-message", "reset-step", "tool-approval-response"]
    )
    def test_unsupported_chunk_types_raise(self, ctype: str) -> None:
        """Chunk types the 0.8.0 codec does not declare are refused, like the JS encoder's throw."""
        with pytest.raises(CodecError) as info:
            encoder().encode({"type": ctype})
        assert info.value.field == "type"
        assert ctype in str(info.value)

    def test_delta_without_open_stream_raises(self) -> None:
        """Appending to a stream that was never opened is a CodecError naming the stream id."""
        with pytest.raises(CodecError, match="no active stream"):
            encoder().encode({"type": "text-delta", "id": "nope", "delta": "x"})

    def test_non_string_delta_is_refused(self) -> None:
        """A delta that is not a string cannot be appended to a string stream."""
        enc = encoder()
        enc.encode({"type": "text-start", "id": "t"})
        with pytest.raises(CodecError) as info:
            enc.encode({"type": "text-delta", "id": "t", "delta": 3})
        assert info.value.field == "delta"

    def test_chunk_without_type(self) -> None:
        """A chunk with no type is rejected with the offending field and a truncated payload."""
        with pytest.raises(CodecError) as info:
            encoder().encode({"id": "x" * 500})
        assert info.value.field == "type"
        assert len(str(info.value)) < 400


@pytest.mark.node
class TestEncoderAgainstJs:
    def test_every_output_kind_matches_the_js_encoder(self) -> None:
        """The same chunks through the JS and the Python encoder produce identical publishes/appends."""
        stamps = {"step-start-serial": "S_step", "steer-codec-message-ids": js_json(["st1", "st2"])}
        js = js_codec("encode", defaultHeaders=B_DEFAULTS, messageId="CA", stamps=stamps, chunks=ALL_CHUNKS)
        enc = UIMessageEncoder(B_DEFAULTS)
        for key, value in stamps.items():
            enc.set_default_header(key, value)
        py = run_encoder(enc, ALL_CHUNKS)
        assert py["ops"] == js["ops"]
        assert (
            [e["type"] for e in py["errors"]] == [e["type"] for e in js["errors"]] == ["custom", "text-delta"]
        )

    def test_cancel_and_append_recovery_match_the_js_encoder(self) -> None:
        """Failed appends are repaired with full-content updates; cancels close only unfinished streams."""
        chunks: list[dict[str, Any]] = [
            {"type": "text-start", "id": "a"},
            {"type": "text-delta", "id": "a", "delta": "alpha "},
            {"type": "text-delta", "id": "a", "delta": "beta"},
            {"type": "text-end", "id": "a"},
            {"type": "text-start", "id": "b"},
            {"type": "text-delta", "id": "b", "delta": "gamma"},
            {"type": "tool-input-start", "toolCallId": "c1", "toolName": "t"},
            {"type": "tool-input-delta", "toolCallId": "c1", "inputTextDelta": "{"},
        ]
        # append #1 ("beta") fails → stream a repaired complete; #4 ("{") fails → c1 repaired cancelled
        js = js_codec(
            "encode", defaultHeaders=B_DEFAULTS, chunks=chunks, cancelAtEnd=True, failAppends=[1, 4]
        )
        py = run_encoder(
            UIMessageEncoder(B_DEFAULTS, message_id=None), chunks, cancel_at_end=True, fail_appends=[1, 4]
        )
        assert py["ops"] == js["ops"]
        updates = [op for op in py["ops"] if op["op"] == "update"]
        assert [
            (u["message"]["data"], u["message"]["extras"]["ai"]["transport"]["status"]) for u in updates
        ] == [
            ("alpha beta", "complete"),
            ("{", "cancelled"),
        ]
