"""``agent_worker.retry`` / ``publish_reliably``: which failures are retried, and how often."""

from __future__ import annotations

import pytest

from agent_worker.errors import TransportError
from agent_worker.protocol.wire import OutboundMessage
from agent_worker.retry import backoff, retry
from agent_worker.runtime.streaming import publish_reliably


class FlakyChannel:
    """Refuses the first ``failures`` publishes with ``status``, then acknowledges."""

    def __init__(self, failures: int, status: int) -> None:
        self.failures = failures
        self.status = status
        self.calls = 0

    async def publish(self, msg: OutboundMessage) -> str | None:
        self.calls += 1
        if self.calls <= self.failures:
            msg_0 = "refused"
            raise TransportError(msg_0, code=self.status * 100, status_code=self.status)
        return f"serial-{self.calls}"


async def test_rate_limited_publish_is_retried_until_acknowledged() -> None:
    channel = FlakyChannel(failures=2, status=429)
    assert await publish_reliably(channel, OutboundMessage(name="x", data=""), attempts=5) == "serial-3"  # type: ignore[arg-type]
    assert channel.calls == 3


async def test_other_failures_are_not_retried() -> None:
    channel = FlakyChannel(failures=1, status=500)
    with pytest.raises(TransportError) as info:
        await publish_reliably(channel, OutboundMessage(name="x", data=""))  # type: ignore[arg-type]
    assert info.value.status_code == 500
    assert channel.calls == 1


async def test_last_failure_is_raised_after_the_attempts() -> None:
    calls: list[int] = []

    async def always_fails() -> int:
        calls.append(1)
        msg = f"attempt {len(calls)}"
        raise TransportError(msg, code=42910, status_code=429)

    with pytest.raises(TransportError, match="attempt 3"):
        await retry(always_fails, attempts=3, retry_if=lambda exc: True, wait=backoff(0.001))
    assert len(calls) == 3


async def test_success_first_time_calls_once() -> None:
    calls: list[int] = []

    async def ok() -> str:
        calls.append(1)
        return "done"

    assert await retry(ok, attempts=5, retry_if=lambda exc: True) == "done"
    assert calls == [1]


def test_backoff_doubles_up_to_its_cap() -> None:
    """The schedule is initial * 2**(n-1), never above max_wait."""
    wait = backoff(0.25, max_wait=1.0)
    err = RuntimeError("x")
    assert [wait(n, err) for n in (1, 2, 3, 4)] == [0.25, 0.5, 1.0, 1.0]


async def test_on_retry_sees_each_failure_and_its_wait() -> None:
    """on_retry is called before every sleep with the failure count, the error and the wait."""
    seen: list[tuple[int, str, float]] = []
    calls: list[int] = []

    async def twice_then_ok() -> str:
        calls.append(1)
        if len(calls) < 3:
            msg = "busy"
            raise TransportError(msg, code=42910, status_code=429)
        return "ok"

    result = await retry(
        twice_then_ok,
        attempts=5,
        retry_if=lambda exc: True,
        wait=lambda n, _exc: 0.001 * n,
        on_retry=lambda n, exc, s: seen.append((n, str(exc), s)),
    )
    assert result == "ok"
    assert [(n, s) for n, _, s in seen] == [(1, 0.001), (2, 0.002)]
