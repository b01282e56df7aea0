"""Retries for opening a provider stream — the one place provider retries live.

Only *opening* is retried: an error before the first content event (text, reasoning or a tool
call) is safe to retry because nothing has reached the client yet; after that a failure ends the
run. The retryable set is defined by our error classes, never by ``Exception``: an HTTP 429 or 5xx
(:attr:`ProviderHTTPError.retryable`) or a connection failure. ``Retry-After`` wins over backoff.

Built on :func:`agent_worker.retry.retry`, as the publish retries are: an open happens once per
run, but tenacity's per-call machinery cost ~65 µs of CPU per open, most of it on the first (and
almost always only) attempt — some 1.5% of a run's start-up CPU, paid 100 times in a burst of starts.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypedDict, TypeVar

import structlog

from agent_worker.errors import ProviderConnectionError, ProviderHTTPError
from agent_worker.retry import Wait, backoff, retry

__all__ = [
    "DEFAULT_RETRY",
    "RetryConfig",
    "is_retryable",
    "parse_retry_after",
    "retry_open",
    "wait_retry_after",
]

T = TypeVar("T")
log = structlog.get_logger("agent_worker.providers")


class RetryConfig(TypedDict, total=False):
    """The retry knobs; every key is optional (see :data:`DEFAULT_RETRY`)."""

    attempts: int
    """Total tries including the first (1 disables retries)."""
    initial_wait: float
    """First backoff in seconds; doubles each retry, with jitter."""
    max_wait: float
    """Cap for one backoff, and for an honoured ``Retry-After``."""
    jitter: float


DEFAULT_RETRY: RetryConfig = {"attempts": 4, "initial_wait": 0.5, "max_wait": 30.0, "jitter": 0.5}


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, ProviderHTTPError):
        return exc.retryable
    return isinstance(exc, ProviderConnectionError)


def parse_retry_after(headers: Any) -> float | None:
    """Seconds to wait from ``retry-after-ms`` (OpenAI) or ``retry-after`` (seconds or HTTP date)."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def wait_retry_after(cfg: RetryConfig) -> Wait:
    """Wait what the vendor's ``Retry-After`` asks (capped at ``max_wait``), else jittered backoff."""
    fallback = backoff(cfg["initial_wait"], cfg["max_wait"], cfg["jitter"])

    def wait(failures: int, exc: BaseException) -> float:
        if isinstance(exc, ProviderHTTPError) and exc.retry_after is not None:
            return min(exc.retry_after, cfg["max_wait"])
        return fallback(failures, exc)

    return wait


async def retry_open(
    open_once: Callable[[], Awaitable[T]], config: RetryConfig | None, *, provider: str = "?"
) -> T:
    """Call ``open_once`` until it succeeds, a non-retryable error occurs or attempts run out."""
    cfg: RetryConfig = {**DEFAULT_RETRY, **(config or {})}

    wait = wait_retry_after(cfg)

    def log_retry(attempt: int, exc: BaseException, sleep_s: float) -> None:
        log.warning(
            "provider_retry",
            provider=provider,
            attempt=attempt,
            wait=sleep_s,
            error=type(exc).__name__,
            http_status=getattr(exc, "http_status", None),
        )

    return await retry(
        open_once, attempts=max(1, cfg["attempts"]), retry_if=is_retryable, wait=wait, on_retry=log_retry
    )
