"""Server-side append rollup (``appendRollupWindow``) and how rollups count against Ably's limits."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from ably.types.message import Message, MessageAction

from agent_worker.server import EmbeddedServer, ServerConfig
from agent_worker.server.testing import python_realtime, python_rest
from tests.server.server_support import ACK, ERROR, MESSAGE, NACK, RawClient, collector, eventually

APPEND = 5


def _appends(frames: list[dict[str, Any]], serial: str) -> list[dict[str, Any]]:
    return [
        m
        for f in frames
        if f["action"] == MESSAGE
        for m in f["messages"]
        if m.get("serial") == serial and m.get("action") == APPEND
    ]


async def _read_until(client: RawClient, pred: Any) -> None:
    """Receive frames into ``client.frames`` until ``pred(client.frames)`` holds."""
    while not pred(client.frames):
        assert await client.recv() is not None, "socket closed"


async def _create(client: RawClient, channel: str, data: str) -> str:
    await client.publish(channel, [{"name": "reply", "data": data}])
    while True:
        frame = await client.recv()
        assert frame is not None
        if frame["action"] == ACK:
            serial: str = frame["res"][0]["serials"][0]
            return serial


async def test_burst_of_appends_reaches_subscribers_as_first_plus_one_rollup(
    ably_server: EmbeddedServer,
) -> None:
    """The first append goes out alone, the rest of the burst (sent well within the 500 ms window) as
    one append with the concatenated data and the newest extras; ACKs stay in order, the held ones
    without a serial; history shows the message once, rolled up."""
    agent = await RawClient.connect(ably_server, echo="false", appendRollupWindow="500")
    viewer = await RawClient.connect(ably_server)
    try:
        await viewer.attach("roll:a")
        serial = await _create(agent, "roll:a", "Hel")
        tokens = ["lo", " wo", "rl", "d", "!"]
        for i, t in enumerate(tokens):
            await agent.publish(
                "roll:a", [{"action": APPEND, "serial": serial, "data": t, "extras": {"i": i}}]
            )
        acks = await agent.outcomes(len(tokens))
        assert [a["action"] for a in acks] == [ACK] * len(tokens)
        assert [a["msgSerial"] for a in acks] == [1, 2, 3, 4, 5]
        version_serials = [a["res"][0]["serials"][0] for a in acks]
        assert version_serials[0] is not None
        assert version_serials[1:] == [None] * 4
        await _read_until(viewer, lambda fr: len(_appends(fr, serial)) == 2)
        first, rolled = _appends(viewer.frames, serial)
        assert (first["data"], first["extras"]) == ("lo", {"i": 0})
        assert (rolled["data"], rolled["extras"]) == (" world!", {"i": 4})
        assert first["version"]["serial"] == version_serials[0] < rolled["version"]["serial"]
        rest = python_rest(ably_server, client_id="reader")
        try:
            (item,) = (await rest.channels.get("roll:a").history()).items
            assert (item.action, item.data, item.extras) == (
                MessageAction.MESSAGE_UPDATE,
                "Hello world!",
                {"i": 4},
            )
            assert item.version.serial == rolled["version"]["serial"]
        finally:
            await rest.close()
        assert ably_server.hub.rollup.open_rollups == 0
    finally:
        await agent.close()
        await viewer.close()


async def test_window_zero_publishes_every_append(ably_server: EmbeddedServer) -> None:
    """``appendRollupWindow=0`` turns rollup off for that connection: one delivery per append."""
    agent = await RawClient.connect(ably_server, echo="false", appendRollupWindow="0")
    viewer = await RawClient.connect(ably_server)
    try:
        await viewer.attach("roll:off")
        serial = await _create(agent, "roll:off", "")
        for t in "abcdef":
            await agent.publish("roll:off", [{"action": APPEND, "serial": serial, "data": t}])
        acks = await agent.outcomes(6)
        assert all(a["res"][0]["serials"][0] for a in acks)
        await _read_until(viewer, lambda fr: len(_appends(fr, serial)) == 6)
        assert [m["data"] for m in _appends(viewer.frames, serial)] == list("abcdef")
    finally:
        await agent.close()
        await viewer.close()


async def test_later_publish_flushes_the_rollup_first(ably_server: EmbeddedServer) -> None:
    """A held rollup reaches subscribers before anything the connection publishes after it."""
    agent = await RawClient.connect(ably_server, echo="false", appendRollupWindow="500")
    viewer = await RawClient.connect(ably_server)
    try:
        await viewer.attach("roll:order")
        serial = await _create(agent, "roll:order", "")
        for t in ["a", "b", "c"]:
            await agent.publish("roll:order", [{"action": APPEND, "serial": serial, "data": t}])
        await agent.publish("roll:order", [{"name": "ai-run-end", "data": "done"}])
        await agent.outcomes(4)
        await _read_until(
            viewer,
            lambda fr: any(
                m.get("name") == "ai-run-end" for f in fr if f["action"] == MESSAGE for m in f["messages"]
            ),
        )
        seen = [
            (m.get("action"), m.get("data"))
            for f in viewer.frames
            if f["action"] == MESSAGE
            for m in f["messages"]
        ]
        assert seen == [(0, ""), (APPEND, "a"), (APPEND, "bc"), (0, "done")]
    finally:
        await agent.close()
        await viewer.close()


@pytest.mark.parametrize("raw", ["501", "-1", "abc", "nan", "inf", "1e400"])
async def test_rollup_window_is_per_connection_and_validated(ably_server: EmbeddedServer, raw: str) -> None:
    """Out-of-range and non-numeric values are refused at connect (40003)."""
    bad = await RawClient.connect(ably_server, expect_connected=False, appendRollupWindow=raw)
    try:
        err = await bad.expect(ERROR)
        assert err["error"]["code"] == 40003
        assert await bad.closed()
    finally:
        await bad.close()


async def test_ably_python_stream_is_rolled_up_and_folds_to_the_same_text(
    ably_server: EmbeddedServer,
) -> None:
    """ably-python publisher (pipelined appends, ``transport_params``) and subscriber: fewer appends
    than sent, in order, folding to exactly the streamed text; history shows it once."""
    agent = python_realtime(ably_server, client_id="agent", transport_params={"appendRollupWindow": 100})
    viewer = python_realtime(ably_server, client_id="viewer")
    try:
        got, listener = collector()
        await viewer.channels.get("roll:py").subscribe(listener)
        ch = agent.channels.get("roll:py")
        serial = (await ch.publish("reply", "")).serials[0]
        tokens = [f"t{i} " for i in range(30)]
        results = await asyncio.gather(*(ch.append_message(Message(serial=serial, data=t)) for t in tokens))
        assert results[0].version_serial is not None
        text = "".join(tokens)
        await eventually(lambda: "".join(m.data for m in got) == text, what="the whole text")
        appends = [m for m in got if m.action == MessageAction.MESSAGE_APPEND]
        assert 2 <= len(appends) < len(tokens)
        assert [m.version.serial for m in appends] == sorted(m.version.serial for m in appends)
        history = (await agent.channels.get("roll:py").history()).items
        assert [h.data for h in history] == [text]
    finally:
        await agent.close()
        await viewer.close()


@pytest.mark.parametrize("window", [None, "0"])
async def test_rollups_count_once_against_the_connection_limit(window: str | None) -> None:
    """With enforced limits, 300 appends sent at once on one connection: under the default 40 ms
    window they are rolled up (one message per window) and all ACKed; without rollup the same burst
    gets NACK 42911."""
    async with EmbeddedServer(ServerConfig(enforce_rate_limits=True)) as server:
        if window is None:
            agent = await RawClient.connect(server, echo="false")
        else:
            agent = await RawClient.connect(server, echo="false", appendRollupWindow=window)
        try:
            serial = await _create(agent, "roll:limit", "")
            for i in range(300):
                await agent.publish("roll:limit", [{"action": APPEND, "serial": serial, "data": f"{i},"}])
            outcomes = await agent.outcomes(300)
            nacks = {f["error"]["code"] for f in outcomes if f["action"] == NACK}
            if window == "0":
                # The connection limit refuses the burst; the channel's (also 50/s, its bucket
                # created a moment later) may refuse one the connection's refill just let through.
                assert 42911 in nacks and nacks <= {42910, 42911}
            else:
                assert nacks == set()
                await eventually(lambda: server.hub.rollup.open_rollups == 0, what="the rollup to flush")
                (record,) = server.hub.channels["roll:limit"].log.records.values()
                assert record.content["data"] == "".join(f"{i}," for i in range(300))
                assert len(record.versions) < 300  # rolled up: far fewer versions than appends
        finally:
            await agent.close()


class _NoHub:
    """The rollup's hub where nothing may be held (holding would prepare the message)."""

    channels: dict[str, Any] = {}

    def channel(self, name: str) -> Any:
        msg = f"append held on {name}"
        raise AssertionError(msg)


async def test_an_append_one_whole_window_after_the_last_goes_out_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """uvloop's clock ticks in whole milliseconds, and ``t + 0.040 - t`` is a hair under 0.04 in
    floats for about half of them: appends exactly one window apart (what a paced publisher sends)
    were held until the window's end, and the next window timed from that late publish."""
    from agent_worker.server.rollup import AppendRollup  # noqa: PLC0415

    rollup = AppendRollup(_NoHub())  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    principal: Any = None  # only a held append is validated against its principal
    charged: list[int] = []
    for ms in range(8723_001, 8723_001 + 40 * 50, 40):  # 50 appends, 40 ms apart on a ms clock
        monkeypatch.setattr(loop, "time", lambda ms=ms: ms / 1000)
        items = [{"action": APPEND, "serial": "s1", "data": "x"}]
        held = rollup.offer("ch", items, principal, publisher_id="c1", window_ms=40, charge=charged.append)
        assert held is None, ms
    assert (rollup.open_rollups, charged) == (0, [])
