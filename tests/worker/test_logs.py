"""Logging: JSON lines in production format carry the bound run context."""

from __future__ import annotations

import io
import json

import structlog

from agent_worker.logs import configure_logging, get_logger


def test_json_lines_carry_bound_context() -> None:
    """Every line logged inside a run's bound context names the run and session, as JSON."""
    buf = io.StringIO()
    try:
        configure_logging("json", "info", stream=buf)
        log = get_logger("agent_worker.test")
        with structlog.contextvars.bound_contextvars(run_id="r-1", session="conversations:x"):
            log.info("run_started", resume=False)
            log.debug("too_chatty")
        log.warning("outside")
    finally:
        structlog.reset_defaults()
    lines = [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]
    assert [e["event"] for e in lines] == ["run_started", "outside"]
    assert lines[0]["run_id"] == "r-1" and lines[0]["session"] == "conversations:x"
    assert lines[0]["level"] == "info" and "timestamp" in lines[0]
    assert "run_id" not in lines[1]
