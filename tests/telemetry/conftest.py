"""Fixtures for the telemetry suite: the runtime suite's worker/client factories, plus in-memory
OpenTelemetry exporters handed to :func:`agent_worker.telemetry.instrument` for one test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agent_worker import telemetry
from tests.runtime.runtime_fixtures import make_client, make_worker, session_name
from tests.telemetry.telemetry_support import Otel

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
