"""Mutable messages with ably-python: append / update / delete, late joiners, history roll-up."""

from __future__ import annotations

import asyncio
from typing import Any

from ably.types.message import Message, MessageAction
from ably.types.operations import MessageOperation

from agent_worker.server import EmbeddedServer
from agent_worker.server.testing import python_realtime, python_rest
from tests.server.server_support import ACK, MESSAGE, RawClient, collector, eventually


def _view(m: Any) -> tuple[MessageAction, Any]:
    return m.action, m.data


# These tests look at each append on its own; Ably's server-side rollup (tests/server/test_rollup.py)
# would merge appends sent within 40 ms of each other, so the publisher turns it off.
NO_ROLLUP = {"appendRollupWindow": "0"}


class TestAppend:
    async def test_subscriber_present_from_create_gets_deltas(self, ably_server: EmbeddedServer) -> None:
        """A subscriber that saw the create gets each append as a delta with a new version serial."""
        agent = python_realtime(ably_server, client_id="agent", transport_params=NO_ROLLUP)
        try:
            ch = agent.channels.get("stream:1")
            got, listener = collector()
            await ch.subscribe(listener)
            res = await ch.publish("reply", "Hel")
            serial = res.serials[0]
            a1 = await ch.append_message(Message(serial=serial, data="lo"))
            a2 = await ch.append_message(Message(serial=serial, data=" world"))
            await eventually(lambda: len(got) == 3)
            assert [_view(m) for m in got] == [
                (MessageAction.MESSAGE_CREATE, "Hel"),
                (MessageAction.MESSAGE_APPEND, "lo"),
                (MessageAction.MESSAGE_APPEND, " world"),
            ]
            assert all(m.serial == serial for m in got)
            assert [m.version.serial for m in got[1:]] == [a1.version_serial, a2.version_serial]
            assert serial < a1.version_serial < a2.version_serial
            assert got[2].name == "reply"  # name carried forward onto deltas
        finally:
            await agent.close()

    async def test_late_joiner_mid_stream_gets_full_text_then_deltas(
        self, ably_server: EmbeddedServer
    ) -> None:
        """A client attaching mid-stream first sees the whole text as an update, then deltas."""
        agent = python_realtime(ably_server, client_id="agent", transport_params=NO_ROLLUP)
        late = python_realtime(ably_server, client_id="viewer")
        try:
            ch = agent.channels.get("stream:late")
            res = await ch.publish("reply", "The")
            serial = res.serials[0]
            await ch.append_message(Message(serial=serial, data=" quick"))
            got, listener = collector()
            await late.channels.get("stream:late").subscribe(listener)
            await ch.append_message(Message(serial=serial, data=" brown"))
            await ch.append_message(Message(serial=serial, data=" fox"))
            await eventually(lambda: len(got) == 2)
            assert [_view(m) for m in got] == [
                (MessageAction.MESSAGE_UPDATE, "The quick brown"),
                (MessageAction.MESSAGE_APPEND, " fox"),
            ]
            folded = got[0].data + "".join(m.data for m in got[1:])
            assert folded == "The quick brown fox"
        finally:
            await agent.close()
            await late.close()

    async def test_pipelined_appends_keep_order(self, ably_server: EmbeddedServer) -> None:
        """Many appends fired without awaiting each ACK all land, in order (AIT's encoder does this)."""
        agent = python_realtime(ably_server, client_id="agent", transport_params=NO_ROLLUP)
        viewer = python_realtime(ably_server, client_id="viewer")
        try:
            got, listener = collector()
            await viewer.channels.get("stream:pipe").subscribe(listener)
            ch = agent.channels.get("stream:pipe")
            serial = (await ch.publish("reply", "")).serials[0]
            tokens = [f"t{i} " for i in range(40)]
            results = await asyncio.gather(
                *(ch.append_message(Message(serial=serial, data=t)) for t in tokens)
            )
            versions = [r.version_serial for r in results]
            assert versions == sorted(versions) and len(set(versions)) == 40
            await eventually(lambda: len(got) == 41)
            assert "".join(m.data for m in got[1:]) == "".join(tokens)
            latest = await ch.get_message(serial)
            assert latest.data == "".join(tokens)
        finally:
            await agent.close()
            await viewer.close()

    async def test_history_rolls_up_at_original_position(self, ably_server: EmbeddedServer) -> None:
        """History shows an appended message once, where it was created, with the latest content."""
        agent = python_realtime(ably_server, client_id="agent")
        try:
            ch = agent.channels.get("stream:hist")
            first = (await ch.publish("user", "question")).serials[0]
            reply = (await ch.publish("reply", "ans")).serials[0]
            await ch.publish("other", "after")
            last = await ch.append_message(
                Message(serial=reply, data="wer", extras={"ai": {"status": "complete"}}),
                MessageOperation(description="done", metadata={"k": "v"}),
            )
            page = await ch.history(direction="forwards")
            assert [(m.serial, m.action, m.data) for m in page.items] == [
                (first, MessageAction.MESSAGE_CREATE, "question"),
                (reply, MessageAction.MESSAGE_UPDATE, "answer"),
                (page.items[2].serial, MessageAction.MESSAGE_CREATE, "after"),
            ]
            rolled = page.items[1]
            assert rolled.version.serial == last.version_serial
            assert rolled.extras == {"ai": {"status": "complete"}}
            assert rolled.version.description == "done"
            assert rolled.version.metadata == {"k": "v"}
            assert rolled.version.client_id == "agent"
            assert rolled.timestamp == (await ch.get_message(reply)).timestamp
        finally:
            await agent.close()

    async def test_append_to_unknown_serial_is_refused(self, ably_server: EmbeddedServer) -> None:
        """Appending to a serial that does not exist is NACKed with 40400."""
        c = await RawClient.connect(ably_server)
        try:
            await c.publish("x", [{"action": 5, "serial": "00000000000001-000@nope:000", "data": "z"}])
            nack = await c.expect(2)
            assert nack["error"]["code"] == 40400
        finally:
            await c.close()

    async def test_append_type_mismatch_is_refused(self, ably_server: EmbeddedServer) -> None:
        """Appending a string to binary data is NACKed with 40013, the message is unchanged."""
        c = await RawClient.connect(ably_server, fmt="msgpack")
        try:
            await c.publish("mix", [{"data": b"\x01"}])
            serial = (await c.expect(ACK))["res"][0]["serials"][0]
            await c.publish("mix", [{"action": 5, "serial": serial, "data": "text"}])
            assert (await c.expect(2))["error"]["code"] == 40013
        finally:
            await c.close()


class TestUpdateDelete:
    async def test_update_and_delete_are_full_messages(self, ably_server: EmbeddedServer) -> None:
        """Updates and deletes reach subscribers as full messages and show in history and versions."""
        agent = python_realtime(ably_server, client_id="agent")
        try:
            ch = agent.channels.get("mut")
            got, listener = collector()
            await ch.subscribe(listener)
            serial = (await ch.publish(Message(name="n", data="v1", extras={"x": 1}))).serials[0]
            upd = await ch.update_message(Message(serial=serial, data="v2"))
            await eventually(lambda: len(got) == 2)
            assert _view(got[1]) == (MessageAction.MESSAGE_UPDATE, "v2")
            assert got[1].extras == {"x": 1}  # omitted fields carry forward
            assert got[1].name == "n"
            dele = await ch.delete_message(Message(serial=serial))
            await eventually(lambda: len(got) == 3)
            assert got[2].action == MessageAction.MESSAGE_DELETE
            latest = await ch.get_message(serial)
            assert latest.action == MessageAction.MESSAGE_DELETE
            assert latest.version.serial == dele.version_serial
            versions = await ch.get_message_versions(serial)
            assert [v.version.serial for v in versions.items] == [
                serial,
                upd.version_serial,
                dele.version_serial,
            ]
            assert versions.items[0].data == "v1"
        finally:
            await agent.close()

    async def test_rest_update_append_and_get(self, ably_server: EmbeddedServer) -> None:
        """REST publish, PATCH update/append and GET of a single message, as ably-python does them."""
        rest = python_rest(ably_server, client_id="svc")
        viewer = python_realtime(ably_server, client_id="viewer")
        try:
            got, listener = collector()
            await viewer.channels.get("rest-mut").subscribe(listener)
            ch = rest.channels.get("rest-mut")
            serial = (await ch.publish("n", "a")).serials[0]
            appended = await ch.append_message(Message(serial=serial, data="b"))
            updated = await ch.update_message(
                Message(serial=serial, data="final"), MessageOperation(description="d")
            )
            assert appended.version_serial < updated.version_serial
            msg = await ch.get_message(serial)
            assert (msg.action, msg.data, msg.version.description) == (
                MessageAction.MESSAGE_UPDATE,
                "final",
                "d",
            )
            await eventually(lambda: len(got) == 3)
            assert [_view(m) for m in got] == [
                (MessageAction.MESSAGE_CREATE, "a"),
                (MessageAction.MESSAGE_APPEND, "b"),
                (MessageAction.MESSAGE_UPDATE, "final"),
            ]
        finally:
            await rest.close()
            await viewer.close()


class TestExtras:
    async def test_extras_round_trip_verbatim(self, ably_server: EmbeddedServer) -> None:
        """Arbitrary nested extras come back unchanged live and from history."""
        extras = {"ai": {"transport": {"run-id": "r1", "stream": "true"}, "codec": {"k": [1, "2", None]}}}
        agent = python_realtime(ably_server, client_id="agent", use_binary_protocol=False)
        try:
            ch = agent.channels.get("extras")
            got, listener = collector()
            await ch.subscribe(listener)
            await ch.publish(Message(name="n", data="d", extras=extras))
            await eventually(lambda: len(got) == 1)
            assert got[0].extras == extras
            assert (await ch.history()).items[0].extras == extras
        finally:
            await agent.close()

    async def test_ephemeral_is_delivered_not_stored(self, ably_server: EmbeddedServer) -> None:
        """extras.ephemeral messages reach subscribers but never history."""
        agent = python_realtime(ably_server, client_id="agent")
        try:
            ch = agent.channels.get("eph")
            got, listener = collector()
            await ch.subscribe(listener)
            await ch.publish(Message(name="typing", data="...", extras={"ephemeral": True}))
            await ch.publish("kept", "yes")
            await eventually(lambda: len(got) == 2)
            assert [m.name for m in got] == ["typing", "kept"]
            assert [m.name for m in (await ch.history()).items] == ["kept"]
        finally:
            await agent.close()


async def test_frame_level_first_sight_per_attachment(ably_server: EmbeddedServer) -> None:
    """Raw frames: a late attachment gets action 1 with the aggregate, then action 5 deltas."""
    pub = await RawClient.connect(ably_server)
    sub = await RawClient.connect(ably_server, fmt="msgpack")
    try:
        await pub.publish("raw", [{"name": "r", "data": "ab"}])
        serial = (await pub.expect(ACK))["res"][0]["serials"][0]
        await sub.attach("raw")
        for part in ("c", "d"):
            await pub.publish("raw", [{"action": 5, "serial": serial, "data": part}])
            await pub.expect(ACK)
        first = (await sub.expect(MESSAGE))["messages"][0]
        second = (await sub.expect(MESSAGE))["messages"][0]
        assert (first["action"], first["data"], first["serial"]) == (1, "abc", serial)
        assert (second["action"], second["data"]) == (5, "d")
        assert second["version"]["serial"] > first["version"]["serial"]
        assert first["timestamp"] == second["timestamp"]  # create time on every version
    finally:
        await pub.close()
        await sub.close()
