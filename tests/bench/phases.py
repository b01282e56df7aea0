"""A bench phase result as the Node client reports it, for the bench's own tests."""

from __future__ import annotations

from typing import Any

__all__ = ["phase"]


def phase(latencies_ms: list[float], *, n: int = 2, cpu: float = 0.5, steal: int = 0) -> dict[str, Any]:
    us = [round(ms * 1000) for ms in latencies_ms]
    return {
        "n": n,
        "tokens": len(us) // n,
        "rate": 10,
        "timedOut": False,
        "latenciesUs": us,
        "steadyLatenciesUs": us,
        "firstTokenUs": [200_000] * n,
        "reasons": ["complete"] * n,
        "cpuSeconds": cpu,
        "serverCpuSeconds": cpu / 2,
        "failedInvocations": 0,
        "failedReasons": [],
        "ended": n,
        "received": len(us),
        "appends": len(us),
        "wallUs": 1_000_000,
        "machineTicks": {"busy": 100, "idle": 100 - steal, "steal": steal},
    }
