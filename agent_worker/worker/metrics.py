"""Prometheus metrics, one registry per worker (so tests can run several workers in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "WorkerMetrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.runs = Counter(
            "agent_worker_runs",
            "Runs by terminal outcome (complete, cancelled, error, suspended).",
            ["outcome"],
            registry=r,
        )
        self.invocations = Counter(
            "agent_worker_invocations",
            "Invocations by result (accepted, duplicate, busy, refused, unauthorized).",
            ["result"],
            registry=r,
        )
        self.cancels = Counter(
            "agent_worker_cancels",
            "ai-cancel messages by decision (honoured, refused, buffered, unmatched).",
            ["decision"],
            registry=r,
        )
        self.tokens = Counter(
            "agent_worker_tokens",
            "Model tokens by direction (input, output) as reported by providers.",
            ["direction"],
            registry=r,
        )
        self.messages = Counter(
            "agent_worker_channel_messages",
            "Messages sent to Ably by kind (publish, append, update).",
            ["kind"],
            registry=r,
        )
        self.notifications = Counter(
            "agent_worker_notifications",
            "Push notifications to run owners by result "
            "(sent, failed, undelivered, present, vetoed, skipped).",
            ["result"],
            registry=r,
        )
        self.active_runs = Gauge("agent_worker_active_runs", "Runs in flight.", registry=r)
        self.run_duration = Histogram(
            "agent_worker_run_duration_seconds",
            "From invocation to the terminal lifecycle publish.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "agent_worker_time_to_first_token_seconds",
            "From invocation to the first streamed output.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.trigger_wait = Histogram(
            "agent_worker_trigger_locate_seconds",
            "From invocation to the trigger ai-input being located on the channel.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
