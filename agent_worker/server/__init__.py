"""Embedded Ably-compatible server: WebSocket + REST on one port, for local runs and tests.

The unmodified official SDKs (ably-python 3.1.4, ably-js 2.28.0, @ably/ai-transport 0.8.0) talk to
it; see ``docs/server.md`` for how to point them at it.
"""

from __future__ import annotations

from agent_worker.server.app import EmbeddedServer
from agent_worker.server.config import DEFAULT_DEV_KEY, ServerConfig
from agent_worker.server.log import Retention

__all__ = ["DEFAULT_DEV_KEY", "EmbeddedServer", "Retention", "ServerConfig"]
