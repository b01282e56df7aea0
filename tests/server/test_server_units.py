"""Pure parts of the server: serials, the channel log's versions and replay, codec transcoding."""

from __future__ import annotations

import base64
from typing import Any

import msgpack
import pytest

from agent_worker.errors import ProtocolError
from agent_worker.server.codec import (
    JSON,
    MSGPACK,
    decode_frame,
    encode_frame,
    inbound_payload,
    outbound_payload,
)
from agent_worker.server.log import APPEND, CREATE, UPDATE, ChannelLog, channel_part, parse_channel_serial


def _log() -> ChannelLog:
    return ChannelLog("unit", series="s1")


class TestSerials:
    def test_serials_sort_in_publish_order_even_past_999_per_ms(self) -> None:
        """More than 1000 publishes in one millisecond still mint strictly increasing serials."""
        log = _log()
        serials = [
            log.publish([{"data": i}], connection_id="c", client_id=None, now_ms=1000).serials[0] or ""
            for i in range(1500)
        ]
        assert serials == sorted(serials) and len(set(serials)) == 1500
        assert all(parse_channel_serial(channel_part(s)) is not None for s in serials)

    def test_clock_going_backwards_keeps_order(self) -> None:
        """A wall clock stepping back never produces a smaller serial."""
        log = _log()
        a = log.publish([{"data": 1}], connection_id=None, client_id=None, now_ms=5000).serials[0] or ""
        b = log.publish([{"data": 2}], connection_id=None, client_id=None, now_ms=4000).serials[0] or ""
        assert b > a

    def test_channel_part(self) -> None:
        assert channel_part("00000000001000-001@s1:002") == "00000000001000-001@s1"
        assert channel_part("00000000001000-001@s1") == "00000000001000-001@s1"
        assert channel_part("weird:thing") == "weird:thing"


class TestVersions:
    def test_content_at_each_version_and_replay(self) -> None:
        """Historical content is reconstructible at every version; replay yields every event."""
        log = _log()
        serial = (
            log.publish([{"name": "n", "data": "a"}], connection_id="c", client_id="x", now_ms=10).serials[0]
            or ""
        )
        for i, part in enumerate(["b", "c"]):
            log.publish(
                [{"action": APPEND, "serial": serial, "data": part}],
                connection_id="c",
                client_id="x",
                now_ms=11 + i,
            )
        log.publish(
            [{"action": UPDATE, "serial": serial, "data": "Z"}], connection_id="c", client_id="x", now_ms=20
        )
        log.publish(
            [{"action": APPEND, "serial": serial, "data": "!"}], connection_id="c", client_id="x", now_ms=21
        )
        record = log.records[serial]
        assert [record.content_at(k)["data"] for k in range(5)] == ["a", "ab", "abc", "Z", "Z!"]
        assert record.render(1)["data"] == "b" and record.render(1)["action"] == APPEND
        assert record.render(1, first_sight=True)["data"] == "ab"
        assert record.render(1, first_sight=True)["action"] == UPDATE
        assert record.render_latest()["action"] == UPDATE
        assert [index for _, _, index in log.events_after(log.zero_serial)] == [0, 1, 2, 3, 4]
        versions = record.render_versions()
        assert [v["data"] for v in versions] == ["a", "abc", "Z", "Z!"], "append runs collapse"

    def test_appends_repeating_the_extras_share_one_object(self) -> None:
        """Streamed appends that repeat their message's extras keep the message's extras object
        (one per message in the log, not one per append), and every version still renders them."""
        log = _log()

        def headers() -> dict[str, object]:  # a new, equal object per append, as decoded frames are
            return {"ai": {"transport": {"role": "assistant", "stream": "true"}, "codec": {"kind": "text"}}}

        serial = log.publish([{"data": "", "extras": headers()}], connection_id="c", client_id="x", now_ms=1)
        s = serial.serials[0] or ""
        for i, part in enumerate(["a", "b", "c"]):
            msg = {"action": APPEND, "serial": s, "data": part, "extras": headers()}
            log.publish([msg], connection_id="c", client_id="x", now_ms=2 + i)
        record = log.records[s]
        first = record.content["extras"]
        assert all(v.fields["extras"] is first for v in record.versions)
        assert [record.render(k)["extras"] for k in range(4)] == [headers()] * 4
        assert record.render(2)["data"] == "b" and record.content["data"] == "abc"

    @pytest.mark.parametrize(
        ("first", "later"),
        [
            ({"ai": {"t": {"role": "a"}, "c": {"k": "x"}}}, {"ai": {"c": {"k": "x"}, "t": {"role": "a"}}}),
            ({"ai": {"c": {"k": "x", "n": 1}}}, {"ai": {"c": {"k": "x", "n": True}}}),
            ({"ai": {"c": {"k": "x", "n": 1}}}, {"ai": {"c": {"k": "x", "n": 1.0}}}),
        ],
        ids=["key-order", "true-for-1", "float-for-int"],
    )
    def test_appends_with_other_extras_keep_their_own(
        self, first: dict[str, Any], later: dict[str, Any]
    ) -> None:
        """Extras Python calls equal but the wire does not (key order, True or 1.0 for 1) are not
        shared: each version renders the extras its append carried."""
        assert first == later
        log = _log()
        s = log.publish([{"data": "", "extras": first}], connection_id="c", client_id="x", now_ms=1).serials[
            0
        ]
        append = {"action": APPEND, "serial": s, "data": "a", "extras": later}
        log.publish([append], connection_id="c", client_id="x", now_ms=2)
        record = log.records[s or ""]
        assert record.render(1)["extras"] is later and record.render(0)["extras"] is first
        assert msgpack.packb(record.render(1)["extras"]) == msgpack.packb(later)

    def test_batch_is_atomic(self) -> None:
        """A batch with one invalid mutation publishes nothing."""
        log = _log()
        with pytest.raises(ProtocolError):
            log.publish(
                [{"data": "ok"}, {"action": APPEND, "serial": "missing", "data": "x"}],
                connection_id=None,
                client_id=None,
                now_ms=1,
            )
        assert log.order == [] and log.events == []

    def test_history_bounds_and_cursor(self) -> None:
        """until (a channel serial) includes that publish; cursors continue without overlap."""
        log = _log()
        serials = [
            log.publish([{"data": i}], connection_id=None, client_id=None, now_ms=100 + i).serials[0] or ""
            for i in range(5)
        ]
        page, cursor = log.history(backwards=True, limit=2, until=channel_part(serials[2]))
        assert [r.serial for r in page] == [serials[2], serials[1]]
        page2, cursor2 = log.history(backwards=True, limit=2, until=channel_part(serials[2]), cursor=cursor)
        assert [r.serial for r in page2] == [serials[0]] and cursor2 is None
        fwd, _ = log.history(backwards=False, limit=10, start=102)
        assert [r.content["data"] for r in fwd] == [2, 3, 4]
        assert log.records[serials[0]].latest_action == CREATE


class TestCodec:
    def test_binary_transcoding(self) -> None:
        """JSON base64 payloads become bytes internally and base64 again for JSON clients only."""
        item = inbound_payload(
            {"data": base64.b64encode(b"\x00\x01").decode(), "encoding": "cipher/base64"}, JSON
        )
        assert item == {"data": b"\x00\x01", "encoding": "cipher"}
        assert outbound_payload(item, MSGPACK) == item
        assert outbound_payload(item, JSON) == {"data": "AAE=", "encoding": "cipher/base64"}

    def test_strips_size_and_nulls(self) -> None:
        """ably-js's leaked `size` and explicit nulls never reach storage."""
        assert inbound_payload({"data": "x", "size": 1, "name": None}, JSON) == {"data": "x"}

    @pytest.mark.parametrize("raw", [b"\xc1", "{", "[1]", "null", b"\x93\x01\x02\x03"])
    def test_bad_frames(self, raw: str | bytes) -> None:
        fmt = MSGPACK if isinstance(raw, bytes) else JSON
        with pytest.raises(ProtocolError):
            decode_frame(raw, fmt)

    def test_frames_drop_none_fields(self) -> None:
        assert (
            encode_frame({"action": 1, "msgSerial": 0, "error": None}, JSON) == '{"action":1,"msgSerial":0}'
        )
