"""Wire rules of the official Temporal integration, checked on a session's channel history.

``@ably/ai-transport/temporal`` pins a fresh run's id to its invocation id (the workflow id), so a
retried activity re-enters the same run, and names steps ``${invocationId}-${activityId}``
(``stepIdFor``), so a retried attempt's ``ai-step-start`` (higher serial) supersedes the failed one.
``wire`` is the list ``scenario-defs.mjs``'s ``wire()`` returns (oldest first).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["WireRun", "check_temporal_rules", "wire_runs"]


@dataclass
class WireRun:
    run_id: str
    starts: list[dict[str, str]] = field(default_factory=list)
    ends: list[dict[str, str]] = field(default_factory=list)
    step_starts: dict[str, list[str]] = field(default_factory=dict)
    """step id → serials of its ``ai-step-start`` attempts."""
    invocation_ids: set[str] = field(default_factory=set)

    @property
    def retried_steps(self) -> list[str]:
        return [step for step, serials in self.step_starts.items() if len(serials) > 1]


def wire_runs(wire: list[dict[str, Any]]) -> dict[str, WireRun]:
    runs: dict[str, WireRun] = {}
    for message in wire:
        headers: dict[str, str] = message.get("transport") or {}
        run_id = headers.get("run-id")
        if not run_id or headers.get("role") == "user" or message["name"] == "ai-input":
            continue
        run = runs.setdefault(run_id, WireRun(run_id))
        if "invocation-id" in headers:
            run.invocation_ids.add(headers["invocation-id"])
        name = message["name"]
        if name == "ai-run-start":
            run.starts.append(headers)
        elif name == "ai-run-end":
            run.ends.append(headers)
        elif name == "ai-step-start":
            run.step_starts.setdefault(headers["step-id"], []).append(str(message["serial"]))
    return runs


def check_temporal_rules(wire: list[dict[str, Any]], invocation_ids: list[str]) -> dict[str, WireRun]:
    """Asserts the rules for every run of ``invocation_ids`` (the POST answers, one per fresh run):
    run id == invocation id; one ``ai-run-end``; every step id ``<invocationId>-<activityId>``."""
    runs = wire_runs(wire)
    assert sorted(runs) == sorted(invocation_ids), f"runs on the wire {sorted(runs)} != invocations"
    for invocation_id in invocation_ids:
        run = runs[invocation_id]
        assert run.starts, f"run {invocation_id}: no ai-run-start"
        assert all(h["invocation-id"] == invocation_id for h in run.starts), "run id == invocation id"
        assert run.invocation_ids == {invocation_id}, f"run {invocation_id} stamped {run.invocation_ids}"
        assert len(run.ends) == 1, f"run {invocation_id}: {len(run.ends)} ai-run-end"
        pattern = re.compile(re.escape(invocation_id) + r"-\d+")
        assert run.step_starts, f"run {invocation_id}: no steps"
        for step_id in run.step_starts:
            assert pattern.fullmatch(step_id), f"step id {step_id!r} is not <invocationId>-<activityId>"
    return runs
