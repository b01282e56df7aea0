"""The worker's presence yields to its runs: one enter that already says what the run is doing,
and presence messages wait while the connection's rate budget is short (no timing asserted)."""

from __future__ import annotations

import asyncio
from typing import Any

from agent_worker.transport.ratelimit import RateLimiter
from agent_worker.worker.presence import SessionPresence


class _Channel:
    name = "conversations:presence"

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter
        self.sent: list[tuple[str, Any]] = []
        self.changed = asyncio.Event()

    async def presence_enter(self, data: Any) -> None:
        await self.limiter.acquire()
        self.sent.append(("enter", dict(data)))
        self.changed.set()

    async def presence_update(self, data: Any) -> None:
        await self.limiter.acquire()
        self.sent.append(("update", dict(data)))
        self.changed.set()

    async def presence_leave(self) -> None:
        self.sent.append(("leave", None))


async def _until_sent(channel: _Channel, n: int) -> None:
    async with asyncio.timeout(10):
        while len(channel.sent) < n:
            channel.changed.clear()
            await channel.changed.wait()


async def test_the_first_enter_carries_the_run_status_set_meanwhile() -> None:
    """A session opened for an invocation: its run goes thinking → streaming before the enter is
    due; one enter says "streaming" (not enter idle + update thinking + update streaming)."""
    channel = _Channel(RateLimiter(45.0, 10))
    presence = SessionPresence(channel, enter_delay_s=0.05)  # type: ignore[arg-type]
    presence.start()
    presence.set("run-1", "thinking")
    presence.set("run-1", "streaming")
    await _until_sent(channel, 1)
    await asyncio.sleep(0.1)  # nothing else is pending: no update follows
    assert channel.sent == [("enter", {"status": "streaming", "runId": "run-1"})]
    await presence.close()
    assert channel.sent[-1] == ("leave", None)


async def test_presence_waits_for_the_runs_rate_budget() -> None:
    """While the runs have drained the connection's budget below ``spare_tokens``, presence waits
    for it to refill rather than taking the token a run needs next."""
    limiter = RateLimiter(20.0, 10)
    channel = _Channel(limiter)
    presence = SessionPresence(channel, enter_delay_s=0.0, spare_tokens=5.0)  # type: ignore[arg-type]
    for _ in range(10):  # the runs took the whole burst
        await limiter.acquire()
    assert limiter.available() < 1
    presence.start()
    await _until_sent(channel, 1)
    # Presence went out only once the bucket had refilled to the spare tokens (then took one).
    assert limiter.available() >= 5.0 - 1.0 - 0.5
    await presence.close()
