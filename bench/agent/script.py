"""The benchmark's scripted "model", shared by both agents (JS twin: tests/js/bench/agent.mjs).

The user message is ``{"bench": "stream", "id": ..., "tokens": N, "rate": R}``; the model streams N
tokens ``"<seq>:<us>:<due>;"`` at R tokens/s (0 = as fast as the agent takes them), where ``us`` is
the CLOCK_MONOTONIC time in microseconds at which the token left the model (its generator resumed)
and ``due`` the time its pacing timer was due (the time just before the sleep plus the interval;
``us`` when unpaced). Every process on the machine reads the same clock, so the client's receive
time minus ``us`` is the provider→client latency; minus ``due``, the same with the agent's own
event-loop wait for the timer counted too (a real model's token arrives on a socket at a time that
does not depend on the agent's loop). The sleeps stay relative, so the load is the same as before.
Events go to stdout as ``@@event {...}``: the prompt size at the model call, and the moment the
model stream was closed by a cancel.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from agent_worker.providers.base import ModelRequest, StreamEvent
from agent_worker.providers.echo import ScriptedProvider, latest_user_text

__all__ = ["bench_provider", "emit", "now_us"]


def now_us() -> int:
    return time.monotonic_ns() // 1000


def emit(tag: str, payload: dict[str, Any]) -> None:
    sys.stdout.write(f"@@{tag} {json.dumps(payload)}\n")
    sys.stdout.flush()


def _spec(text: str) -> dict[str, Any]:
    try:
        spec = json.loads(text)
    except ValueError:
        spec = None
    if isinstance(spec, dict) and spec.get("bench") == "stream":
        return spec
    return {"bench": "plain", "id": None, "tokens": 1, "rate": 0}


async def bench_script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
    spec = _spec(latest_user_text(request))
    emit("event", {"event": "prompt", "id": spec["id"], "messages": len(request.messages), "us": now_us()})
    interval = 1.0 / spec["rate"] if spec["rate"] else 0.0
    try:
        for seq in range(1, int(spec["tokens"]) + 1):
            if interval:
                due = now_us() + round(interval * 1e6)
                await asyncio.sleep(interval)
                us = now_us()
            else:
                us = due = now_us()
            yield "ok" if spec["bench"] == "plain" else f"{seq}:{us}:{due};"
    except (asyncio.CancelledError, GeneratorExit):
        # The worker closes the provider stream when the run is cancelled (= an HTTP abort).
        emit("event", {"event": "closed", "id": spec["id"], "us": now_us()})
        raise


def bench_provider() -> ScriptedProvider:
    return ScriptedProvider(bench_script, name="bench")
