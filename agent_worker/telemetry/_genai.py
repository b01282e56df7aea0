"""Spans and metrics in the OpenTelemetry GenAI semantic conventions (needs ``opentelemetry-api``).

Imported by :mod:`agent_worker.telemetry` only when the API is installed. Every entry point first
asks whether a tracer or meter provider is configured (globally, or handed to :func:`instrument`);
when neither is, it returns the un-instrumented object, so a worker without telemetry pays one
``isinstance`` pair per run and one ``ContextVar.get`` per model/tool call.

The run's :class:`_RunTrace` lives in a context variable set inside the run's task, so the agent
loop's ``chat``/``execute_tool`` spans find their parent without the loop knowing about spans; the
session's cancel routing (another task) finds it through :data:`_RUNS`.
"""

from __future__ import annotations

import contextvars
import json
import time
from collections.abc import Awaitable, Coroutine, Mapping
from dataclasses import asdict, is_dataclass
from types import TracebackType
from typing import Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.metrics import MeterProvider, NoOpMeterProvider
from opentelemetry.trace import NoOpTracerProvider, ProxyTracerProvider, SpanKind, Status, StatusCode

from agent_worker.errors import AgentWorkerError
from agent_worker.telemetry import attrs as A

# Structural stand-ins for the runtime's, providers' and tools' types: telemetry sits below the
# layers it observes (tests/test_import_graph.py), so it names none of them.
Run = Any
ModelProvider = Any
ModelRequest = Any
ModelResponse = Any
ResponseStream = Any
Tool = Any

T = TypeVar("T")

try:  # the API's proxy that delegates once a real provider is set (private name, stable since 1.x)
    from opentelemetry.metrics import _internal as _metrics_internal
    from opentelemetry.metrics._internal import _ProxyMeterProvider

    _UNSET_METERS: tuple[type, ...] = (_ProxyMeterProvider, NoOpMeterProvider)
except ImportError:  # pragma: no cover - another API layout
    _metrics_internal = None  # type: ignore[assignment]
    _UNSET_METERS = (NoOpMeterProvider,)

_MISSING = object()


def _global_tracer_provider() -> object:
    # The public getter looks up OTEL_PYTHON_TRACER_PROVIDER in os.environ on every call (~4 µs);
    # the module global it reads costs nothing. The public call remains the fallback.
    provider = getattr(trace, "_TRACER_PROVIDER", _MISSING)
    return trace.get_tracer_provider() if provider is _MISSING else provider


def _global_meter_provider() -> object:
    provider = getattr(_metrics_internal, "_METER_PROVIDER", _MISSING)
    return metrics.get_meter_provider() if provider is _MISSING else provider


# A provider named by OTEL_PYTHON_{TRACER,METER}_PROVIDER is installed on the first public get.
trace.get_tracer_provider()
metrics.get_meter_provider()

# Bucket advice from the GenAI metric conventions.
_DURATION_BUCKETS = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92]
_TOKEN_BUCKETS = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864]


class _State:
    """The tracer, meter instruments and options in use (rebound by :func:`instrument`)."""

    def __init__(self) -> None:
        self.explicit_traces = False
        self.explicit_metrics = False
        self.capture_content = False
        self.agent_name = "agent-worker"
        self.bind(None, None)

    def bind(
        self, tracer_provider: trace.TracerProvider | None, meter_provider: MeterProvider | None
    ) -> None:
        self.explicit_traces = tracer_provider is not None
        self.explicit_metrics = meter_provider is not None
        self.tracer = trace.get_tracer(
            A.INSTRUMENTATION_NAME, A.INSTRUMENTATION_VERSION, tracer_provider, schema_url=A.SCHEMA_URL
        )
        meter = metrics.get_meter(
            A.INSTRUMENTATION_NAME, A.INSTRUMENTATION_VERSION, meter_provider, schema_url=A.SCHEMA_URL
        )
        self.duration = meter.create_histogram(
            A.METRIC_OPERATION_DURATION,
            unit="s",
            description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self.tokens = meter.create_histogram(
            A.METRIC_TOKEN_USAGE,
            unit="{token}",
            description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=_TOKEN_BUCKETS,
        )
        self.ttfc = meter.create_histogram(
            A.METRIC_TIME_TO_FIRST_CHUNK,
            unit="s",
            description="Time from issuing the model request to its first streamed chunk.",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self.active_runs = meter.create_up_down_counter(
            A.METRIC_ACTIVE_RUNS, unit="{run}", description="Agent runs in flight."
        )

    def tracing(self) -> bool:
        if self.explicit_traces:
            return True
        provider = _global_tracer_provider()
        return provider is not None and not isinstance(provider, ProxyTracerProvider | NoOpTracerProvider)

    def metering(self) -> bool:
        if self.explicit_metrics:
            return True
        provider = _global_meter_provider()
        return provider is not None and not isinstance(provider, _UNSET_METERS)


_state = _State()


def instrument(
    *,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    capture_content: bool | None = None,
    agent_name: str | None = None,
) -> None:
    """Use these providers instead of the global ones (``None``: the global one, the default)."""
    _state.bind(tracer_provider, meter_provider)
    if capture_content is not None:
        _state.capture_content = capture_content
    if agent_name is not None:
        _state.agent_name = agent_name


def set_capture_content(enabled: bool) -> None:
    _state.capture_content = enabled


def enabled() -> bool:
    return _state.tracing() or _state.metering()


# --- helpers ---------------------------------------------------------------------------------------


def _provider_name(provider: object) -> str:
    return str(getattr(provider, "name", "") or type(provider).__name__)


def _model(provider: object, requested: str | None = None) -> str:
    return str(requested or getattr(provider, "model", "") or "")


def _jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return str(value)


def _dumps(value: Any) -> str:
    return json.dumps(value, default=_jsonable, ensure_ascii=False)


def _error_type(exc: BaseException) -> str:
    return type(exc).__name__


def _mark_error(span: trace.Span, exc: BaseException) -> None:
    span.record_exception(exc)
    message = exc.message if isinstance(exc, AgentWorkerError) else str(exc)
    span.set_status(Status(StatusCode.ERROR, message))
    span.set_attribute(A.ERROR_TYPE, _error_type(exc))
    if isinstance(exc, AgentWorkerError):
        span.set_attribute(A.AW_ERROR_CODE, exc.code)


# --- the run: invoke_agent -------------------------------------------------------------------------


class _RunTrace:
    __slots__ = ("base", "metering", "span", "started")

    def __init__(self, span: trace.Span, base: dict[str, str], metering: bool) -> None:
        self.span = span
        self.base = base
        """Metric attributes shared by the run's operations (provider, model)."""
        self.metering = metering
        self.started = time.perf_counter()


_CURRENT: contextvars.ContextVar[_RunTrace | None] = contextvars.ContextVar("aw_run_trace", default=None)
_RUNS: dict[int, _RunTrace] = {}


def trace_run(run: Run, coro: Coroutine[Any, Any, None], agent: object) -> Coroutine[Any, Any, None]:
    """The run's task body wrapped in its ``invoke_agent`` span (or ``coro`` itself when disabled)."""
    tracing, metering = _state.tracing(), _state.metering()
    if not (tracing or metering):
        return coro
    return _traced_run(run, coro, agent, metering)


async def _traced_run(run: Run, coro: Coroutine[Any, Any, None], agent: object, metering: bool) -> None:
    # Any agent object: its provider and model, when it has them, label the run and its metrics.
    provider = getattr(agent, "provider", None)
    base: dict[str, str] = {}
    if provider is not None:
        base[A.PROVIDER_NAME] = _provider_name(provider)
        base[A.REQUEST_MODEL] = _model(provider, getattr(agent, "model", None))
    span = _state.tracer.start_span(
        f"{A.OP_INVOKE_AGENT} {_state.agent_name}",
        kind=SpanKind.INTERNAL,
        attributes={
            A.OPERATION_NAME: A.OP_INVOKE_AGENT,
            A.AGENT_NAME: _state.agent_name,
            A.CONVERSATION_ID: run.session.name,
            A.AW_INVOCATION_ID: run.invocation_id,
            A.AW_EVENT_ID: run.event_id,
            **base,
        },
    )
    rt = _RunTrace(span, base, metering)
    _CURRENT.set(rt)  # the task runs in its own copy of the context: nothing to reset
    _RUNS[id(run)] = rt
    if metering:
        _state.active_runs.add(1, base)
    try:
        with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
            await coro
    finally:
        _RUNS.pop(id(run), None)
        _end_run(run, rt)


def _end_run(run: Run, rt: _RunTrace) -> None:
    span = rt.span
    outcome = run.outcome or ("error" if run.error is not None else "cancelled")
    span.set_attribute(A.AW_RUN_ID, run.run_id)
    span.set_attribute(A.AW_RUN_OUTCOME, outcome)
    span.set_attribute(A.AW_RUN_RESUMED, run.is_continuation)
    if run.owner_client_id:
        span.set_attribute(A.AW_CLIENT_ID, run.owner_client_id)
    if run.cancel_source is not None and run.cancel_source != "client":
        cancel_event(rt, run.cancel_source, run.cancelled_by, allowed=True)
    if outcome == "suspended":
        span.add_event(A.EV_SUSPEND, {A.AW_RUN_ID: run.run_id})
    attributes = dict(rt.base, **{A.OPERATION_NAME: A.OP_INVOKE_AGENT})
    if outcome == "error":
        err = run.error
        code = str(err.code) if err is not None else "error"
        span.set_status(Status(StatusCode.ERROR, err.message if err is not None else "run failed"))
        span.set_attribute(A.ERROR_TYPE, code)
        if err is not None:
            span.set_attribute(A.AW_ERROR_CODE, err.code)
        attributes[A.ERROR_TYPE] = code
    span.end()
    if rt.metering:
        _state.active_runs.add(-1, rt.base)
        _state.duration.record(time.perf_counter() - rt.started, attributes)


def cancel_event(rt: _RunTrace, source: str, by: str | None, *, allowed: bool) -> None:
    rt.span.add_event(
        A.EV_CANCEL,
        {A.AW_CANCEL_SOURCE: source, A.AW_CANCEL_REQUESTED_BY: by or "", A.AW_CANCEL_ALLOWED: allowed},
    )


def cancel_decision(run: Run, by: str | None, *, allowed: bool) -> None:
    """An ``ai-cancel`` for this run was honoured or refused (by the hooks or the policy)."""
    rt = _RUNS.get(id(run))
    if rt is not None:
        cancel_event(rt, "client", by, allowed=allowed)


# --- model calls: chat -----------------------------------------------------------------------------


def chat_stream(provider: ModelProvider, request: ModelRequest) -> Any:
    """``provider.stream(request)``, inside a ``chat`` span when the current run is traced."""
    rt = _CURRENT.get()
    if rt is None:
        return provider.stream(request)
    return _TracedChat(rt, provider, request)


def _part_json(part: Any) -> dict[str, Any]:
    """One model-message part in the conventions' message schema."""
    kind = getattr(part, "kind", "")
    if kind in ("text", "reasoning"):
        return {"type": kind, "content": part.text}
    if kind == "file":
        return {"type": "uri", "uri": part.url, "mime_type": part.media_type}
    if kind == "tool-call":
        return {"type": "tool_call", "id": part.call_id, "name": part.name, "arguments": part.arguments}
    if kind == "tool-result":
        return {"type": "tool_call_response", "id": part.call_id, "response": part.output}
    return {"type": kind or type(part).__name__}


def _message_json(request: ModelRequest) -> str:
    out: list[dict[str, Any]] = []
    for m in request.messages:
        parts = [{"type": "text", "content": m.content}] if m.role == "system" else m.parts  # type: ignore[union-attr]
        out.append({"role": m.role, "parts": [p if isinstance(p, dict) else _part_json(p) for p in parts]})
    return _dumps(out)


class _TracedChat:
    """Both the async context manager and the stream it yields: counts the first chunk, and on exit
    records usage, finish reason, duration and errors."""

    def __init__(self, rt: _RunTrace, provider: ModelProvider, request: ModelRequest) -> None:
        self.rt = rt
        self.provider = provider
        self.request = request
        self.first_at: float | None = None
        self.span: trace.Span | None = None
        self._inner: ResponseStream | None = None
        self._it: Any = None

    async def __aenter__(self) -> _TracedChat:
        req = self.request
        model = _model(self.provider, req.model)
        attributes: dict[str, Any] = {
            A.OPERATION_NAME: A.OP_CHAT,
            A.PROVIDER_NAME: _provider_name(self.provider),
            A.REQUEST_MODEL: model,
            A.REQUEST_STREAM: True,
        }
        if req.max_tokens is not None:
            attributes[A.REQUEST_MAX_TOKENS] = req.max_tokens
        if req.temperature is not None:
            attributes[A.REQUEST_TEMPERATURE] = req.temperature
        if _state.capture_content:
            attributes[A.INPUT_MESSAGES] = _message_json(req)
            if req.system:
                attributes[A.SYSTEM_INSTRUCTIONS] = _dumps([{"type": "text", "content": req.system}])
        self.metric_attrs = {A.OPERATION_NAME: A.OP_CHAT, A.PROVIDER_NAME: attributes[A.PROVIDER_NAME]}
        self.metric_attrs[A.REQUEST_MODEL] = model
        self.span = span = _state.tracer.start_span(
            f"{A.OP_CHAT} {model}".rstrip(), kind=SpanKind.CLIENT, attributes=attributes
        )
        self._token = otel_context.attach(trace.set_span_in_context(span))
        self.started = time.perf_counter()
        try:
            self._cm = self.provider.stream(req)
            self._inner = await self._cm.__aenter__()
        except BaseException as exc:
            self._finish(exc)
            raise
        return self

    def __aiter__(self) -> _TracedChat:
        assert self._inner is not None
        self._it = self._inner.__aiter__()
        return self

    async def __anext__(self) -> Any:
        event = await self._it.__anext__()
        if self.first_at is None:
            self.first_at = time.perf_counter()
            ttfc = self.first_at - self.started
            assert self.span is not None
            self.span.add_event(A.EV_FIRST_CHUNK, {A.RESPONSE_TIME_TO_FIRST_CHUNK: ttfc})
            self.span.set_attribute(A.RESPONSE_TIME_TO_FIRST_CHUNK, ttfc)
            if self.rt.metering:
                _state.ttfc.record(ttfc, self.metric_attrs)
        return event

    def get(self) -> ModelResponse:
        assert self._inner is not None
        return self._inner.get()

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        try:
            suppressed: bool | None = await self._cm.__aexit__(et, exc, tb)
        except BaseException as raised:
            self._finish(raised)
            raise
        self._finish(None if suppressed else exc)
        return suppressed

    def _finish(self, exc: BaseException | None) -> None:
        span = self.span
        assert span is not None
        attributes = dict(self.metric_attrs)
        response = self._inner.get() if self._inner is not None else None
        if response is not None:
            self._usage(span, response, attributes)
        if exc is None:
            pass
        elif isinstance(exc, BaseException) and not isinstance(exc, Exception):
            span.set_attribute(A.AW_CANCELLED, True)  # CancelledError: the run was cancelled
        else:
            _mark_error(span, exc)
            attributes[A.ERROR_TYPE] = _error_type(exc)
        otel_context.detach(self._token)
        span.end()
        if self.rt.metering:
            _state.duration.record(time.perf_counter() - self.started, attributes)

    def _usage(self, span: trace.Span, response: ModelResponse, attributes: dict[str, Any]) -> None:
        if response.finish_reason is not None:
            span.set_attribute(A.RESPONSE_FINISH_REASONS, [response.finish_reason])
        for key, kind, value in (
            (A.USAGE_INPUT_TOKENS, "input", response.input_tokens),
            (A.USAGE_OUTPUT_TOKENS, "output", response.output_tokens),
        ):
            if value is None:
                continue
            span.set_attribute(key, value)
            if self.rt.metering:
                _state.tokens.record(value, dict(attributes, **{A.TOKEN_TYPE: kind}))
        if _state.capture_content:
            parts: list[dict[str, Any]] = []
            if response.text:
                parts.append({"type": "text", "content": response.text})
            parts.extend(
                {"type": "tool_call", "id": c.call_id, "name": c.name, "arguments": c.arguments}
                for c in response.tool_calls
            )
            message = {"role": "assistant", "parts": parts, "finish_reason": response.finish_reason}
            span.set_attribute(A.OUTPUT_MESSAGES, _dumps([message]))


# --- tools: execute_tool ---------------------------------------------------------------------------


def _tool_attributes(call_id: str, name: str, tool: Tool | None, execution: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        A.OPERATION_NAME: A.OP_EXECUTE_TOOL,
        A.TOOL_NAME: name,
        A.TOOL_CALL_ID: call_id,
        A.TOOL_TYPE: "function",
        A.AW_TOOL_EXECUTION: execution,
    }
    if tool is not None and tool.description:
        attributes[A.TOOL_DESCRIPTION] = tool.description
    return attributes


class _TracedTool:
    def __init__(self, call_id: str, name: str, tool: Tool | None, arguments: Any, execution: str) -> None:
        attributes = _tool_attributes(call_id, name, tool, execution)
        if _state.capture_content:
            attributes[A.TOOL_CALL_ARGUMENTS] = _dumps(arguments)
        self.span = _state.tracer.start_span(
            f"{A.OP_EXECUTE_TOOL} {name}", kind=SpanKind.INTERNAL, attributes=attributes
        )

    def __enter__(self) -> _TracedTool:
        self._token = otel_context.attach(trace.set_span_in_context(self.span))
        return self

    def result(self, output: Any, is_error: bool) -> None:
        if _state.capture_content:
            self.span.set_attribute(A.TOOL_CALL_RESULT, _dumps(output))
        if is_error:
            self.span.set_status(Status(StatusCode.ERROR, "the tool returned an error"))
            self.span.set_attribute(A.ERROR_TYPE, "tool_error")

    def __exit__(self, et: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, Exception):
            _mark_error(self.span, exc)
        elif exc is not None:
            self.span.set_attribute(A.AW_CANCELLED, True)
        otel_context.detach(self._token)
        self.span.end()


def tool_span(
    call_id: str, name: str, tool: Tool | None, arguments: Any, *, approved: bool = False
) -> _TracedTool | None:
    """A context manager around one server-side tool execution (None when the run is not traced)."""
    if _CURRENT.get() is None:
        return None
    return _TracedTool(call_id, name, tool, arguments, "approval" if approved else "server")


def tool_suspended(call_id: str, name: str, tool: Tool | None, arguments: Any, *, reason: str) -> None:
    """A tool call the run suspends on (``reason``: ``client`` or ``approval``): a span that ends at
    once, with the suspend as its event; the client's answer arrives in a later run."""
    if _CURRENT.get() is None:
        return
    traced = _TracedTool(call_id, name, tool, arguments, reason)
    traced.span.set_attribute(A.AW_TOOL_SUSPENDED, True)
    traced.span.add_event(A.EV_SUSPEND, {A.AW_SUSPEND_REASON: reason})
    traced.span.end()


# --- propagation and logs --------------------------------------------------------------------------


async def continue_trace(carrier: Mapping[str, str], awaitable: Awaitable[T]) -> T:
    """Await with the caller's W3C ``traceparent``/``tracestate`` (and baggage) as the current
    context, so tasks created meanwhile — the run — continue the caller's trace."""
    if not _state.tracing():
        return await awaitable
    token = otel_context.attach(propagate.extract(carrier))
    try:
        return await awaitable
    finally:
        otel_context.detach(token)
