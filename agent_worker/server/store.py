"""Persistence of channel logs: nothing (in memory) or SQLite in WAL mode.

The in-memory :class:`~agent_worker.server.log.ChannelLog` stays authoritative; the SQLite store is a
write-through journal of message versions, replayed into a fresh log when a channel is first used
after a restart. Writes are single-row autocommit INSERTs with ``synchronous=NORMAL`` (no fsync
per commit in WAL mode), short enough to run on the event loop; a commit survives a process crash.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack

from agent_worker.server.log import CREATE, ChannelLog, LogSink, MessageRecord, Version, new_series

__all__ = ["MemoryStore", "SQLiteStore", "Store"]


class Store(LogSink):
    """Where channel logs live. The base class keeps nothing (memory only)."""

    #: Whether a log can be dropped from memory and reopened later with its history.
    persistent = False

    def open_channel(self, name: str) -> ChannelLog:
        return ChannelLog(name, sink=self)

    def add_version(self, channel: str, record: MessageRecord, index: int) -> None:
        return None

    def remove_messages(self, channel: str, serials: Sequence[str], horizon: str | None) -> None:
        return None

    def close(self) -> None:
        return None


class MemoryStore(Store):
    pass


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def _unpack(blob: bytes | None) -> Any:
    if not blob:
        return {}
    return msgpack.unpackb(blob, raw=False, strict_map_key=False)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS channels (name TEXT PRIMARY KEY, series TEXT NOT NULL, horizon TEXT);
CREATE TABLE IF NOT EXISTS versions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    channel TEXT NOT NULL,
    message_serial TEXT NOT NULL,
    serial TEXT NOT NULL,
    channel_serial TEXT NOT NULL,
    action INTEGER NOT NULL,
    timestamp INTEGER NOT NULL,
    fields BLOB,
    op BLOB,
    connection_id TEXT,
    meta BLOB
);
CREATE INDEX IF NOT EXISTS versions_by_channel ON versions (channel, seq);
CREATE INDEX IF NOT EXISTS versions_by_message ON versions (channel, message_serial);
"""


class SQLiteStore(Store):
    persistent = True

    def __init__(self, data_dir: str | Path) -> None:
        path = Path(data_dir)
        path.mkdir(parents=True, exist_ok=True)
        self.path = path / "channels.sqlite3"
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._known: set[str] = set()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(channels)")}
        if "horizon" not in columns:  # databases from before retention horizons were stored
            self._db.execute("ALTER TABLE channels ADD COLUMN horizon TEXT")

    def __repr__(self) -> str:
        return f"SQLiteStore(path={str(self.path)!r})"

    def open_channel(self, name: str) -> ChannelLog:
        row = self._db.execute("SELECT series, horizon FROM channels WHERE name = ?", (name,)).fetchone()
        if row is None:
            # The row is written with the first message, so reads of unknown channels write nothing.
            return ChannelLog(name, series=new_series(), sink=self)
        self._known.add(name)
        log = ChannelLog(name, series=row[0], sink=self)
        log.horizon = row[1]
        cur = self._db.execute(
            "SELECT message_serial, serial, channel_serial, action, timestamp, fields, op, connection_id, "
            "meta FROM versions WHERE channel = ? ORDER BY seq",
            (name,),
        )
        for msg_serial, serial, cs, action, ts, fields, op, conn_id, meta in cur:
            meta_d = _unpack(meta)
            meta_d["messageSerial"] = msg_serial
            version = Version(serial, cs, action, ts, _unpack(fields), _unpack(op), conn_id)
            log.restore(meta_d, version)
        log.finish_restore()
        return log

    def add_version(self, channel: str, record: MessageRecord, index: int) -> None:
        if channel not in self._known:
            series = record.serial.split("@", 1)[1].split(":", 1)[0]
            self._db.execute("INSERT OR IGNORE INTO channels (name, series) VALUES (?, ?)", (channel, series))
            self._known.add(channel)
        v = record.versions[index]
        meta = (
            {"id": record.id, "clientId": record.client_id, "connectionId": record.connection_id}
            if v.action == CREATE
            else {}
        )
        self._db.execute(
            "INSERT INTO versions (channel, message_serial, serial, channel_serial, action, timestamp, "
            "fields, op, connection_id, meta) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                channel,
                record.serial,
                v.serial,
                v.channel_serial,
                v.action,
                v.timestamp,
                _pack(v.fields),
                _pack(v.op),
                v.connection_id,
                _pack(meta),
            ),
        )

    def remove_messages(self, channel: str, serials: Sequence[str], horizon: str | None) -> None:
        self._db.execute("BEGIN")
        try:
            self._db.execute("UPDATE channels SET horizon = ? WHERE name = ?", (horizon, channel))
            self._db.executemany(
                "DELETE FROM versions WHERE channel = ? AND message_serial = ?",
                [(channel, s) for s in serials],
            )
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._db.close()
