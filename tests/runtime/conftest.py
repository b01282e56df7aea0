"""Fixtures for the runtime suite (defined in runtime_fixtures.py, shared with tests/worker)."""

from __future__ import annotations

from tests.runtime.runtime_fixtures import make_client, make_worker, session_name

__all__ = ["make_client", "make_worker", "session_name"]
