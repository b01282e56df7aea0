"""Fixtures for the worker suite: the runtime suite's worker and client factories."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "runtime"))

from runtime_fixtures import make_client, make_worker, session_name

__all__ = ["make_client", "make_worker", "session_name"]
