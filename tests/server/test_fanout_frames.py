"""The fan-out encodes a MESSAGE / PRESENCE frame once per (format, first-sight pattern) and shares
the bytes between subscribers: each subscriber must still get, byte for byte, the frame the
per-subscriber path produced (render per attachment, ``outbound_payload``, ``encode_frame``)."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest

from agent_worker.server import EmbeddedServer
from agent_worker.server import constants as C
from agent_worker.server.codec import (
    JSON,
    MSGPACK,
    Format,
    decode_frame,
    encode_frame,
    inbound_payload,
    outbound_payload,
)
from agent_worker.server.hub import SIZE_PER_FRAME_BYTE, Attachment, ChannelRuntime, message_size
from agent_worker.server.log import APPEND, DELETE, UPDATE, ChannelLog, Published
from tests.server.server_support import ACK, MESSAGE, RawClient

EXTRAS = {"ai": {"transport": {"run-id": "r1", "gone": None}, "codec": {"k": [1, None, {"x": None}]}}}


class _Sub:
    def __init__(self, sub_id: str, fmt: Format, *, echo: bool = True) -> None:
        self.id, self.fmt, self.echo = sub_id, fmt, echo
        self.frames: list[str | bytes] = []

    def send(self, msg: dict[str, Any]) -> None:  # the per-subscriber path: encoded here
        self.frames.append(_old_encode(msg, self.fmt))

    def send_frame(self, data: str | bytes) -> None:
        self.frames.append(data)


def _frames(att: Attachment) -> list[str | bytes]:
    assert isinstance(att.sub, _Sub)
    return att.sub.frames


def _old_encode(msg: dict[str, Any], fmt: Format) -> str | bytes:
    """What ``RealtimeConnection.send`` encoded for a MESSAGE / PRESENCE frame before the change."""
    if msg.get("messages"):
        msg = dict(msg, messages=[outbound_payload(m, fmt) for m in msg["messages"]])
    if msg.get("presence"):
        msg = dict(msg, presence=[outbound_payload(p, fmt) for p in msg["presence"]])
    return encode_frame(msg, fmt)


def _old_deliver(
    rt: ChannelRuntime,
    atts: list[Attachment],
    published: Published,
    *,
    publisher_id: str | None,
    proto_id: str | None,
    now_ms: int,
) -> None:
    """The fan-out as it was: one render and one encode per attachment."""
    for att in atts:
        if not att.live or not att.modes & C.MODE_SUBSCRIBE:
            continue
        if publisher_id is not None and att.sub.id == publisher_id and not att.sub.echo:
            continue
        msgs = []
        for record, idx in published.items:
            first_sight = not att.has_seen(record)
            msgs.append(record.render(idx, first_sight=first_sight))
            att.mark_seen(record)
        att.sub.send(
            {
                "action": C.MESSAGE,
                "channel": rt.name,
                "channelSerial": published.channel_serial,
                "id": proto_id,
                "connectionId": publisher_id,
                "timestamp": now_ms,
                "messages": msgs,
            }
        )


SUBSCRIBE = C.MODE_SUBSCRIBE | C.MODE_PRESENCE_SUBSCRIBE


def _attach(rt: ChannelRuntime, sub: _Sub, modes: int = SUBSCRIBE) -> tuple[Attachment, Attachment]:
    """The attachment the runtime delivers to, and a twin for the old path (its own seen-set)."""
    new = Attachment(sub, rt.name, modes, {}, attach_point=rt.log.head)
    twin_sub = _Sub(sub.id, sub.fmt, echo=sub.echo)
    old = Attachment(twin_sub, rt.name, modes, {}, attach_point=rt.log.head)
    rt.attachments[sub.id] = new
    return new, old


def test_message_frames_are_byte_identical_to_the_per_subscriber_path() -> None:
    rt = ChannelRuntime(ChannelLog("fan:out", series="s1"), 1000)
    pairs = [_attach(rt, _Sub("early-mp", MSGPACK)), _attach(rt, _Sub("early-js", JSON))]
    pairs.append(_attach(rt, _Sub("pub", MSGPACK, echo=False)))
    pairs.append(_attach(rt, _Sub("no-subscribe", JSON), modes=C.MODE_PUBLISH))
    now = 1_764_000_000_000

    def publish(
        items: list[dict[str, Any]], *, publisher: str | None = "pub", proto: str | None = "p:1"
    ) -> None:
        nonlocal now
        now += 7
        published = rt.log.publish(items, connection_id=publisher, client_id="alice", now_ms=now)
        rt.deliver(published, publisher_id=publisher, proto_id=proto, now_ms=now)
        _old_deliver(
            rt, [old for _, old in pairs], published, publisher_id=publisher, proto_id=proto, now_ms=now
        )

    publish([{"name": "text", "data": "ab", "extras": EXTRAS, "clientId": "alice"}])
    text = rt.log.order[-1]
    publish([{"name": "bin", "data": b"\x00\xff", "encoding": "gzip"}], proto=None)
    binary = rt.log.order[-1]
    publish([{"data": {"json": None, "list": [None, 1]}}], publisher=None, proto=None)  # a REST publish
    publish([{"name": "second", "data": "s"}])
    second = rt.log.order[-1]
    # Attached after those creates: their appends reach these as whole messages (first sight).
    pairs += [_attach(rt, _Sub("late-mp", MSGPACK)), _attach(rt, _Sub("late-js", JSON))]
    publish([{"action": APPEND, "serial": text, "data": "c", "extras": EXTRAS}])
    publish([{"action": APPEND, "serial": binary, "data": b"\x01", "encoding": "gzip"}])
    # Two appends to one message in one batch: the late ones see the first as a whole message only.
    publish(
        [{"action": APPEND, "serial": second, "data": "d"}, {"action": APPEND, "serial": second, "data": "e"}]
    )
    meta = {"description": "fix", "metadata": {"why": None, "who": "me"}}
    publish([{"action": UPDATE, "serial": text, "data": "new", "name": "renamed", "version": meta}])
    publish([{"action": DELETE, "serial": binary}])
    publish([{"name": "typing", "data": "x", "extras": {"ephemeral": True}}])

    for new, old in pairs:
        assert isinstance(new.sub, _Sub) and isinstance(old.sub, _Sub)
        assert new.sub.frames == old.sub.frames, new.sub.id
        assert new.last_delivered == rt.log.head or new.sub.id in ("pub", "no-subscribe")
    frames = {new.sub.id: _frames(new) for new, _ in pairs}
    assert len(frames["early-mp"]) == 10 and frames["no-subscribe"] == []
    assert len(frames["pub"]) == 1  # echo=false: only the REST publish (no publishing connection)
    # The late subscribers got different bytes where first sight differs, the same bytes elsewhere.
    assert frames["late-mp"][0] != frames["early-mp"][4] and frames["late-mp"][-1] == frames["early-mp"][-1]
    first = msgpack.unpackb(frames["late-mp"][0], raw=False)["messages"][0]
    assert (first["action"], first["data"]) == (UPDATE, "abc")
    batch = json.loads(frames["late-js"][2])["messages"]
    assert [(m["action"], m["data"]) for m in batch] == [(UPDATE, "sd"), (APPEND, "e")]
    assert json.loads(frames["late-js"][1])["messages"][0]["encoding"] == "gzip/base64"


def test_presence_frames_are_byte_identical_to_the_per_subscriber_path() -> None:
    rt = ChannelRuntime(ChannelLog("fan:presence", series="s1"), 1000)
    subs = [_Sub("a", MSGPACK), _Sub("b", JSON), _Sub("c", MSGPACK)]
    for sub in subs:
        rt.attachments[sub.id] = Attachment(sub, rt.name, SUBSCRIBE, {}, attach_point=rt.log.head)
    rt.attachments["d"] = Attachment(_Sub("d", JSON), rt.name, C.MODE_SUBSCRIBE, {}, attach_point=rt.log.head)
    events = [
        {
            "action": 2,
            "clientId": "alice",
            "connectionId": "c1",
            "id": "c1:0:0",
            "timestamp": 5,
            "data": None,
        },
        {"action": 4, "clientId": "bob", "data": b"\x01", "encoding": None, "extras": {"k": None}},
    ]
    rt.deliver_presence(events, 1_764_000_000_000)
    msg = {"action": C.PRESENCE, "channel": rt.name, "timestamp": 1_764_000_000_000, "presence": events}
    for sub in subs:
        assert sub.frames == [_old_encode(msg, sub.fmt)]
    assert subs[0].frames[0] is subs[2].frames[0]  # encoded once per format
    assert _frames(rt.attachments["d"]) == []


async def _until_ack(client: RawClient) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The MESSAGE frames before the next ACK (a publisher's echo comes first), and the ACK."""
    messages = []
    while (frame := await client.recv()) is not None and frame["action"] != ACK:
        if frame["action"] == MESSAGE:
            messages.append(frame)
    assert frame is not None
    return messages, frame


async def test_subscribers_of_both_formats_and_first_sights_over_the_wire(
    ably_server: EmbeddedServer,
) -> None:
    """Over real sockets: early msgpack and JSON subscribers get the append as a delta, a late one
    as the whole message, and the publisher's own echo matches the early subscriber's."""
    pub = await RawClient.connect(ably_server, fmt="msgpack")
    early = [await RawClient.connect(ably_server, fmt=fmt) for fmt in ("msgpack", "json")]
    late = await RawClient.connect(ably_server, fmt="msgpack")
    everyone = [pub, *early, late]
    try:
        for client in (pub, *early):
            await client.attach("fan:wire")
        await pub.publish("fan:wire", [{"name": "t", "data": "ab", "extras": EXTRAS}])
        serial = (await _until_ack(pub))[1]["res"][0]["serials"][0]
        await late.attach("fan:wire")
        await pub.publish("fan:wire", [{"action": APPEND, "serial": serial, "data": "c"}])
        got = {"pub": (await _until_ack(pub))[0][-1]}
        for name, client in (("mp", early[0]), ("js", early[1]), ("late", late)):
            frame = await client.expect(MESSAGE)
            if name != "late":
                assert frame["messages"][0]["action"] == 0  # the create
                frame = await client.expect(MESSAGE)
            got[name] = frame
        delta = got["mp"]["messages"][0]
        assert (delta["action"], delta["data"], delta["extras"]) == (APPEND, "c", EXTRAS)
        assert got["js"] == got["mp"] == got["pub"]
        whole = got["late"]["messages"][0]
        assert (whole["action"], whole["data"], whole["serial"]) == (UPDATE, "abc", serial)
        assert got["late"]["channelSerial"] == got["mp"]["channelSerial"]
    finally:
        for client in everyone:
            await client.close()


ADVERSARIAL: list[tuple[str, dict[str, Any], bool]] = [  # (what, message, msgpack only)
    ("ext values", {"extras": {"x": [msgpack.ExtType(127, b"\x00")] * 300}}, True),
    ("empty ext values", {"extras": {"x": [msgpack.ExtType(127, b"")] * 300}}, True),
    ("timestamps", {"extras": {"x": [msgpack.Timestamp(2**32 - 1, 0)] * 100}}, True),
    ("non-str keys", {"extras": {"x": {**{i: False for i in range(-32, 128)}, True: None, None: 0}}}, True),
    ("binary in extras", {"extras": {"x": [b"\x00"] * 200}}, True),
    ("binary data", {"data": b"\x00" * 500, "extras": {"b": b"\xff" * 100}}, True),
    ("falses", {"extras": {"x": [False] * 500}, "data": [False] * 500}, False),
    ("empty containers", {"extras": {"x": [{}, []] * 200}}, False),
    ("control characters", {"name": "\x01" * 50, "extras": {"\x02" * 50: "\x03" * 300}}, False),
    ("non-BMP characters", {"data": "\U0001f600" * 200, "extras": {"e": "\U0001f600" * 200}}, False),
    ("numbers", {"extras": {"x": [-(2**63), 2**64 - 1, -2.2250738585072014e-308, 0.1] * 50}}, False),
    ("nesting", {"extras": {"x": [[[[[[[[False]]]]]]]] * 50}}, False),
]


SIZE_CASES = [
    pytest.param(message, fmt, id=f"{what}-{fmt}")
    for what, message, msgpack_only in ADVERSARIAL
    for fmt in (JSON, MSGPACK)
    if fmt == MSGPACK or not msgpack_only  # ext values, binary and non-str keys are msgpack's only
]


@pytest.mark.parametrize(("message", "fmt"), SIZE_CASES)
def test_message_size_stays_within_the_frame_bound(message: dict[str, Any], fmt: Format) -> None:
    """Why the publish path may skip the exact size of a message whose frame is small
    (``Hub.prepare_messages``): Ably's size (name + data + clientId + extras as JSON) is at most
    SIZE_PER_FRAME_BYTE per byte (msgpack) or character (JSON) of the frame, even for payloads
    built to inflate when rendered as JSON."""
    frame = {"action": C.MESSAGE, "channel": "c", "msgSerial": 0, "messages": [message]}
    if fmt == MSGPACK:
        raw: str | bytes = msgpack.packb(frame, use_bin_type=True)
    else:
        raw = json.dumps(frame, ensure_ascii=False, separators=(",", ":"))
    decoded = decode_frame(raw, fmt)
    item = inbound_payload(decoded["messages"][0], fmt)
    assert message_size(item) <= SIZE_PER_FRAME_BYTE * len(raw)
