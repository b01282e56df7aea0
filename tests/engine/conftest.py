"""Fixtures for the engine suite: the runtime suite's worker and client factories, the Temporal
dev server (one per test session)."""

from __future__ import annotations

from tests.runtime.runtime_fixtures import make_client, make_worker, session_name
from tests.temporal_support import temporal_server

__all__ = ["make_client", "make_worker", "session_name", "temporal_server"]
