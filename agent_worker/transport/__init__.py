"""The one transport adapter: ably-python, pointed at Ably or the embedded server."""

from __future__ import annotations

from agent_worker.transport.ably import (
    AblySettings,
    AblyTransport,
    Channel,
    ChannelStateEvent,
    map_ably_errors,
    to_inbound,
)
from agent_worker.transport.ratelimit import RateLimiter

__all__ = [
    "AblySettings",
    "AblyTransport",
    "Channel",
    "ChannelStateEvent",
    "RateLimiter",
    "map_ably_errors",
    "to_inbound",
]
