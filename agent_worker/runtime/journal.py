"""The crash journal of a local worker: what a run has open on the wire, in SQLite.

A run lives in one process's memory; if the process dies (SIGKILL, OOM, a lost node) its streams
stay ``streaming`` and its run never ends on every device. So while a run is active the worker keeps
here what a successor needs to close it: the run's lifecycle identity, each open stream's serial and
opening headers, each open step's ``ai-step-end``. Rows appear before the matching publish and go
once the closing publish is ACKed, so a crash at any point leaves at worst one redundant close.

:func:`close_orphans` ends what a previous process left open: a ``cancelled`` closing append per
stream, ``ai-step-end`` per step, then ``ai-run-end`` with an error — before the worker serves again.
One process owns a journal (an exclusive ``flock`` on ``worker.lock``); a second local worker on the
same state dir refuses to start. A fleet shares no journal: it uses the Temporal engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import fcntl
import hashlib
import json
import os
import re
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from agent_worker.errors import AgentWorkerError, ConfigError
from agent_worker.logs import get_logger
from agent_worker.protocol.headers import AI_RUN_END, H_STATUS, build_lifecycle_headers, lifecycle_message
from agent_worker.protocol.wire import OutboundMessage

__all__ = [
    "ERROR_WORKER_RESTARTED",
    "JournalChannels",
    "OpenRun",
    "RunJournal",
    "RunRecorder",
    "close_orphans",
    "closing_append",
    "default_state_dir",
]

log = get_logger("agent_worker.runtime.journal")

ERROR_WORKER_RESTARTED = 104008
"""The ``error-code`` of a run a dead process left open (AIT's "run ended abnormally")."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    invocation_id TEXT PRIMARY KEY,
    session TEXT NOT NULL,
    run_id TEXT NOT NULL,
    owner TEXT,
    lifecycle TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS open_messages (
    invocation_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    serial TEXT NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (invocation_id, kind, key)
);
"""


def default_state_dir(scope: str) -> Path:
    """The per-user state dir (``$XDG_STATE_HOME``, else ``~/.local/state``) for one Ably service:
    ``scope`` (its endpoint, or the embedded server's data dir) picks the subdirectory, so workers
    against different services never share a journal."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    slug = re.sub(r"[^A-Za-z0-9.-]+", "_", scope).strip("_")[:40] or "default"
    digest = hashlib.sha256(scope.encode()).hexdigest()[:8]
    return Path(base) / "agent-worker" / f"{slug}-{digest}"


def _encode(msg: OutboundMessage) -> str:
    return json.dumps({"name": msg.name, "data": msg.data, "extras": msg.extras})


def _decode(text: str) -> OutboundMessage:
    raw = json.loads(text)
    return OutboundMessage(name=raw["name"], data=raw["data"], extras=raw["extras"])


def closing_append(opening: OutboundMessage) -> OutboundMessage:
    """The ``cancelled`` closing append of a stream, from the headers of its opening publish (as the
    encoder's ``cancel_open_streams`` builds it: the stream's headers, status cancelled, no data)."""
    extras = copy.deepcopy(dict(opening.extras or {}))
    extras.setdefault("ai", {}).setdefault("transport", {})[H_STATUS] = "cancelled"
    return OutboundMessage(name=None, data="", extras=extras)


@dataclass(slots=True)
class OpenRun:
    """A journaled run: what it takes to end it."""

    invocation_id: str
    session: str
    run_id: str
    owner: str | None
    lifecycle: dict[str, Any]
    streams: list[tuple[str, OutboundMessage]] = field(default_factory=list)
    """``(serial, opening message)`` of each stream still open."""
    steps: list[OutboundMessage] = field(default_factory=list)
    """The ``ai-step-end`` of each step still open."""

    def run_end(self, message: str) -> OutboundMessage:
        headers = build_lifecycle_headers(
            **self.lifecycle, reason="error", error_code=ERROR_WORKER_RESTARTED, error_message=message
        )
        return lifecycle_message(AI_RUN_END, headers)


class RunJournal:
    """One process's journal under ``state_dir`` (exclusively locked while open)."""

    def __init__(self, state_dir: Path | str) -> None:
        self.state_dir = Path(state_dir)
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            msg = f"unable to create the state dir {self.state_dir}: {exc.strerror}"
            raise ConfigError(msg) from None
        self._lock: IO[str] | None = self._acquire_lock()
        self._db = sqlite3.connect(self.state_dir / "journal.sqlite3", isolation_level=None)
        # WAL + NORMAL: every committed row survives the process dying (not a power loss), cheaply.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def _acquire_lock(self) -> IO[str]:
        path = self.state_dir / "worker.lock"
        handle = path.open("a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            msg = (
                f"another agent-worker process (pid {holder}) is using the state dir {self.state_dir}; "
                "a local worker owns its state dir alone: give this one another --state-dir, or run a "
                'fleet with the Temporal engine ([engine] kind = "temporal")'
            )
            raise ConfigError(msg) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        return handle

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    # --- what a run reports ------------------------------------------------------------------------

    def run_opened(self, invocation_id: str, session: str, run_id: str, owner: str | None,
                   lifecycle: Mapping[str, Any]) -> None:  # fmt: skip
        self._db.execute(
            "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?)",
            (invocation_id, session, run_id, owner, json.dumps(dict(lifecycle))),
        )

    def run_closed(self, invocation_id: str) -> None:
        with self._db:
            self._db.execute("DELETE FROM open_messages WHERE invocation_id = ?", (invocation_id,))
            self._db.execute("DELETE FROM runs WHERE invocation_id = ?", (invocation_id,))

    def message_opened(
        self, invocation_id: str, kind: str, key: str, serial: str, msg: OutboundMessage
    ) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO open_messages VALUES (?, ?, ?, ?, ?)",
            (invocation_id, kind, key, serial, _encode(msg)),
        )

    def message_closed(self, invocation_id: str, kind: str, key: str) -> None:
        self._db.execute(
            "DELETE FROM open_messages WHERE invocation_id = ? AND kind = ? AND key = ?",
            (invocation_id, kind, key),
        )

    # --- what a successor reads --------------------------------------------------------------------

    def open_runs(self) -> list[OpenRun]:
        runs = {
            row[0]: OpenRun(row[0], row[1], row[2], row[3], json.loads(row[4]))
            for row in self._db.execute("SELECT invocation_id, session, run_id, owner, lifecycle FROM runs")
        }
        rows = self._db.execute(
            "SELECT invocation_id, kind, serial, message FROM open_messages ORDER BY rowid"
        )
        for invocation_id, kind, serial, message in rows:
            run = runs.get(invocation_id)
            if run is None:
                continue
            if kind == "stream":
                run.streams.append((serial, _decode(message)))
            else:
                run.steps.append(_decode(message))
        return list(runs.values())


class RunRecorder:
    """The journal as one run sees it (``Run.journal``): every call is keyed by its invocation id.
    Journal failures are logged, never raised: a full disk must not fail a user's reply."""

    def __init__(self, journal: RunJournal, invocation_id: str) -> None:
        self._journal = journal
        self._id = invocation_id

    def _safe(self, what: str, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except sqlite3.Error as exc:
            log.error("journal_write_failed", what=what, error=str(exc))

    def run_opened(self, session: str, run_id: str, owner: str | None, lifecycle: Mapping[str, Any]) -> None:
        self._safe("run", self._journal.run_opened, self._id, session, run_id, owner, lifecycle)

    def run_closed(self) -> None:
        self._safe("run", self._journal.run_closed, self._id)

    def opened(self, kind: str, key: str, serial: str, msg: OutboundMessage) -> None:
        self._safe(kind, self._journal.message_opened, self._id, kind, key, serial, msg)

    def closed(self, kind: str, key: str) -> None:
        self._safe(kind, self._journal.message_closed, self._id, kind, key)


class JournalChannels(Protocol):
    """What closing needs from the transport: a channel to publish and append on."""

    def channel(self, name: str) -> Any: ...


async def close_orphans(
    journal: RunJournal,
    transport: JournalChannels,
    message: str,
    *,
    skip: frozenset[str] = frozenset(),
    timeout_s: float = 10.0,
) -> tuple[int, int]:
    """End every journaled run not in ``skip`` (invocation ids of runs this process is driving).

    Returns ``(closed, failed)``; a run whose close failed stays journaled for the next attempt."""
    closed = failed = 0
    orphans = [r for r in journal.open_runs() if r.invocation_id not in skip]
    if not orphans:
        return 0, 0

    async def close_one(run: OpenRun) -> None:
        nonlocal closed, failed
        channel = transport.channel(run.session)
        try:
            for serial, opening in run.streams:
                await channel.append(serial, closing_append(opening))
            for step_end in run.steps:
                await channel.publish(step_end)
            await channel.publish(run.run_end(message))
        except (AgentWorkerError, OSError) as exc:
            failed += 1
            log.warning("orphan_run_close_failed", run_id=run.run_id, session=run.session, error=str(exc))
            return
        journal.run_closed(run.invocation_id)
        closed += 1
        log.warning(
            "orphan_run_closed",
            run_id=run.run_id,
            session=run.session,
            owner=run.owner,
            streams=len(run.streams),
        )

    try:
        async with asyncio.timeout(timeout_s):
            await asyncio.gather(*(close_one(r) for r in orphans))
    except TimeoutError:
        failed = len(orphans) - closed
        log.error("orphan_runs_close_timeout", closed=closed, pending=failed, timeout_s=timeout_s)
    return closed, failed
