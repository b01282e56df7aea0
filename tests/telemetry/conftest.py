"""Fixtures for the telemetry suite: the runtime suite's worker/client factories, plus in-memory
OpenTelemetry exporters handed to :func:`agent_worker.telemetry.instrument` for one test."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "runtime"))

from otel_support import Otel
from runtime_fixtures import make_client, make_worker, session_name

from agent_worker import telemetry

__all__ = ["make_client", "make_worker", "otel", "session_name"]


@pytest.fixture
def otel() -> Iterator[Otel]:
    recorder = Otel()
    telemetry.instrument(tracer_provider=recorder.tracer_provider, meter_provider=recorder.meter_provider)
    try:
        yield recorder
    finally:
        telemetry.instrument(tracer_provider=None, meter_provider=None)
        telemetry.set_capture_content(False)
        recorder.shutdown()
