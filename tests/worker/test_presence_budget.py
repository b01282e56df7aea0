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


def _started(*, max_defer_s: float, starts_quiet: asyncio.Event) -> tuple[_Channel, SessionPresence]:
    channel = _Channel(RateLimiter(45.0, 10))
    presence = SessionPresence(
        channel,  # type: ignore[arg-type]
        enter_delay_s=0.0,
        max_defer_s=max_defer_s,
        starts_quiet=starts_quiet,
    )
    presence.start()
    return channel, presence


async def test_presence_waits_while_other_conversations_start() -> None:
    """A burst of starts: presence waits (within ``max_defer_s``) until the others' runs are
    streaming, so their first tokens are not queued behind presence messages."""
    quiet = asyncio.Event()  # cleared: other sessions are between their invocation and first output
    channel, presence = _started(max_defer_s=60.0, starts_quiet=quiet)
    presence.set("run-1", "thinking")
    for _ in range(20):
        await asyncio.sleep(0)
    assert channel.sent == []  # still waiting for the others
    quiet.set()
    await _until_sent(channel, 1)
    assert channel.sent == [("enter", {"status": "thinking", "runId": "run-1"})]
    await presence.close()


async def test_presence_waits_for_starts_no_longer_than_max_defer() -> None:
    channel, presence = _started(max_defer_s=0.05, starts_quiet=asyncio.Event())  # never quiet
    await _until_sent(channel, 1)  # went out although the starts never went quiet
    assert channel.sent[0][0] == "enter"
    await presence.close()


class _Session:
    stale = False

    def __init__(self, channel: Any) -> None:
        self.channel = channel

    async def connect(self) -> None:
        await asyncio.sleep(0)


class _Pool:
    def __init__(self) -> None:
        self.settled: list[str] = []

    def settle(self, name: str) -> None:
        self.settled.append(name)


class _Transport:
    def __init__(self) -> None:
        self.pool = _Pool()

    async def open_channel(self, name: str) -> str:
        return name


async def test_the_session_pool_says_when_starts_are_quiet() -> None:
    """One conversation starting alone is quiet (its own presence never waits); a second one
    starting at the same time is not, until one of them is streaming or done (or failed to open)."""
    from agent_worker.worker.pool import SessionPool  # noqa: PLC0415

    pool = SessionPool(_Transport(), _Session, presence=False, start_grace_s=0)  # type: ignore[arg-type]
    await pool.get("a", starting=True)
    assert pool.starts_quiet.is_set()
    await pool.get("b", starting=True)
    await pool.get("c")  # not for a run (e.g. a watched channel): does not count
    assert not pool.starts_quiet.is_set()
    pool.set_status("a", "run-a", "thinking")
    assert not pool.starts_quiet.is_set()
    pool.set_status("a", "run-a", "streaming")
    assert pool.starts_quiet.is_set()
    await pool.get("d", starting=True)
    assert not pool.starts_quiet.is_set()
    assert pool.transport.pool.settled == []  # type: ignore[attr-defined]
    pool.set_status("d", "run-d", "idle")  # a run that ended (or was refused) before any output
    assert pool.starts_quiet.is_set()
    # and its connection no longer holds a reservation for it (transport/pool.py)
    assert pool.transport.pool.settled == ["d"]  # type: ignore[attr-defined]


async def test_a_streaming_start_counts_until_its_first_append_can_have_left() -> None:
    """``streaming`` is reported at the model's first text, a round trip or two before the message's
    first append: the start still counts for ``start_grace_s`` (presence stays out of the burst's
    window); a run that is over (idle) ends it at once; a new start on the same session before the
    grace ends is not ended by the old grace."""
    from agent_worker.worker.pool import SessionPool  # noqa: PLC0415

    pool = SessionPool(_Transport(), _Session, presence=False, start_grace_s=0.05)  # type: ignore[arg-type]
    await pool.get("a", starting=True)
    await pool.get("b", starting=True)
    pool.set_status("a", "run-a", "streaming")
    assert not pool.starts_quiet.is_set()  # "a" is in its grace, "b" starting
    await asyncio.wait_for(pool.starts_quiet.wait(), 5)  # the grace ran out: only "b" is starting
    await pool.get("a", starting=True)
    assert not pool.starts_quiet.is_set()
    pool.set_status("a", "run-a2", "streaming")  # in its grace...
    await pool.get("a", starting=True)  # ...when a new start on "a" comes
    await asyncio.sleep(0.15)  # well past that grace: it was cancelled, "a" and "b" still start
    assert not pool.starts_quiet.is_set()
    pool.set_status("b", "run-b", "idle")  # over: ended at once, no grace
    assert pool.starts_quiet.is_set()  # only "a" left
