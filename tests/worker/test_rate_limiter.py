"""The per-connection token bucket (transport/ratelimit.py): urgent waiters before deferrable ones,
arrival order within each class, no deferrable waiter passed over beyond its bound, and the rate
never exceeded on the limiter's own clock. Only orderings and counts are asserted, no durations."""

from __future__ import annotations

import asyncio
import time

import pytest

from agent_worker.protocol.wire import AppendOp, OutboundMessage, PublishOp, UpdateOp
from agent_worker.runtime.streaming import StreamWriter
from agent_worker.transport.ratelimit import RateLimiter


class _Recording(RateLimiter):
    """Records, for each token taken, the limiter's own clock reading when it took it."""

    def __init__(self, *args: float, **kwargs: float) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.taken: list[float] = []

    def _take(self) -> None:
        super()._take()
        self.taken.append(self._updated)

    def _give_back(self) -> None:
        super()._give_back()
        self.taken.pop()


def _drain(limiter: RateLimiter) -> None:
    """Take every saved-up token, so the next acquisitions queue."""
    while limiter.try_acquire():
        pass


async def _acquire(limiter: RateLimiter, order: list[str], name: str, *, defer: bool = False) -> None:
    await limiter.acquire(defer=defer)
    order.append(name)


async def test_an_urgent_waiter_goes_before_deferrable_ones_that_came_first() -> None:
    limiter = RateLimiter(200.0, 2, max_defer_s=3600.0)  # a bound no test run reaches
    _drain(limiter)
    order: list[str] = []
    tasks = [asyncio.create_task(_acquire(limiter, order, f"append-{i}", defer=True)) for i in range(3)]
    await asyncio.sleep(0)  # the appends are queued first
    tasks += [asyncio.create_task(_acquire(limiter, order, name)) for name in ("run-start", "create")]
    async with asyncio.timeout(10):
        await asyncio.gather(*tasks)
    assert order == ["run-start", "create", "append-0", "append-1", "append-2"]
    assert limiter.overtaken == 2


async def test_waiters_of_one_class_are_served_in_arrival_order() -> None:
    limiter = RateLimiter(200.0, 1)
    _drain(limiter)
    order: list[str] = []
    tasks = []
    for i in range(6):
        tasks.append(asyncio.create_task(_acquire(limiter, order, f"u{i}")))
        tasks.append(asyncio.create_task(_acquire(limiter, order, f"d{i}", defer=True)))
    async with asyncio.timeout(10):
        await asyncio.gather(*tasks)
    assert [n for n in order if n[0] == "u"] == [f"u{i}" for i in range(6)]
    assert [n for n in order if n[0] == "d"] == [f"d{i}" for i in range(6)]


async def test_with_no_bound_left_a_deferrable_waiter_keeps_its_place_in_line() -> None:
    """``max_defer_s = 0``: a deferrable waiter is overdue at once, so the bucket is plain FIFO."""
    limiter = RateLimiter(200.0, 1, max_defer_s=0.0)
    _drain(limiter)
    order: list[str] = []
    tasks = [asyncio.create_task(_acquire(limiter, order, "append", defer=True))]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(_acquire(limiter, order, "run-start")))
    async with asyncio.timeout(10):
        await asyncio.gather(*tasks)
    assert order == ["append", "run-start"]


async def test_a_passed_over_deferrable_waiter_is_not_starved() -> None:
    """Urgent waiters keep coming (a new one each time one is served, so the urgent line never
    empties): the deferrable one is passed over, then, once past its bound, goes before those that
    came after it (without the bound this test times out)."""
    limiter = RateLimiter(200.0, 1, max_defer_s=0.2)
    _drain(limiter)
    order: list[str] = []
    deferred = asyncio.create_task(_acquire(limiter, order, "append", defer=True))
    await asyncio.sleep(0)

    async def urgent_stream() -> None:
        tasks = {
            asyncio.create_task(_acquire(limiter, order, "u0")),
            asyncio.create_task(_acquire(limiter, order, "u1")),
        }
        n = 2
        while not deferred.done():
            done, tasks = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for _ in done:
                tasks.add(asyncio.create_task(_acquire(limiter, order, f"u{n}")))
                n += 1
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async with asyncio.timeout(30):
        await asyncio.gather(deferred, urgent_stream())
    assert order.index("append") >= 1  # passed over first
    assert limiter.overtaken >= 1


async def test_the_rate_is_never_exceeded_over_any_window() -> None:
    """Mixed urgent and deferrable acquisitions, some cancelled: on the limiter's own clock, any
    k consecutive tokens span at least (k - burst) / rate seconds — no 1-s window above rate + burst."""
    rate, burst = 400.0, 5
    limiter = _Recording(rate, burst, max_defer_s=0.01)
    tasks = []
    for i in range(150):
        tasks.append(asyncio.create_task(limiter.acquire(defer=i % 3 != 0)))
        if i % 10 == 0:
            await asyncio.sleep(0.002)
    for task in tasks[5::17]:
        task.cancel()
    async with asyncio.timeout(30):
        results = await asyncio.gather(*tasks, return_exceptions=True)
    granted = sum(1 for r in results if not isinstance(r, BaseException))
    assert limiter.sent == granted
    taken = limiter.taken
    assert len(taken) == granted
    epsilon = 1e-6
    for i in range(len(taken)):
        for j in range(i + burst, len(taken)):
            assert taken[j] - taken[i] >= (j - i + 1 - burst) / rate - epsilon, (i, j)
    assert limiter.recent_rate(time.monotonic()) <= rate + burst


async def test_a_cancelled_waiter_takes_no_token() -> None:
    limiter = RateLimiter(200.0, 1)
    _drain(limiter)
    order: list[str] = []
    first = asyncio.create_task(_acquire(limiter, order, "cancelled", defer=True))
    second = asyncio.create_task(_acquire(limiter, order, "next", defer=True))
    await asyncio.sleep(0)
    sent = limiter.sent
    first.cancel()
    async with asyncio.timeout(10):
        await second
    with pytest.raises(asyncio.CancelledError):
        await first
    assert order == ["next"]
    assert limiter.sent == sent + 1


class _Channel:
    """Acknowledges at once; records which rate tokens were taken deferrably."""

    def __init__(self) -> None:
        self.defers: list[bool] = []
        self.sent: list[str] = []

    async def publish(self, msg: OutboundMessage) -> str | None:
        await self.acquire()
        self.sent.append(f"publish:{msg.data}")
        return "serial-1"

    async def acquire(self, *, defer: bool = False) -> None:
        self.defers.append(defer)

    def try_acquire(self) -> bool:
        return True

    def start_append(self, serial: str, msg: OutboundMessage) -> asyncio.Task[str | None]:
        self.sent.append(f"append:{msg.data}")

        async def ack() -> str | None:
            return None

        return asyncio.create_task(ack())

    async def update(self, serial: str, msg: OutboundMessage) -> str | None:
        return None


class _NoEncoder:
    def cancel_open_streams(self) -> list[AppendOp]:
        return []

    def recovery_update(self, stream_key: str, *, streaming: bool = False) -> UpdateOp:
        msg = "no append failed"
        raise AssertionError(msg)


async def test_a_streams_first_append_is_urgent_its_later_ones_deferrable() -> None:
    channel = _Channel()
    writer = StreamWriter(channel, _NoEncoder(), window_s=0.001)
    await writer.write([PublishOp(OutboundMessage(name="ai-output", data=""), stream_key="s")])
    for text in ("a", "b", "c"):
        await asyncio.sleep(0.01)  # past the window: each delta leaves at once (leading edge)
        await writer.write([AppendOp("s", OutboundMessage(name="ai-output", data=text))])
    await writer.write([AppendOp("s", OutboundMessage(name="ai-output", data=""), closing=True)])
    await writer.flush()
    await writer.aclose()
    assert channel.sent == ["publish:", "append:a", "append:b", "append:c", "append:"]
    # the create, the first append, two running appends, the close
    assert channel.defers == [False, False, True, True, False]


async def test_a_promoted_task_s_deferrable_waiters_go_in_their_arrival_order() -> None:
    """Deferrable waits that something urgent now depends on (a create behind its opening batch)
    are promoted: they go before urgent waiters that came after them, not after all of them."""
    limiter = RateLimiter(200.0, 1, max_defer_s=3600.0)
    _drain(limiter)
    order: list[str] = []

    async def batch() -> None:
        for i in range(2):
            await limiter.acquire(defer=True)
            order.append(f"batch-{i}")

    batching = asyncio.create_task(batch())
    await asyncio.sleep(0)  # the batch's first token is queued first
    later = [asyncio.create_task(_acquire(limiter, order, f"other-{i}")) for i in range(3)]
    await asyncio.sleep(0)
    limiter.promote(batching)  # type: ignore[arg-type]
    async with asyncio.timeout(10):
        await asyncio.gather(batching, *later)
    # batch-0 came before every other-*: it goes first; batch-1 queued after them (urgent now).
    assert order == ["batch-0", "other-0", "other-1", "other-2", "batch-1"]


class _LimitedChannel:
    """A channel whose rate tokens come from a real RateLimiter; batches and creates ACK at once."""

    def __init__(self, limiter: RateLimiter, order: list[str]) -> None:
        self.limiter = limiter
        self.order = order

    async def acquire(self, *, defer: bool = False) -> None:
        await self.limiter.acquire(defer=defer)

    def hasten(self, task: asyncio.Task[object]) -> None:
        self.limiter.promote(task)

    def try_acquire(self) -> bool:
        return self.limiter.try_acquire()

    async def send_batch(self, msgs: list[OutboundMessage]) -> list[str | None]:
        self.order.extend(str(m.name) for m in msgs)
        return [None] * len(msgs)

    async def publish(self, msg: OutboundMessage) -> str | None:
        await self.limiter.acquire()
        self.order.append(str(msg.name))
        return "serial-create"

    def start_append(self, serial: str, msg: OutboundMessage) -> asyncio.Task[str | None]:
        self.order.append(f"append:{msg.data}")

        async def ack() -> str | None:
            return None

        return asyncio.create_task(ack())

    async def update(self, serial: str, msg: OutboundMessage) -> str | None:
        return None


async def test_the_opening_batch_waits_deferrably_until_its_first_text_hastens_it() -> None:
    """The opening chunks wait behind another start's urgent messages while the model thinks; once
    this message's first text comes, its batch goes in its own arrival order, then the create."""
    limiter = RateLimiter(20.0, 1, max_defer_s=3600.0)
    _drain(limiter)
    order: list[str] = []
    writer = StreamWriter(_LimitedChannel(limiter, order), _NoEncoder(), window_s=0.0)
    await writer.write([PublishOp(OutboundMessage(name="start", data=""))])
    await asyncio.sleep(0)  # the batch task queues for its token (deferrable)
    other = [asyncio.create_task(_acquire(limiter, order, f"other-{i}")) for i in range(2)]
    await asyncio.sleep(0)
    async with asyncio.timeout(10):
        await other[0]  # the batch passed over: the other start's first message goes first
        assert "start" not in order
        create = PublishOp(OutboundMessage(name="text-start", data=""), stream_key="s")
        await writer.write([create, AppendOp("s", OutboundMessage(name="text", data="hi"))])
        await writer.flush()
        await asyncio.gather(*other)
    await writer.aclose()
    # hastened: the batch went before the other start's second message, which came after it
    assert order.index("start") < order.index("other-1") < order.index("text-start")
    assert order[-1] == "append:hi"
