"""Shared fixtures: the embedded Ably-compatible server, from the plugin users get too."""

from __future__ import annotations

pytest_plugins = ["agent_worker.pytest_plugin"]
