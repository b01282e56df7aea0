"""Which invocations already have a run: ``(session, inputEventId) -> (runId, invocationId)``.

In memory (an LRU of ``limit`` entries) and, with a ``state_dir``, also in a small SQLite file so a
restarted worker still answers a retried POST with the run it started instead of starting a second
one. Entries older than ``ttl_s`` are forgotten (a client retries within seconds, not days).
"""

from __future__ import annotations

import sqlite3
import time
from collections import OrderedDict
from pathlib import Path

__all__ = ["InvocationLog"]

Key = tuple[str, str]


class InvocationLog:
    def __init__(
        self, state_dir: str | Path | None = None, *, limit: int = 10_000, ttl_s: float = 86_400
    ) -> None:
        self._mem: OrderedDict[Key, tuple[str, str]] = OrderedDict()
        self._limit = limit
        self._ttl_s = ttl_s
        self._db: sqlite3.Connection | None = None
        if state_dir is not None:
            path = Path(state_dir)
            path.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path / "invocations.sqlite3", isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS invocations (session TEXT, event_id TEXT, run_id TEXT,"
                " invocation_id TEXT, at REAL, PRIMARY KEY (session, event_id))"
            )
            self._db.execute("DELETE FROM invocations WHERE at < ?", (time.time() - ttl_s,))

    def get(self, key: Key) -> tuple[str, str] | None:
        found = self._mem.get(key)
        if found is not None or self._db is None:
            return found
        row = self._db.execute(
            "SELECT run_id, invocation_id FROM invocations WHERE session = ? AND event_id = ? AND at >= ?",
            (*key, time.time() - self._ttl_s),
        ).fetchone()
        return (str(row[0]), str(row[1])) if row is not None else None

    def put(self, key: Key, run_id: str, invocation_id: str) -> None:
        self._mem[key] = (run_id, invocation_id)
        self._mem.move_to_end(key)
        while len(self._mem) > self._limit:
            self._mem.popitem(last=False)
        if self._db is not None:
            self._db.execute(
                "INSERT OR REPLACE INTO invocations VALUES (?, ?, ?, ?, ?)",
                (*key, run_id, invocation_id, time.time()),
            )

    def forget(self, key: Key) -> None:
        """A failed invocation (its input was never found, or refused): a retry starts a new run."""
        self._mem.pop(key, None)
        if self._db is not None:
            self._db.execute("DELETE FROM invocations WHERE session = ? AND event_id = ?", key)

    def __contains__(self, key: Key) -> bool:
        return self.get(key) is not None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
