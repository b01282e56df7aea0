"""Telemetry off costs nothing observable; OTEL_* variables choose exporters; the extra is optional."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from agent_worker import telemetry
from agent_worker.errors import ConfigError
from agent_worker.providers.base import ModelRequest, StreamEvent
from agent_worker.providers.echo import ScriptedProvider
from agent_worker.telemetry.setup import configure_from_env, exporter_names


async def hello(request: ModelRequest) -> AsyncIterator[StreamEvent | str]:
    yield "hi"


async def test_unconfigured_hooks_pass_objects_through() -> None:
    """With the API's default (proxy) providers nothing is wrapped: the run coroutine and the
    provider's stream context manager come back as they went in, and tools get the shared no-op."""
    assert telemetry.available() and not telemetry.enabled()
    provider = ScriptedProvider(hello)
    request = ModelRequest(messages=())

    async def body() -> None:
        return None

    coro = body()
    assert telemetry.trace_run(None, coro, None) is coro  # type: ignore[arg-type]
    await coro
    cm = telemetry.chat_stream(provider, request)
    assert type(cm) is type(provider.stream(request))
    async with cm as stream:
        assert [e async for e in stream]
    span = telemetry.tool_span("c1", "t", None, {})
    assert span is telemetry.tool_span("c2", "u", None, {})  # one shared object, no allocation

    async def answer() -> int:
        return 42

    traceparent = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
    assert await telemetry.continue_trace(traceparent, answer()) == 42


def test_exporter_names_follow_the_otel_variables() -> None:
    assert exporter_names("traces", {}) == []
    assert exporter_names("traces", {"OTEL_TRACES_EXPORTER": "none"}) == []
    assert exporter_names("traces", {"OTEL_TRACES_EXPORTER": "console"}) == ["console"]
    assert exporter_names("traces", {"OTEL_TRACES_EXPORTER": "console, otlp"}) == [
        "console",
        "otlp_proto_http",
    ]
    assert exporter_names("traces", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}) == ["otlp_proto_http"]
    assert exporter_names("metrics", {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318"}) == []
    grpc = {"OTEL_METRICS_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "grpc"}
    assert exporter_names("metrics", grpc) == ["otlp_proto_grpc"]
    with pytest.raises(ConfigError, match="unsupported OTLP protocol"):
        exporter_names(
            "traces", {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"}
        )


def test_configure_from_env_does_nothing_unless_asked() -> None:
    assert configure_from_env({}) is None
    assert configure_from_env({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}) is None
    with pytest.raises(ConfigError, match="no exporter named 'nosuch'"):
        configure_from_env({"OTEL_TRACES_EXPORTER": "nosuch"})
    assert not telemetry.enabled()  # nothing was installed on the way


def test_without_the_extra_the_worker_imports_and_warns() -> None:
    """opentelemetry absent (import blocked): the hooks are pass-throughs, logs get no processor, and
    an OTEL_TRACES_EXPORTER setting produces a warning instead of a crash."""
    code = """
import sys
sys.modules["opentelemetry"] = None
from structlog.testing import capture_logs
from agent_worker import telemetry
from agent_worker.agent.loop import run_pass
from agent_worker.worker.service import Worker
assert not telemetry.available() and not telemetry.enabled()
with capture_logs() as logs:
    assert telemetry.configure_from_env({"OTEL_TRACES_EXPORTER": "console"}) is None
assert [e["event"] for e in logs] == ["otel_not_installed"], logs
print("ok")
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_a_global_provider_set_later_is_picked_up() -> None:
    """An embedding application's own global provider (set after import) turns the hooks on."""
    code = """
import asyncio
from types import SimpleNamespace
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from agent_worker import telemetry
assert not telemetry.enabled()
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
assert telemetry.enabled()
run = SimpleNamespace(session=SimpleNamespace(name="conversations:x"), invocation_id="i", event_id="e",
    run_id="r", outcome="complete", error=None, owner_client_id="u", is_continuation=False,
    cancel_source=None, cancelled_by=None)
async def body():
    return None
asyncio.run(telemetry.trace_run(run, body(), None))
(span,) = exporter.get_finished_spans()
print(span.name, span.attributes["gen_ai.conversation.id"])
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "invoke_agent agent-worker conversations:x"
