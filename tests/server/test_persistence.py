"""Durability: SQLite (--data-dir) history survives a restart; retention; in-memory forgets."""

from __future__ import annotations

from pathlib import Path

from ably.types.message import Message, MessageAction

from agent_worker.server import EmbeddedServer, Retention, ServerConfig
from agent_worker.server.testing import python_realtime, python_rest
from tests.server.server_support import ACK, MESSAGE, RESUMED, RawClient


async def test_history_survives_restart(tmp_path: Path) -> None:
    """Messages, appends and updates written before a restart read back identically after it."""
    config = ServerConfig(data_dir=tmp_path)
    async with EmbeddedServer(config) as server:
        rt = python_realtime(server, client_id="agent")
        try:
            ch = rt.channels.get("conversations:keep")
            q = (await ch.publish("user", "question")).serials[0]
            r = (await ch.publish("reply", "ans")).serials[0]
            await ch.append_message(Message(serial=r, data="wer"))
            await ch.publish(Message(name="typing", data=".", extras={"ephemeral": True}))
            upd = await ch.update_message(Message(serial=q, data="question (edited)"))
            await ch.publish("bin", b"\x00\xff")
            before = [(m.serial, m.action, m.data, m.version.serial) for m in (await ch.history()).items]
        finally:
            await rt.close()
    assert (tmp_path / "channels.sqlite3").exists()
    async with EmbeddedServer(config) as server:
        rest = python_rest(server)
        try:
            ch = rest.channels.get("conversations:keep")
            after = [(m.serial, m.action, m.data, m.version.serial) for m in (await ch.history()).items]
            assert after == before
            assert [a[2] for a in after] == [b"\x00\xff", "answer", "question (edited)"]
            assert after[1][1] == MessageAction.MESSAGE_UPDATE
            versions = await ch.get_message_versions(q)
            assert [v.version.serial for v in versions.items] == [q, upd.version_serial]
            new = (await ch.publish("later", "x")).serials[0]
            assert new > max(b[0] for b in before), "serials keep increasing across the restart"
        finally:
            await rest.close()


async def test_channel_resume_across_restart(tmp_path: Path) -> None:
    """A channelSerial from before a restart still resumes (RESUMED + replay) with --data-dir."""
    config = ServerConfig(data_dir=tmp_path)
    async with EmbeddedServer(config) as server:
        c = await RawClient.connect(server)
        await c.publish("cont", [{"data": "old"}])
        await c.expect(ACK)
        attached = await c.attach("cont")
        await c.close()
    async with EmbeddedServer(config) as server:
        pub = await RawClient.connect(server)
        await pub.publish("cont", [{"data": "new"}])
        await pub.expect(ACK)
        sub = await RawClient.connect(server)
        try:
            again = await sub.attach("cont", channelSerial=attached["channelSerial"])
            assert again["flags"] & RESUMED
            replay = await sub.expect(MESSAGE)
            assert [m["data"] for m in replay["messages"]] == ["new"]
        finally:
            await sub.close()
            await pub.close()


async def test_in_memory_restart_forgets_and_does_not_resume() -> None:
    """Without --data-dir a restart starts empty and old channelSerials are not resumable."""
    async with EmbeddedServer() as server:
        c = await RawClient.connect(server)
        await c.publish("gone", [{"data": "old"}])
        await c.expect(ACK)
        attached = await c.attach("gone")
        await c.close()
    async with EmbeddedServer() as server:
        sub = await RawClient.connect(server)
        try:
            again = await sub.attach("gone", channelSerial=attached["channelSerial"])
            assert not again["flags"] & RESUMED
            assert server.hub.channel("gone").log.order == []
        finally:
            await sub.close()


async def test_retention_by_count_persists(tmp_path: Path) -> None:
    """Retention(max_messages=3) keeps the newest three, in memory and on disk."""
    config = ServerConfig(data_dir=tmp_path, retention=Retention(max_messages=3))
    async with EmbeddedServer(config) as server:
        c = await RawClient.connect(server)
        first = await c.attach("ret")
        for i in range(5):
            await c.publish("ret", [{"data": f"m{i}"}])
        await c.close()
        assert [r.content["data"] for r in server.hub.channel("ret").log.records.values()] == [
            "m2",
            "m3",
            "m4",
        ]
    async with EmbeddedServer(config) as server:
        rest = python_rest(server)
        try:
            assert [m.data for m in (await rest.channels.get("ret").history()).items] == ["m4", "m3", "m2"]
        finally:
            await rest.close()
        sub = await RawClient.connect(server)
        try:
            again = await sub.attach("ret", channelSerial=first["channelSerial"])
            assert not again["flags"] & RESUMED, "messages after that serial were dropped by retention"
        finally:
            await sub.close()


async def test_retention_by_age(tmp_path: Path) -> None:
    """Retention(max_age_s) drops messages older than the window, on disk too."""
    retention = Retention(max_age_s=60)
    config = ServerConfig(data_dir=tmp_path, retention=retention)
    async with EmbeddedServer(config) as server:
        c = await RawClient.connect(server)
        try:
            for i in range(3):
                await c.publish("age", [{"data": f"m{i}"}])
                await c.expect(ACK)
        finally:
            await c.close()
        log = server.hub.channel("age").log
        assert len(log.order) == 3, "younger than the window: kept"
        assert log.prune(retention, now_ms=server.hub.now_ms() + 61_000) == 3
        assert log.order == []
    async with EmbeddedServer(config) as server:
        assert server.hub.channel("age").log.order == []
