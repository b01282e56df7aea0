"""``retry_with_backoff`` / ``publish_reliably``: which failures are retried, and how often."""

from __future__ import annotations

import pytest

from agent_worker.errors import TransportError
from agent_worker.protocol.wire import OutboundMessage
from agent_worker.runtime.streaming import publish_reliably, retry_with_backoff


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
        await retry_with_backoff(always_fails, attempts=3, retry=lambda exc: True, multiplier=0.001)
    assert len(calls) == 3


async def test_success_first_time_calls_once() -> None:
    calls: list[int] = []

    async def ok() -> str:
        calls.append(1)
        return "done"

    assert await retry_with_backoff(ok, attempts=5, retry=lambda exc: True) == "done"
    assert calls == [1]
