"""Shared fixtures: the embedded Ably-compatible server, from the plugin users get too; the
Temporal dev server (``temporal_server``: one per test session, defined here once so every
directory shares it)."""

from __future__ import annotations

from tests.temporal_support import temporal_server

__all__ = ["temporal_server"]

pytest_plugins = ["agent_worker.pytest_plugin"]
