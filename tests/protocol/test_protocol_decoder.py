"""Decoder + reducer: live, history (late joiner) and mid-stream-join deliveries of §10 sequences, client
inputs, bad input; differential runs against the official JS decoder/reducer."""

from __future__ import annotations

import dataclasses
import random
from typing import Any, cast

import pytest

from agent_worker.errors import CodecError
from agent_worker.protocol.headers import build_input_headers
from agent_worker.protocol.vercel.decoder import UIMessageDecoder
from agent_worker.protocol.vercel.encoder import (
    UIMessageEncoder,
    encode_regenerate,
    encode_tool_approval_response,
    encode_tool_result,
    encode_tool_result_error,
    encode_user_message,
)
from agent_worker.protocol.vercel.reducer import VercelProjection
from agent_worker.protocol.wire import InboundMessage
from tests.protocol.protocol_support import (
    ALL_OUTPUT_CHUNKS,
    Channel,
    inbound_json,
    js_codec,
    message_json,
    run_encoder,
    section_10_output_headers,
)

DEFAULTS = section_10_output_headers()
USER_HEADERS = build_input_headers(codec_message_id="CU", event_id="E1", run_client_id="user-abc")


def fold(
    messages: list[InboundMessage], decoder: UIMessageDecoder | None = None
) -> tuple[list[Any], list[Any]]:
    """Decode each message and fold it into one projection; returns (decoded, messages JSON)."""
    dec = decoder or UIMessageDecoder()
    proj = VercelProjection()
    decoded: list[Any] = []
    for msg in messages:
        d = dec.decode(msg)
        decoded.append({"inputs": d.inputs, "outputs": d.outputs})
        cmid = msg.transport_headers.get("codec-message-id")
        for ev in d.inputs:
            proj.fold_input(ev, cmid)
        for ch in d.outputs:
            proj.fold_output(ch, cmid)
    return decoded, [m.to_json() for m in proj.messages]


def section_10_channel() -> Channel:
    """§10(a) user input then a §10(b)-style reply: tool call streamed, output, then a text step."""
    ch = Channel()
    user = {"id": "ui-1", "role": "user", "parts": [{"type": "text", "text": "Weather in Paris?"}]}
    for m in encode_user_message(user, USER_HEADERS):
        ch.publish(m, client_id="user-abc")
    enc = UIMessageEncoder(DEFAULTS)
    enc.set_default_header("step-start-serial", "S_step")
    streams: dict[str, str] = {}
    for chunk in [
        {"type": "start"},
        {"type": "start-step"},
        {"type": "tool-input-start", "toolCallId": "call_1", "toolName": "getWeather"},
        {"type": "tool-input-delta", "toolCallId": "call_1", "inputTextDelta": '{"city":'},
        {"type": "tool-input-delta", "toolCallId": "call_1", "inputTextDelta": '"Paris"}'},
        {
            "type": "tool-input-available",
            "toolCallId": "call_1",
            "toolName": "getWeather",
            "input": {"city": "Paris"},
        },
        {"type": "tool-output-available", "toolCallId": "call_1", "output": {"tempC": 21}},
        {"type": "finish-step"},
        {"type": "start-step"},
        {"type": "text-start", "id": "txt-1"},
        {"type": "text-delta", "id": "txt-1", "delta": "It is 21°C "},
        {"type": "text-delta", "id": "txt-1", "delta": "in Paris."},
        {"type": "text-end", "id": "txt-1"},
        {"type": "finish-step"},
        {"type": "finish", "finishReason": "stop"},
    ]:
        ch.run_ops(enc.encode(cast("dict[str, Any]", chunk)), streams)
    return ch


EXPECTED_10B = [
    {
        "codecMessageId": "CU",
        "message": {"id": "ui-1", "role": "user", "parts": [{"type": "text", "text": "Weather in Paris?"}]},
    },
    {
        "codecMessageId": "CA",
        "message": {
            "id": "CA",
            "role": "assistant",
            "parts": [
                {"type": "step-start"},
                {
                    "type": "tool-getWeather",
                    "toolCallId": "call_1",
                    "state": "output-available",
                    "input": {"city": "Paris"},
                    "output": {"tempC": 21},
                },
                {"type": "step-start"},
                {"type": "text", "text": "It is 21°C in Paris."},
            ],
        },
    },
]


class TestSection10Decode:
    def test_live_delivery_folds_the_reply(self) -> None:
        """Live creates + appends rebuild the user message and the assistant tool/text parts."""
        _, messages = fold(section_10_channel().live)
        assert messages == EXPECTED_10B

    def test_late_joiner_history_folds_the_same(self) -> None:
        """History shows each stream once as a message.update with full data + status complete."""
        history = section_10_channel().history()
        updates = [m for m in history if m.action == "message.update"]
        assert [(u.data, u.transport_headers["status"]) for u in updates] == [
            ('{"city":"Paris"}', "complete"),
            ("It is 21°C in Paris.", "complete"),
        ]
        decoded, messages = fold(history)
        assert messages == EXPECTED_10B
        tool_update = decoded[[m.action for m in history].index("message.update")]
        assert tool_update["outputs"] == [
            {"type": "tool-input-start", "toolCallId": "call_1", "toolName": "getWeather"},
            {"type": "tool-input-delta", "toolCallId": "call_1", "inputTextDelta": '{"city":"Paris"}'},
            {
                "type": "tool-input-available",
                "toolCallId": "call_1",
                "toolName": "getWeather",
                "input": {"city": "Paris"},
            },
        ]

    def test_history_then_live_overlap_decodes_streams_once(self) -> None:
        """Stream wires seen in history are not decoded again live (version guard); discrete duplicates
        are left to the tree's wire log."""
        ch = section_10_channel()
        dec = UIMessageDecoder()
        for m in ch.history():
            dec.decode(m)
        streamed = [m for m in ch.live if m.transport_headers.get("stream") == "true"]
        assert len(streamed) == 8
        assert all(dec.decode(m).outputs == [] for m in streamed)

    def test_mid_stream_join_synthesises_start_and_step(self) -> None:
        """Joining at a stream's first post-attach update prepends start + start-step."""
        ch = section_10_channel()
        live = ch.live
        text_create = next(i for i, m in enumerate(live) if m.transport_headers.get("stream-id") == "txt-1")
        first_append = live[text_create + 1]
        as_update = InboundMessage(
            name=None,
            data="It is 21°C ",
            extras=first_append.extras,
            action="message.update",
            serial=first_append.serial,
            version_serial=first_append.version_serial,
        )
        decoded, messages = fold([as_update, *live[text_create + 2 :]])
        assert decoded[0]["outputs"] == []  # an update without a name decodes as nothing (not ai-output)
        named = dataclasses.replace(as_update, name="ai-output")
        decoded, messages = fold([named, *live[text_create + 2 :]])
        assert decoded[0]["outputs"][:4] == [
            {"type": "start"},
            {"type": "start-step"},
            {"type": "text-start", "id": "txt-1"},
            {"type": "text-delta", "id": "txt-1", "delta": "It is 21°C "},
        ]
        assert messages[0]["message"]["parts"] == [
            {"type": "step-start"},
            {"type": "text", "text": "It is 21°C in Paris."},
        ]

    def test_cancelled_stream_keeps_partial_text_without_end(self) -> None:
        """§10(c): a stream closed with status cancelled emits no end chunk; the text so far stays."""
        ch = Channel()
        enc = UIMessageEncoder(DEFAULTS)
        streams: dict[str, str] = {}
        for chunk in [
            {"type": "start"},
            {"type": "text-start", "id": "t"},
            {"type": "text-delta", "id": "t", "delta": "Once upon"},
        ]:
            ch.run_ops(enc.encode(chunk), streams)
        ch.run_ops(enc.cancel_open_streams(), streams)
        decoded, messages = fold(ch.live)
        assert decoded[-1]["outputs"] == []
        # no start-step was published, so the mid-stream-join repair synthesised one
        assert messages[0]["message"]["parts"] == [
            {"type": "step-start"},
            {"type": "text", "text": "Once upon"},
        ]
        _, from_history = fold(ch.history())
        assert from_history == messages


class TestDecoderEdgeCases:
    def test_foreign_append_is_ignored(self) -> None:
        """An append without extras.ai for an unknown serial is someone else's stream."""
        msg = InboundMessage(
            name=None, data="x", extras={"headers": {}}, action="message.append", serial="s1"
        )
        assert UIMessageDecoder().decode(msg).outputs == []

    def test_append_as_first_contact(self) -> None:
        """An out-of-contract append for an unknown serial with an AIT envelope is a first contact."""
        extras = {
            "ai": {
                "transport": {**DEFAULTS, "stream": "true", "status": "streaming", "stream-id": "t"},
                "codec": {"kind": "text", "id": "t"},
            }
        }
        msg = InboundMessage(
            name="ai-output",
            data="Hi",
            extras=extras,
            action="message.append",
            serial="s1",
            version_serial="v1",
        )
        assert UIMessageDecoder().decode(msg).outputs == [
            {"type": "start"},
            {"type": "start-step"},
            {"type": "text-start", "id": "t"},
            {"type": "text-delta", "id": "t", "delta": "Hi"},
        ]

    def test_replayed_versions_decode_to_nothing(self) -> None:
        """A delivery at or below the tracked version.serial is already incorporated."""
        live = section_10_channel().live
        dec = UIMessageDecoder()
        for m in live:
            dec.decode(m)
        assert all(dec.decode(m).outputs == [] for m in live if m.transport_headers.get("stream") == "true")

    def test_non_prefix_update_is_a_silent_replacement(self) -> None:
        """An update whose data does not extend the accumulated text emits nothing."""
        extras = {
            "ai": {
                "transport": {**DEFAULTS, "stream": "true", "status": "streaming", "stream-id": "t"},
                "codec": {"kind": "text", "id": "t"},
            }
        }
        dec = UIMessageDecoder()
        dec.decode(InboundMessage("ai-output", "", extras, "message.create", "s1", "s1"))
        dec.decode(InboundMessage("ai-output", "abc", extras, "message.append", "s1", "v2"))
        assert (
            dec.decode(InboundMessage("ai-output", "xyz", extras, "message.update", "s1", "v3")).outputs == []
        )
        out = dec.decode(InboundMessage("ai-output", "xyz!", extras, "message.update", "s1", "v4")).outputs
        assert out == [{"type": "text-delta", "id": "t", "delta": "!"}]

    def test_garbled_json_headers_read_as_absent(self) -> None:
        """Malformed JSON codec fields (providerMetadata, messageMetadata) are dropped, not fatal."""
        extras = {
            "ai": {
                "transport": {**DEFAULTS, "stream": "false"},
                "codec": {"kind": "start", "messageMetadata": "{oops"},
            }
        }
        out = UIMessageDecoder().decode(InboundMessage("ai-output", "", extras, serial="s1")).outputs
        assert out == [{"type": "start"}]

    def test_unknown_kinds_are_ignored_or_strict(self) -> None:
        """Unknown kinds decode to nothing, or raise CodecError with the field in strict mode."""
        extras = {"ai": {"transport": {**DEFAULTS, "stream": "false"}, "codec": {"kind": "hologram"}}}
        msg = InboundMessage("ai-output", "", extras, serial="s1")
        assert UIMessageDecoder().decode(msg).outputs == []
        with pytest.raises(CodecError) as info:
            UIMessageDecoder(strict=True).decode(msg)
        assert info.value.field == "kind"

    def test_finish_reason_falls_back_to_stop(self) -> None:
        """An unrecognised finishReason reads as 'stop' (enumField fallback)."""
        extras = {"ai": {"transport": DEFAULTS, "codec": {"kind": "finish", "finishReason": "sleepy"}}}
        assert UIMessageDecoder().decode(InboundMessage("ai-output", "", extras, serial="s1")).outputs == [
            {"type": "finish", "finishReason": "stop"}
        ]

    def test_streamed_input_decodes_to_nothing(self) -> None:
        """Only ai-output streams rebuild through the stream path."""
        extras = {
            "ai": {
                "transport": {**USER_HEADERS, "stream": "true", "stream-id": "x"},
                "codec": {"kind": "text"},
            }
        }
        assert UIMessageDecoder().decode(InboundMessage("ai-input", "", extras, serial="s1")).inputs == []


def input_user() -> dict[str, Any]:
    """The UI user message every input test sends (text, a step marker, a file, a data part)."""
    return {
        "id": "ui-9",
        "role": "user",
        "parts": [
            {"type": "text", "text": "look"},
            {"type": "step-start"},
            {
                "type": "file",
                "url": "data:image/png;base64,AA==",
                "mediaType": "image/png",
                "filename": "a.png",
            },
            {"type": "data-ctx", "id": "d1", "data": {"k": [1]}},
        ],
    }


def input_headers() -> tuple[dict[str, str], ...]:
    """Transport headers of the inputs: (user, empty user, regenerate, tool answer, tool-result fork)."""
    return (
        build_input_headers(codec_message_id="C1", event_id="E1", run_client_id="u", parent="P0"),
        build_input_headers(codec_message_id="C2", event_id="E2", run_client_id="*"),
        build_input_headers(codec_message_id="C3", event_id="E3", parent="CU", regenerates="CA"),
        build_input_headers(codec_message_id="CA", event_id="E4", run_id="R1", run_client_id="u"),
        build_input_headers(
            codec_message_id="F", event_id="E5", role="assistant", parent="CU", supersedes="R1"
        ),
    )


def client_inputs() -> list[tuple[str, Any]]:
    """(label, OutboundMessage or list) for every §8.2 input kind."""
    seed = {
        "messages": [
            {
                "codecMessageId": "F",
                "message": {
                    "id": "a1",
                    "role": "assistant",
                    "parts": [
                        {"type": "tool-ask", "toolCallId": "tc", "state": "input-available", "input": {}},
                        {},
                    ],
                },
            },
            {"codecMessageId": 7, "message": {}},
        ]
    }
    user = input_user()
    h, empty_h, regen_h, tool_h, fork_h = input_headers()
    return [
        ("user", encode_user_message(user, h)),
        ("empty", encode_user_message({"id": "ui-e", "role": "user", "parts": []}, empty_h)),
        ("regenerate", encode_regenerate(regen_h)),
        ("approve", encode_tool_approval_response("tc", True, tool_h)),
        ("deny", encode_tool_approval_response("tc", False, tool_h, reason="no")),
        ("result", encode_tool_result("tc", {"ok": True}, fork_h, fork_seed=seed)),
        ("error", encode_tool_result_error("tc", "it broke", tool_h)),
    ]


class TestClientInputs:
    def test_user_message_batch_shape(self) -> None:
        """One wire per text/file/data part, shared headers, discrete flag, role from the message."""
        batch = client_inputs()[0][1]
        assert [m.extras["ai"]["codec"] for m in batch] == [
            {"kind": "user-message", "messageId": "ui-9", "partType": "text"},
            {"kind": "user-message", "mediaType": "image/png", "messageId": "ui-9", "partType": "file"},
            {"kind": "user-message", "id": "d1", "messageId": "ui-9", "partType": "data-ctx"},
        ]
        assert [m.data for m in batch] == ["look", "data:image/png;base64,AA==", {"k": [1]}]
        assert all(m.extras["ai"]["transport"]["discrete"] == "true" for m in batch)
        assert batch[0].extras["ai"]["transport"] == {
            "role": "user",
            "codec-message-id": "C1",
            "run-client-id": "u",
            "parent": "P0",
            "event-id": "E1",
            "stream": "false",
            "discrete": "true",
        }

    def test_inputs_round_trip_through_the_decoder(self) -> None:
        """Each encoded input decodes back (fork seed filtered, regenerate wire-only) and folds."""
        msgs: list[InboundMessage] = []
        ch = Channel()
        for _, out in client_inputs():
            for m in out if isinstance(out, list) else [out]:
                ch.publish(m, client_id="u")
        msgs = ch.live
        decoded, _ = fold(msgs)
        user_parts = [d["inputs"][0]["message"]["parts"][0] for d in decoded[:3]]
        assert user_parts == [
            {"text": "look", "type": "text"},
            {"mediaType": "image/png", "url": "data:image/png;base64,AA==", "type": "file"},
            {"id": "d1", "data": {"k": [1]}, "type": "data-ctx"},
        ]
        assert decoded[3]["inputs"][0]["message"] == {
            "id": "ui-e",
            "role": "user",
            "parts": [{"text": "", "type": "text"}],
        }
        assert decoded[4]["inputs"] == []
        assert decoded[5]["inputs"] == [
            {
                "kind": "tool-approval-response",
                "codecMessageId": "CA",
                "payload": {"toolCallId": "tc", "approved": True},
            }
        ]
        assert decoded[6]["inputs"][0]["payload"] == {"toolCallId": "tc", "approved": False, "reason": "no"}
        seed = decoded[7]["inputs"][0]["payload"]["forkSeed"]
        assert seed["messages"] == [
            {
                "codecMessageId": "F",
                "message": {
                    "id": "a1",
                    "role": "assistant",
                    "parts": [
                        {"type": "tool-ask", "toolCallId": "tc", "state": "input-available", "input": {}}
                    ],
                },
            }
        ]


def js_input_items() -> list[dict[str, Any]]:
    """The same inputs as JS publishInput calls."""
    seed = client_inputs()[5][1].data["forkSeed"]
    user = input_user()
    h, empty_h, regen_h, tool_h, fork_h = input_headers()
    return [
        {"input": {"kind": "user-message", "message": user}, "headers": h, "messageId": "C1"},
        {
            "input": {"kind": "user-message", "message": {"id": "ui-e", "role": "user", "parts": []}},
            "headers": empty_h,
            "messageId": "C2",
        },
        {
            "input": {"kind": "regenerate", "target": "CA", "parent": "CU"},
            "headers": regen_h,
            "messageId": "C3",
        },
        {
            "input": {
                "kind": "tool-approval-response",
                "codecMessageId": "CA",
                "payload": {"toolCallId": "tc", "approved": True},
            },
            "headers": tool_h,
            "messageId": "CA",
        },
        {
            "input": {
                "kind": "tool-approval-response",
                "codecMessageId": "CA",
                "payload": {"toolCallId": "tc", "approved": False, "reason": "no"},
            },
            "headers": tool_h,
            "messageId": "CA",
        },
        {
            "input": {
                "kind": "tool-result",
                "codecMessageId": "F",
                "payload": {"toolCallId": "tc", "output": {"ok": True}, "forkSeed": seed},
            },
            "headers": fork_h,
            "messageId": "F",
        },
        {
            "input": {
                "kind": "tool-result-error",
                "codecMessageId": "CA",
                "payload": {"toolCallId": "tc", "message": "it broke"},
            },
            "headers": tool_h,
            "messageId": "CA",
        },
    ]


@pytest.mark.node
class TestDecoderAgainstJs:
    def test_client_input_encoding_matches_js(self) -> None:
        """encode_* produce exactly what the JS client's publishInput publishes for every input kind."""
        js = js_codec("inputs", items=js_input_items())
        py_publishes = []
        for _, out in client_inputs():
            batch = out if isinstance(out, list) else [out]
            py_publishes.append([message_json(m) for m in batch])
        assert py_publishes == [op["messages"] for op in js["ops"]]

    @pytest.mark.parametrize("view", ["live", "history", "history+live"])
    def test_section_10_sequences_decode_like_js(self, view: str) -> None:
        """Decoded chunks and folded UIMessages equal the JS decoder + reducer for each delivery view."""
        ch = section_10_channel()
        msgs = {"live": ch.live, "history": ch.history(), "history+live": [*ch.history(), *ch.live]}[view]
        js = js_codec("decode", messages=[inbound_json(m) for m in msgs])
        decoded, messages = fold(msgs)
        assert decoded == js["decoded"]
        assert messages == js["messages"]
        if view != "history+live":
            assert messages == EXPECTED_10B

    def test_every_output_and_input_kind_decodes_like_js(self) -> None:
        """All §8.1 outputs and §8.2 inputs, live and as history, decode and fold exactly like JS."""
        ch = Channel()
        enc = UIMessageEncoder(DEFAULTS)
        streams: dict[str, str] = {}
        for chunk in ALL_OUTPUT_CHUNKS:
            if chunk["type"] in ("custom",) or chunk.get("id") == "gone":
                continue  # refused by both encoders
            ch.run_ops(enc.encode(chunk), streams)
        ch.run_ops(enc.cancel_open_streams(), streams)
        for _, out in client_inputs():
            for m in out if isinstance(out, list) else [out]:
                ch.publish(m, client_id="u")
        for msgs in (ch.live, ch.history()):
            js = js_codec("decode", messages=[inbound_json(m) for m in msgs])
            decoded, messages = fold(msgs)
            assert decoded == js["decoded"]
            assert messages == js["messages"]

    def test_malformed_wire_decodes_like_js(self) -> None:
        """Garbage a hostile publisher could write decodes (to little or nothing) exactly like JS."""
        t = {**DEFAULTS, "stream": "false"}
        raw: list[InboundMessage] = [
            InboundMessage(
                "ai-output",
                "",
                {"ai": {"transport": t, "codec": {"kind": "start", "messageMetadata": "{x"}}},
                serial="s01",
            ),
            InboundMessage(
                "ai-output", 5, {"ai": {"transport": t, "codec": {"kind": "error"}}}, serial="s02"
            ),
            InboundMessage(
                "ai-output",
                "nope",
                {"ai": {"transport": t, "codec": {"kind": "tool-output-available"}}},
                serial="s03",
            ),
            InboundMessage(
                "ai-output",
                {"errorText": 3},
                {"ai": {"transport": t, "codec": {"kind": "tool-output-error"}}},
                serial="s04",
            ),
            InboundMessage(
                "ai-output",
                [1],
                {"ai": {"transport": t, "codec": {"kind": "tool-input-error", "dynamic": "yes"}}},
                serial="s05",
            ),
            InboundMessage(
                "ai-output",
                None,
                {"ai": {"transport": t, "codec": {"kind": "data-x", "transient": "false"}}},
                serial="s06",
            ),
            InboundMessage(
                "ai-output", "", {"ai": {"transport": t, "codec": {"kind": "valueOf"}}}, serial="s07"
            ),
            InboundMessage("ai-output", "", {"ai": {"transport": t}}, serial="s08"),
            InboundMessage("ai-output", "", {"other": 1}, serial="s09"),
            InboundMessage("ai-output", "x", None, action="message.append", serial="s10"),
            InboundMessage(
                "ai-input",
                "",
                {"ai": {"transport": USER_HEADERS, "codec": {"kind": "user-message", "partType": "video"}}},
                serial="s11",
            ),
            InboundMessage(
                "ai-input",
                {"message": 4, "forkSeed": {"messages": "no"}},
                {"ai": {"transport": USER_HEADERS, "codec": {"kind": "tool-result-error"}}},
                serial="s12",
            ),
            InboundMessage(
                "ai-input",
                "",
                {
                    "ai": {
                        "transport": USER_HEADERS,
                        "codec": {"kind": "tool-approval-response", "approved": "TRUE"},
                    }
                },
                serial="s13",
            ),
            InboundMessage(
                "something-else", "", {"ai": {"transport": t, "codec": {"kind": "start"}}}, serial="s14"
            ),
            InboundMessage(
                "ai-output",
                "",
                {"ai": {"transport": t, "codec": {"kind": "start"}}},
                action="meta",
                serial="s15",
            ),
        ]
        js = js_codec("decode", messages=[inbound_json(m) for m in raw])
        decoded, messages = fold(raw)
        assert decoded == js["decoded"]
        assert messages == js["messages"]


def interleaved_chunks(seed: int) -> list[dict[str, Any]]:
    """A reproducible pseudo-random pass with several streams open at once and discrete events between."""
    rnd = random.Random(seed)
    chunks: list[dict[str, Any]] = [{"type": "start"}, {"type": "start-step"}]
    open_streams: list[tuple[str, str]] = []
    ids = iter(range(1000))
    for _ in range(60):
        roll = rnd.random()
        if roll < 0.25 and len(open_streams) < 3:
            kind = rnd.choice(["text", "reasoning", "tool"])
            sid = f"{kind[0]}{next(ids)}"
            if kind == "tool":
                chunks.append(
                    {
                        "type": "tool-input-start",
                        "toolCallId": sid,
                        "toolName": "f",
                        "dynamic": rnd.random() < 0.5,
                    }
                )
            else:
                chunks.append({"type": f"{kind}-start", "id": sid})
            open_streams.append((kind, sid))
        elif roll < 0.75 and open_streams:
            kind, sid = rnd.choice(open_streams)
            frag = rnd.choice(["a", "ü ", '{"k":', "1}", "", "\n"])
            if kind == "tool":
                chunks.append({"type": "tool-input-delta", "toolCallId": sid, "inputTextDelta": frag})
            else:
                chunks.append({"type": f"{kind}-delta", "id": sid, "delta": frag})
        elif roll < 0.9 and open_streams:
            kind, sid = open_streams.pop(rnd.randrange(len(open_streams)))
            if kind == "tool":
                chunks.append(
                    {"type": "tool-input-available", "toolCallId": sid, "toolName": "f", "input": {}}
                )
                chunks.append(
                    {"type": "tool-output-available", "toolCallId": sid, "output": rnd.random() < 0.5}
                )
            else:
                chunks.append({"type": f"{kind}-end", "id": sid})
        else:
            chunks.append(
                rnd.choice(
                    [
                        {"type": "data-tick", "id": "d", "data": rnd.randrange(9)},
                        {"type": "finish-step"},
                        {"type": "start-step"},
                    ]
                )
            )
    return chunks


@pytest.mark.node
@pytest.mark.parametrize("seed", [7, 2024])
def test_interleaved_streams_round_trip_like_js(seed: int) -> None:
    """Concurrently open streams (some left open, then cancelled) encode, deliver and fold exactly like JS."""
    chunks = interleaved_chunks(seed)
    js = js_codec("encode", defaultHeaders=DEFAULTS, messageId="CA", chunks=chunks, cancelAtEnd=True)
    assert run_encoder(UIMessageEncoder(DEFAULTS), chunks, cancel_at_end=True)["ops"] == js["ops"]
    ch = Channel()
    enc = UIMessageEncoder(DEFAULTS)
    streams: dict[str, str] = {}
    for chunk in chunks:
        ch.run_ops(enc.encode(chunk), streams)
    ch.run_ops(enc.cancel_open_streams(), streams)
    msgs = [*ch.live, *ch.history()]
    js_dec = js_codec("decode", messages=[inbound_json(m) for m in msgs])
    decoded, messages = fold(msgs)
    assert decoded == js_dec["decoded"]
    assert messages == js_dec["messages"]


def _rolled_up(serial: str, text: str, sid: str) -> InboundMessage:
    """A text stream as history returns it: one update holding the whole text, ``complete``."""
    transport = {
        "run-id": "R",
        "codec-message-id": "A",
        "stream": "true",
        "stream-id": sid,
        "status": "complete",
    }
    extras = {"ai": {"transport": transport, "codec": {"kind": "text", "id": sid}}}
    return InboundMessage("ai-output", text, extras, "message.update", serial, serial + "-v")


def test_closed_streams_stay_closed_and_share_no_text() -> None:
    dec = UIMessageDecoder()
    first = dec.decode(_rolled_up("s1", "Hello", "t0")).outputs
    assert [c["type"] for c in first] == ["start", "start-step", "text-start", "text-delta", "text-end"]
    assert first[3]["delta"] == "Hello"
    second = dec.decode(_rolled_up("s2", "World", "t1")).outputs
    assert [c.get("delta") for c in second if c["type"] == "text-delta"] == ["World"]
    late = dataclasses.replace(_rolled_up("s1", "more", "t0"), action="message.append", version_serial="s1-w")
    assert dec.decode(late).outputs == []  # appended after its end: nothing
    assert dec.decode(_rolled_up("s1", "Hello again", "t0")).outputs == []  # nor a replayed update
    assert dec.decode(_rolled_up("s2", "World", "t1")).outputs == []
    assert dec._trackers["s1"].closed and dec._trackers["s1"].accumulated == ""
    assert dec._trackers["s2"].accumulated == ""
    # One shared closed tracker, not a tracker and its header maps kept per stream ever seen.
    assert dec._trackers["s1"] is dec._trackers["s2"]


def test_a_stream_left_open_keeps_its_own_headers_until_it_closes() -> None:
    dec = UIMessageDecoder()
    opening = dataclasses.replace(_rolled_up("s1", "Hel", "t0"), version_serial="s1-a")
    opening.transport_headers["status"] = "streaming"  # type: ignore[index]
    assert [c.get("delta") for c in dec.decode(opening).outputs if c["type"] == "text-delta"] == ["Hel"]
    tracker = dec._trackers["s1"]
    assert not tracker.closed and tracker.transport is not opening.transport_headers  # a copy
    assert tracker.transport == opening.transport_headers
    closing = dataclasses.replace(_rolled_up("s1", "Hello", "t0"), version_serial="s1-b")
    assert [c["type"] for c in dec.decode(closing).outputs] == ["text-delta", "text-end"]
    assert dec._trackers["s1"].closed and dec._trackers["s1"] is not tracker
