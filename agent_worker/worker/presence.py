"""The worker's presence on each session it serves: ``{status: idle|thinking|streaming|tool, runId}``.

AIT defines no presence format (spec §12); this follows the AIT docs' convention so a client can
show "the agent is typing". Updates are serialised per session in a background task and coalesced
(only the newest state is sent), so a run never waits for presence and a burst of status changes
costs one message. Failures are logged and otherwise ignored: presence is cosmetic.
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
    def __init__(self, channel: Channel) -> None:
        self.channel = channel
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

    async def _pump(self) -> None:
        last: dict[str, str | None] | None = None
        while not self._closed:
            await self._wake.wait()
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
