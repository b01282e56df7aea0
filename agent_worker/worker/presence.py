"""The worker's presence on each session it serves: ``{status: idle|thinking|streaming|tool, runId}``.

AIT defines no presence format (spec §12); this follows the AIT docs' convention so a client can
show "the agent is typing". Updates are serialised per session in a background task and coalesced
(only the newest state is sent), so a run never waits for presence and a burst of status changes
costs one message. Failures are logged and otherwise ignored: presence is cosmetic.

Presence also yields to the runs' own messages on the connection's rate budget (Ably's 50 inbound
messages/s per connection counts presence too): the first enter waits ``enter_delay_s`` (a session
is usually opened by an invocation, whose run turns ``thinking`` then ``streaming`` within that
time: one enter says it, instead of enter + two updates), and each presence message waits, up to
``max_defer_s``, until the connection's limiter has ``spare_tokens`` left — so when sessions start
in a burst their run-starts and first tokens go out first. And while other conversations are
starting (``starts_quiet`` not set: more than one session between its invocation and its first
output), presence waits for them too, within the same ``max_defer_s``: a presence message costs the
worker's loop a frame and an ACK like any other, and in a burst of starts every one of them delays
somebody's first token.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Literal

from agent_worker.errors import TransportError
from agent_worker.logs import get_logger
from agent_worker.transport.ably import Channel

__all__ = ["AgentStatus", "SessionPresence"]

log = get_logger("agent_worker.worker.presence")

AgentStatus = Literal["idle", "thinking", "streaming", "tool"]
_RANK: dict[str, int] = {"idle": 0, "thinking": 1, "tool": 2, "streaming": 3}


class SessionPresence:
    def __init__(
        self,
        channel: Channel,
        *,
        enter_delay_s: float = 0.25,
        spare_tokens: float = 3.0,
        max_defer_s: float = 2.0,
        starts_quiet: asyncio.Event | None = None,
    ) -> None:
        self.channel = channel
        self.starts_quiet = starts_quiet
        self.enter_delay_s = enter_delay_s
        self.spare_tokens = spare_tokens
        self.max_defer_s = max_defer_s
        self._runs: dict[str, AgentStatus] = {}
        self._order: list[str] = []
        self._entered = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._pump())
            self._wake.set()

    def set(self, run_id: str, status: AgentStatus) -> None:
        if status == "idle":
            self._runs.pop(run_id, None)
            if run_id in self._order:
                self._order.remove(run_id)
        else:
            if run_id not in self._runs:
                self._order.append(run_id)
            self._runs[run_id] = status
        self._wake.set()

    def current(self) -> dict[str, str | None]:
        """The state to show: the most recent run's status (idle with no run when none is active)."""
        if not self._order:
            return {"status": "idle", "runId": None}
        run_id = self._order[-1]
        return {"status": self._runs[run_id], "runId": run_id}

    async def _yield_to_runs(self) -> None:
        """Wait (bounded) until the connection's rate budget has room beyond the runs' needs."""
        limiter = self.channel.limiter
        spare = min(self.spare_tokens, limiter.burst / 2)  # a small bucket never holds 3
        loop = asyncio.get_running_loop()
        until = loop.time() + self.max_defer_s
        quiet = self.starts_quiet
        if quiet is not None and not quiet.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(quiet.wait(), self.max_defer_s)
        while True:
            short = spare - limiter.available()
            if short <= 0 or loop.time() >= until:
                return
            await asyncio.sleep(max(0.01, short / limiter.rate))

    async def _pump(self) -> None:
        last: dict[str, str | None] | None = None
        if self.enter_delay_s > 0:
            await asyncio.sleep(self.enter_delay_s)
        while not self._closed:
            await self._wake.wait()
            await self._yield_to_runs()
            self._wake.clear()
            state = self.current()
            if state == last:
                continue
            try:
                if not self._entered:
                    await self.channel.presence_enter(state)
                    self._entered = True
                else:
                    await self.channel.presence_update(state)
                last = state
            except TransportError as exc:
                log.warning("presence_update_failed", session=self.channel.name, error=exc.message)

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._entered:
            with contextlib.suppress(TransportError, TimeoutError):
                await asyncio.wait_for(self.channel.presence_leave(), 5)
            self._entered = False
