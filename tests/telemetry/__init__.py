"""OpenTelemetry spans, metrics, env configuration and the console exporter on a real worker."""
