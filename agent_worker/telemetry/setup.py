"""Export configured by the standard ``OTEL_*`` environment variables (what ``agent-worker run`` does).

The SDK's own auto-configuration (``opentelemetry-instrument``) exports to OTLP by default; a worker
must cost nothing when nobody asked for telemetry, so here a signal is exported only when asked:
``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER`` name exporters (``console``, ``otlp``,
``otlp_proto_http``, ``otlp_proto_grpc``, or any ``opentelemetry_*_exporter`` entry point;
``none`` disables), or ``OTEL_EXPORTER_OTLP_[TRACES_|METRICS_]ENDPOINT`` alone implies ``otlp``.
``otlp`` follows ``OTEL_EXPORTER_OTLP_[TRACES_|METRICS_]PROTOCOL`` (default ``http/protobuf``, the
exporter the extra installs). Everything else — ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_TRACES_SAMPLER``, ``OTEL_BSP_*``, ``OTEL_METRIC_EXPORT_INTERVAL``, endpoints and headers —
is read by the SDK itself. If a provider is already installed (``opentelemetry-instrument``, or an
application's own), it is left alone.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Literal

from agent_worker.errors import ConfigError
from agent_worker.logs import get_logger

__all__ = ["Configured", "configure_from_env", "exporter_names"]

log = get_logger("agent_worker.telemetry")

Signal = Literal["traces", "metrics"]
_PROTOCOLS = {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}


@dataclass
class Configured:
    """What :func:`configure_from_env` installed; :meth:`shutdown` flushes and stops it."""

    traces: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    _shutdown: list[Callable[[], Any]] = field(default_factory=list, repr=False)

    def shutdown(self) -> None:
        for stop in self._shutdown:
            try:
                stop()
            except Exception as exc:  # an exporter failing at exit must not mask the real exit
                log.warning("otel_shutdown_failed", error=repr(exc))
        self._shutdown.clear()


def exporter_names(signal: Signal, environ: Mapping[str, str]) -> list[str]:
    """The entry-point names to load for ``signal`` (empty: do not export it)."""
    upper = signal.upper()
    raw = environ.get(f"OTEL_{upper}_EXPORTER")
    if raw is None or not raw.strip():
        endpoint = environ.get(f"OTEL_EXPORTER_OTLP_{upper}_ENDPOINT") or environ.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        raw = "otlp" if endpoint else ""
    names = [n.strip() for n in raw.split(",") if n.strip() and n.strip().lower() != "none"]
    out = []
    for given in names:
        name = given
        if name == "otlp":
            protocol = (
                environ.get(f"OTEL_EXPORTER_OTLP_{upper}_PROTOCOL")
                or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf"
            ).strip()
            if protocol not in _PROTOCOLS:
                msg = f"unsupported OTLP protocol {protocol!r}; use http/protobuf or grpc"
                raise ConfigError(msg)
            name = _PROTOCOLS[protocol]
        out.append(name)
    return out


def _load(signal: Signal, name: str) -> Any:
    group = f"opentelemetry_{signal}_exporter"
    found = list(entry_points(group=group, name=name))
    if not found:
        hint = " (pip install opentelemetry-exporter-otlp-proto-grpc)" if name == "otlp_proto_grpc" else ""
        msg = f"OTEL_{signal.upper()}_EXPORTER: no exporter named {name!r}{hint}"
        raise ConfigError(msg)
    return found[0].load()


def _meter_provider_unset(provider: object) -> bool:
    # The API's placeholder until set_meter_provider() is called is a private proxy class.
    return type(provider).__name__ in ("_ProxyMeterProvider", "NoOpMeterProvider")


def configure_from_env(environ: Mapping[str, str] | None = None) -> Configured | None:
    """Install SDK tracer/meter providers as the ``OTEL_*`` variables ask; None when they ask for
    nothing (or the SDK is disabled or absent — then a warning says so)."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    traces, metrics = exporter_names("traces", env), exporter_names("metrics", env)
    if not traces and not metrics:
        return None
    try:
        from opentelemetry import metrics as otel_metrics  # noqa: PLC0415
        from opentelemetry import trace  # noqa: PLC0415
        from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader  # noqa: PLC0415
        from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415
    except ImportError:
        log.warning(
            "otel_not_installed", hint="pip install 'agent-worker[otel]'", traces=traces, metrics=metrics
        )
        return None
    # Attributes given here would override the variables, so default the name only when they are silent.
    named = env.get("OTEL_SERVICE_NAME") or "service.name=" in env.get("OTEL_RESOURCE_ATTRIBUTES", "")
    defaults = {} if named else {"service.name": "agent-worker"}
    resource = Resource.create(defaults)
    configured = Configured()
    if traces:
        if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            tracer_provider = TracerProvider(resource=resource)
            for name in traces:
                tracer_provider.add_span_processor(BatchSpanProcessor(_load("traces", name)()))
            trace.set_tracer_provider(tracer_provider)
            configured.traces = traces
            configured._shutdown.append(tracer_provider.shutdown)
        else:
            log.info("otel_tracer_provider_exists", kept=type(trace.get_tracer_provider()).__name__)
    if metrics and _meter_provider_unset(otel_metrics.get_meter_provider()):
        readers = [PeriodicExportingMetricReader(_load("metrics", name)()) for name in metrics]
        meter_provider = MeterProvider(resource=resource, metric_readers=readers)
        otel_metrics.set_meter_provider(meter_provider)
        configured.metrics = metrics
        configured._shutdown.append(meter_provider.shutdown)
    log.info("otel_configured", traces=configured.traces, metrics=configured.metrics)
    return configured
