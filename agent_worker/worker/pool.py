"""The session pool: one attached :class:`AgentSession` (and its presence) per channel in use.

Sessions are created on first use (one lock per name, so concurrent invocations share one attach),
released after ``session_idle_s`` without runs (watched channels stay), and closed on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from agent_worker.errors import AgentWorkerError
from agent_worker.logs import get_logger
from agent_worker.runtime.session import AgentSession
from agent_worker.transport.ably import AblyTransport
from agent_worker.worker.presence import AgentStatus, SessionPresence

__all__ = ["SessionPool"]

log = get_logger("agent_worker.worker.pool")


class SessionPool:
    def __init__(
        self,
        transport: AblyTransport,
        make_session: Callable[[Any], AgentSession],
        *,
        presence: bool = True,
        idle_s: float = 300.0,
        start_grace_s: float = 0.25,
    ) -> None:
        self.transport = transport
        self._make_session = make_session
        self.presence_enabled = presence
        self.idle_s = idle_s
        self.sessions: dict[str, AgentSession] = {}
        self._presence: dict[str, SessionPresence] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._starting: set[str] = set()
        self.start_grace_s = start_grace_s
        """A start reported streaming (the model's first text) still counts this long: its first
        append follows a round trip or two later (the opening batch's, the stream's create)."""
        self._grace: dict[str, asyncio.TimerHandle] = {}
        self.starts_quiet = asyncio.Event()
        """Set while at most one session is starting (asked for, its run not yet streaming or
        done): presence waits for it, so a burst of starts sends its first tokens first."""
        self.starts_quiet.set()

    def __len__(self) -> int:
        return len(self.sessions)

    async def get(self, name: str, *, starting: bool = False) -> AgentSession:
        """The (attached) session for a channel, created on first use. ``starting``: for a run about
        to start (it counts against :attr:`starts_quiet` until its status leaves ``thinking``)."""
        if not starting:
            return await self._get(name)
        self._mark_starting(name)
        try:
            return await self._get(name)
        except BaseException:
            self._started(name)
            raise

    async def _get(self, name: str) -> AgentSession:
        existing = self.sessions.get(name)
        if existing is not None and not existing.stale:
            return existing
        async with self._locks.setdefault(name, asyncio.Lock()):
            existing = self.sessions.get(name)
            watch = False
            if existing is not None and existing.stale and existing.idle:
                # Its channel lost continuity, or its own messages could not all be folded (echo
                # off, transport/local.py): a new session re-reads the channel's history, now that
                # none of its runs is in flight — on the same attachment when it is attached (the
                # agent stays present), else from a fresh attach.
                if existing.channel.state == "attached":
                    log.info("session_rebuilt", session=name, attach="kept")
                    return await self._hand_over(existing)
                log.info("session_rebuilt", session=name, attach="fresh")
                watch, starting = existing.watch, name in self._starting
                await self._release(name)
                await self.transport.release(name)
                if starting:
                    self._mark_starting(name)
                existing = None
            if existing is not None:
                return existing
            session = self._make_session(await self.transport.open_channel(name))
            session.watch = watch
            await session.connect()
            self.sessions[name] = session
            if self.presence_enabled:
                presence = SessionPresence(session.channel, starts_quiet=self.starts_quiet)
                self._presence[name] = presence
                presence.start()
            return session

    async def _hand_over(self, stale: AgentSession) -> AgentSession:
        """Replace a stale session on its still-attached channel: the new one subscribes (no
        re-attach) and folds the channel's history from the newest message down. The channel is
        not detached, so the agent's presence membership (and its SessionPresence) carries over:
        clients see no leave and re-enter around the rebuild."""
        name = stale.name
        del self.sessions[name]
        await stale.close(detach=False)
        # An append gap left open (the stale session's doubt) is in the new fold as history has it.
        stale.channel.local_gaps.clear()
        session = self._make_session(stale.channel)
        session.watch = stale.watch
        session.history_until_attach = False
        try:
            await session.connect()
        except BaseException:
            await self._release(name)  # its presence too: the next use starts from scratch
            await self.transport.release(name)
            raise
        self.sessions[name] = session
        return session

    def _mark_starting(self, name: str) -> None:
        pending = self._grace.pop(name, None)
        if pending is not None:  # a new start on this session: the last one's grace no longer ends it
            pending.cancel()
        self._starting.add(name)
        if len(self._starting) > 1:
            self.starts_quiet.clear()

    def _started(self, name: str) -> None:
        pending = self._grace.pop(name, None)
        if pending is not None:
            pending.cancel()
        self._starting.discard(name)
        if len(self._starting) <= 1:
            self.starts_quiet.set()

    def set_status(self, session: str, run_id: str, status: AgentStatus) -> None:
        if status == "idle":  # done: this start is over
            self._started(session)
        elif status != "thinking" and session in self._starting and session not in self._grace:
            # Streaming or a tool call: the model has answered, but the message's first append
            # leaves a round trip or two later. Counted until then, presence (a frame, its ACK and
            # its echo each) stays out of the window where a burst's last first appends go.
            if self.start_grace_s > 0:
                loop = asyncio.get_running_loop()
                self._grace[session] = loop.call_later(self.start_grace_s, self._started, session)
            else:
                self._started(session)
        if status == "idle":  # the run is over: its connection's reservation for it is not needed
            self.transport.pool.settle(session)
        presence = self._presence.get(session)
        if presence is not None:
            presence.set(run_id, status)

    def start_reaper(self) -> None:
        self._reaper = asyncio.create_task(self._reap_idle())

    async def _release(self, name: str) -> None:
        self._started(name)
        session = self.sessions.pop(name, None)
        presence = self._presence.pop(name, None)
        if presence is not None:
            await presence.close()
        if session is not None:
            with contextlib.suppress(AgentWorkerError):
                await session.close()

    async def _reap_idle(self) -> None:
        interval = max(1.0, min(30.0, self.idle_s / 4))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for name, session in list(self.sessions.items()):
                if session.watch or not session.idle or now - session.last_active < self.idle_s:
                    continue
                log.info("session_released", session=name)
                await self._release(name)
                await self.transport.release(name)

    async def close(self) -> None:
        """Stop the reaper, leave presence and detach every session."""
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for presence in list(self._presence.values()):
            await presence.close()
        self._presence.clear()
        for name in list(self.sessions):
            await self._release(name)
