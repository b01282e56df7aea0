"""Retries for opening a provider stream — the one place provider retries live.

Only *opening* is retried: an error before the first content event (text, reasoning or a tool
call) is safe to retry because nothing has reached the client yet; after that a failure ends the
run. The retryable set is defined by our error classes, never by ``Exception``: an HTTP 429 or 5xx
(:attr:`ProviderHTTPError.retryable`) or a connection failure. ``Retry-After`` wins over backoff.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypedDict, TypeVar, cast

import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_base, wait_exponential_jitter

from agent_worker.errors import ConfigError, ProviderConnectionError, ProviderHTTPError

__all__ = [
    "DEFAULT_RETRY",
    "RetryConfig",
    "is_retryable",
    "parse_retry_after",
    "retry_config",
    "retry_open",
    "wait_retry_after",
]

T = TypeVar("T")
log = structlog.get_logger("agent_worker.providers")


class RetryConfig(TypedDict, total=False):
    """Mirrors tenacity's knobs; every key is optional (see :data:`DEFAULT_RETRY`)."""

    attempts: int
    """Total tries including the first (1 disables retries)."""
    initial_wait: float
    """First backoff in seconds; doubles each retry, with jitter."""
    max_wait: float
    """Cap for one backoff, and for an honoured ``Retry-After``."""
    jitter: float


DEFAULT_RETRY: RetryConfig = {"attempts": 4, "initial_wait": 0.5, "max_wait": 30.0, "jitter": 0.5}


def retry_config(provider: str, raw: Any) -> RetryConfig | None:
    """Validate a ``retry`` table from the config (unknown keys and wrong types are errors)."""
    if raw is None:
        return None
    allowed = {"attempts": int, "initial_wait": float, "max_wait": float, "jitter": float}
    if not isinstance(raw, dict) or not set(raw) <= set(allowed):
        msg = f"[providers.{provider}.retry] must be a table with keys among {', '.join(allowed)}"
        raise ConfigError(msg)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        kind = allowed[key]
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (kind is int and isinstance(value, float))
        ):
            msg = f"[providers.{provider}.retry] {key} must be a{'n integer' if kind is int else ' number'}"
            raise ConfigError(msg)
        out[key] = kind(value)
    return cast(RetryConfig, out)


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


class wait_retry_after(wait_base):
    """Wait what the vendor's ``Retry-After`` asks (capped at ``max_wait``), else ``fallback``."""

    def __init__(self, fallback: wait_base, max_wait: float) -> None:
        self.fallback = fallback
        self.max_wait = max_wait

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, ProviderHTTPError) and exc.retry_after is not None:
            return min(exc.retry_after, self.max_wait)
        return float(self.fallback(retry_state))


def _log_retry(provider: str) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else None
        log.warning(
            "provider_retry",
            provider=provider,
            attempt=state.attempt_number,
            wait=wait,
            error=type(exc).__name__,
            http_status=getattr(exc, "http_status", None),
        )

    return before_sleep


async def retry_open(
    open_once: Callable[[], Awaitable[T]], config: RetryConfig | None, *, provider: str = "?"
) -> T:
    """Call ``open_once`` until it succeeds, a non-retryable error occurs or attempts run out."""
    cfg: RetryConfig = {**DEFAULT_RETRY, **(config or {})}
    attempts = max(1, cfg["attempts"])
    if attempts == 1:
        return await open_once()
    retrying = AsyncRetrying(
        stop=stop_after_attempt(attempts),
        wait=wait_retry_after(
            wait_exponential_jitter(initial=cfg["initial_wait"], max=cfg["max_wait"], jitter=cfg["jitter"]),
            cfg["max_wait"],
        ),
        retry=retry_if_exception(is_retryable),
        before_sleep=_log_retry(provider),
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await open_once()
    msg = "unreachable: tenacity either returns or re-raises"  # pragma: no cover
    raise AssertionError(msg)  # pragma: no cover
