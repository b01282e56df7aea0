"""The per-connection rate limiter (transport/ratelimit.py): urgent waiters before deferrable ones,
arrival order within each class, no deferrable waiter passed over beyond its bound, the rate never
exceeded on the limiter's own clock, never more than ``per_second`` sends in any window, a quiet
connection's burst granted at once, and a saturated one paced evenly (no clump when a burst leaves
the window). Only orderings and counts are asserted, no durations; the shape is checked on a fake
clock."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from agent_worker.protocol.wire import AppendOp, OutboundMessage, PublishOp, UpdateOp
from agent_worker.runtime.streaming import StreamWriter
from agent_worker.transport import ratelimit
from agent_worker.transport.ratelimit import RateLimiter


class _Recording(RateLimiter):
    """Records, for each token taken, the limiter's own clock reading when it granted it, and when
    the send was counted in the window (``_stamp``: when the granted task resumed)."""

    def __init__(self, *args: float, **kwargs: float) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.taken: list[float] = []
        self.stamps: list[float] = []

    def _take(self) -> None:
        super()._take()
        self.taken.append(self._updated)

    def _stamp(self, now: float) -> None:
        super()._stamp(now)
        self.stamps.append(now)

    def _give_back(self) -> None:
        super()._give_back()
        self.taken.pop()


def _most_in_any_window(stamps: list[float], window: float) -> int:
    """The most stamps in any closed interval of length ``window``."""
    ordered = sorted(stamps)
    most, start = 0, 0
    for end, t in enumerate(ordered):
        while t - ordered[start] > window:
            start += 1
        most = max(most, end - start + 1)
    return most


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """A fake ``time.monotonic`` for the limiter: set ``clock[0]`` to move time."""
    now = [1000.0]
    monkeypatch.setattr(ratelimit, "time", SimpleNamespace(monotonic=lambda: now[0]))
    return now


def _saturate(limiter: RateLimiter, clock: list[float], seconds: float, step: float = 0.0005) -> list[float]:
    """A connection with always more to send: try every ``step`` for ``seconds``; the send times."""
    sent: list[float] = []
    end = clock[0] + seconds
    while clock[0] < end:
        while limiter.try_acquire():
            sent.append(clock[0])
        clock[0] += step
    return sent


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


async def _acquire_mixed(limiter: RateLimiter, n: int, *, pause_every: int, cancel: slice) -> int:
    """``n`` acquisitions, every third urgent, a short pause every ``pause_every``, the ``cancel``
    slice of them cancelled while waiting; the number granted."""
    tasks = []
    for i in range(n):
        tasks.append(asyncio.create_task(limiter.acquire(defer=i % 3 != 0)))
        if i % pause_every == 0:
            await asyncio.sleep(0.002)
    for task in tasks[cancel]:
        task.cancel()
    async with asyncio.timeout(30):
        results = await asyncio.gather(*tasks, return_exceptions=True)
    return sum(1 for r in results if not isinstance(r, BaseException))


async def test_the_rate_is_never_exceeded_over_any_window() -> None:
    """Mixed urgent and deferrable acquisitions, some cancelled: on the limiter's own clock, any
    k consecutive tokens span at least (k - burst) / rate seconds — no 1-s window above rate + burst."""
    rate, burst = 400.0, 5
    limiter = _Recording(rate, burst, max_defer_s=0.01)
    granted = await _acquire_mixed(limiter, 150, pause_every=10, cancel=slice(5, None, 17))
    assert limiter.sent == granted
    taken = limiter.taken
    assert len(taken) == granted
    epsilon = 1e-6
    for i in range(len(taken)):
        for j in range(i + burst, len(taken)):
            assert taken[j] - taken[i] >= (j - i + 1 - burst) / rate - epsilon, (i, j)
    assert limiter.recent_rate(time.monotonic()) <= rate + burst
    assert _most_in_any_window(limiter.stamps, 1.0) <= limiter.per_second
    assert len(limiter.stamps) == granted


async def test_never_more_than_per_second_in_any_window() -> None:
    """A window much tighter than the bucket (a burst of 8, up to 6 per 50 ms window): mixed urgent
    and deferrable acquisitions, some cancelled; the sends counted in any window never exceed 6,
    and every waiter is served (the limiter wakes when the window has room, not only on tokens)."""
    limiter = _Recording(1000.0, 8, per_second=6, window_s=0.05, max_defer_s=0.01)
    granted = await _acquire_mixed(limiter, 60, pause_every=20, cancel=slice(4, None, 13))
    assert len(limiter.stamps) == limiter.sent == granted > 50
    assert _most_in_any_window(limiter.stamps, limiter.window_s) <= 6


async def test_urgent_waiters_go_first_while_the_window_is_full() -> None:
    """The window, not the bucket, holds the waiters back: urgent ones still go before deferrable
    ones that came first, and the deferrable ones are served after them."""
    limiter = RateLimiter(10_000.0, 3, per_second=3, window_s=0.05, max_defer_s=3600.0)
    _drain(limiter)
    assert limiter.available() == 0.0
    order: list[str] = []
    tasks = [asyncio.create_task(_acquire(limiter, order, f"append-{i}", defer=True)) for i in range(3)]
    await asyncio.sleep(0)
    tasks += [asyncio.create_task(_acquire(limiter, order, name)) for name in ("run-start", "create")]
    async with asyncio.timeout(10):
        await asyncio.gather(*tasks)
    assert order == ["run-start", "create", "append-0", "append-1", "append-2"]


async def test_a_send_counts_from_when_its_task_resumes() -> None:
    """A waiter granted while the loop is busy sends when its task resumes: the window counts it
    from then, not from the grant (else the sends leaving in one window could exceed the cap)."""

    class _BusyLoop(_Recording):
        def _serve(self) -> None:
            super()._serve()
            time.sleep(0.03)  # the loop is busy between the grant and the task's resumption

    limiter = _BusyLoop(10_000.0, 2, per_second=2, window_s=0.05)
    _drain(limiter)
    async with asyncio.timeout(10):
        await limiter.acquire()
    assert limiter.stamps[-1] - limiter.taken[-1] >= 0.03


def test_a_quiet_connection_sends_its_burst_at_once(clock: list[float]) -> None:
    """A burst of ``burst`` at one instant, then nothing more at that instant; after a busy spell
    and a quiet second the whole burst is there again."""
    limiter = RateLimiter(45.0, 30)
    assert limiter.per_second == 45
    assert sum(limiter.try_acquire() for _ in range(40)) == 30
    _saturate(limiter, clock, 3.0)
    clock[0] += 2.0
    assert limiter.available() == 30.0
    assert sum(limiter.try_acquire() for _ in range(40)) == 30


def test_a_burst_counts_against_its_second(clock: list[float]) -> None:
    """A plain bucket of 30 at 45/s lets 75 through in the first second of a busy spell; here any
    second holds at most 45, while the long-run rate stays 45/s."""
    limiter = RateLimiter(45.0, 30)
    sent = _saturate(limiter, clock, 6.0)
    assert _most_in_any_window(sent, 1.0) <= 45
    assert len(sent) >= 5 * 45  # not slower than the rate once the burst is paid for


def test_a_saturated_connection_is_paced_evenly_after_its_first_second(clock: list[float]) -> None:
    """While the window is full the bucket does not fill, so when the opening burst leaves the
    window the sends do not clump again: after the first second, any k + 1 consecutive sends span
    at least (k - 1) / rate."""
    limiter = RateLimiter(45.0, 30)
    start = clock[0]
    sent = [t - start for t in _saturate(limiter, clock, 5.0)]
    later = [t for t in sent if t > 1.0]
    assert len(later) > 100
    for i in range(len(later)):
        for j in range(i + 1, min(i + 40, len(later))):
            assert later[j] - later[i] >= (j - i - 1) / 45.0 - 1e-6, (i, j)


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
