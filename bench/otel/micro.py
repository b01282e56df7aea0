"""In-process micro-benchmark of the telemetry hooks themselves: ``python -m bench.otel.micro``.

One simulated run = ``trace_run`` around a body that streams one model call of ``--tokens`` events
through ``chat_stream`` (a :class:`ScriptedProvider`, no network) and executes one tool through
``tool_span``. Timed three ways in one process: *direct* (the loop's calls without any hook — what
the absent extra amounts to), *off* (the hooks, API installed, no provider) and *on* (an SDK tracer
and meter provider, batch span processor + console exporter writing to /dev/null). Reports CPU µs per
run, best of ``--repeat`` interleaved rounds. Prints a JSON line; :mod:`bench.otel` puts it in the doc.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

from agent_worker import telemetry
from agent_worker.providers.base import ModelRequest, StreamEvent, UsageUpdate
from agent_worker.providers.echo import ScriptedProvider


def fake_run(i: int) -> Any:
    """The attributes of a Run that the run span reads."""
    return SimpleNamespace(
        session=SimpleNamespace(name="conversations:bench"),
        invocation_id=f"inv-{i}",
        event_id=f"evt-{i}",
        run_id=f"run-{i}",
        outcome="complete",
        error=None,
        owner_client_id="user-abc",
        is_continuation=False,
        cancel_source=None,
        cancelled_by=None,
    )


async def one_run(provider: ScriptedProvider, agent: Any, i: int, hooks: bool) -> int:
    request = ModelRequest(messages=())
    seen = 0

    async def body() -> None:
        nonlocal seen
        cm = telemetry.chat_stream(provider, request) if hooks else provider.stream(request)
        async with cm as stream:
            async for _ in stream:
                seen += 1
            stream.get()
        if hooks:
            with telemetry.tool_span("call-1", "calculate", None, {}) as span:
                span.result(42, False)

    coro = body()
    await (telemetry.trace_run(fake_run(i), coro, agent) if hooks else coro)
    return seen


async def timed(runs: int, tokens: int, hooks: bool) -> float:
    async def script(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
        for _ in range(tokens):
            yield "tok "
        yield UsageUpdate(input_tokens=10, output_tokens=tokens)

    provider = ScriptedProvider(script, name="bench")
    agent = SimpleNamespace(provider=provider, model="bench-model")
    # Process CPU time (all threads: the batch exporter's included), not wall time: on a shared
    # machine, waiting for a core is not a cost of the hooks.
    t0 = time.process_time()
    for i in range(runs):
        await one_run(provider, agent, i, hooks)
    return (time.process_time() - t0) / runs * 1e6


def sdk(console: bool) -> tuple[Any, Any]:
    """SDK tracer + meter providers: spans to a null exporter (the SDK's span/metric bookkeeping
    only) or, ``console``, through the batch processor to the console exporter on /dev/null."""
    from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
    from opentelemetry.sdk.metrics.export import (  # noqa: PLC0415
        ConsoleMetricExporter,
        PeriodicExportingMetricReader,
    )
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import (  # noqa: PLC0415
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class Null(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    tracer_provider = TracerProvider()
    readers = []
    if console:
        devnull = open(os.devnull, "w")  # noqa: SIM115 - for the process's lifetime
        tracer_provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(out=devnull)))
        readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter(out=devnull)))
    else:
        tracer_provider.add_span_processor(SimpleSpanProcessor(Null()))
    return tracer_provider, MeterProvider(metric_readers=readers)


MODES = ("direct", "off", "on-null", "on-console")


def measure(runs: int, tokens: int, repeat: int) -> dict[str, Any]:
    """Modes interleaved ``repeat`` times; the best (lowest) µs/run of each."""
    best: dict[str, float] = {}
    for _ in range(repeat):
        for mode in MODES:
            providers: tuple[Any, Any] | None = None
            if mode.startswith("on"):
                providers = sdk(console=mode == "on-console")
                telemetry.instrument(tracer_provider=providers[0], meter_provider=providers[1])
            us = asyncio.run(timed(runs, tokens, hooks=mode != "direct"))
            if providers is not None:
                telemetry.instrument()
                for p in providers:
                    p.shutdown()
            best[mode] = min(best.get(mode, us), us)
    return {"runs": runs, "tokens": tokens, "repeat": repeat, "us_per_run": best}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.otel.micro", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=2000)
    p.add_argument("--tokens", type=int, default=100)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)
    print(json.dumps(measure(args.runs, args.tokens, args.repeat)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
