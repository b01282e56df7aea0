"""Fixtures for the worker suite: the runtime suite's worker and client factories."""

from __future__ import annotations

from tests.runtime.runtime_fixtures import make_client, make_worker, session_name

__all__ = ["make_client", "make_worker", "session_name"]
