"""OpenTelemetry pipeline: OTLP exporters that report their failures, and the providers and sink built from settings."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricReader,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from exporter.otel_config import OtelConfigError, OtlpSettings, build_resource, resolve_settings
from exporter.settings import OtelOptions
from exporter.sinks.otel import DEFAULT_CLOSE_TIMEOUT_S, OtelSink

log = logging.getLogger("copilot_proxy_insight")

# Distinct attribute sets per instrument in the OTLP reader. The SDK's default, 2000, would fold sets
# that Prometheus keeps; the label policy (users, models, max_series) bounds them, this is a backstop.
METRIC_CARDINALITY_LIMIT = 100_000
TRACES_COMPONENT = "otel_traces"
METRICS_COMPONENT = "otel_metrics"

ErrorCallback = Callable[[str], None]


def _report(on_error: ErrorCallback, component: str) -> None:
    try:
        on_error(component)
    except Exception:  # the callback must never break an SDK thread
        log.exception("copilot-proxy-insight: the OpenTelemetry error callback failed")


class CountingSpanExporter(SpanExporter):
    """Wraps a span exporter; every failed export (FAILURE result or exception) calls `on_error`."""

    def __init__(self, inner: SpanExporter, on_error: ErrorCallback, component: str = TRACES_COMPONENT) -> None:
        self._inner = inner
        self._on_error = on_error
        self._component = component

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self._inner.export(spans)
        except Exception as e:
            log.debug("copilot-proxy-insight: span export raised %r", e)
            result = SpanExportResult.FAILURE
        if result is not SpanExportResult.SUCCESS:
            _report(self._on_error, self._component)
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


class CountingMetricExporter(MetricExporter):
    """Wraps a metric exporter (keeping its temporality and aggregation); failed exports call `on_error`."""

    def __init__(self, inner: MetricExporter, on_error: ErrorCallback, component: str = METRICS_COMPONENT) -> None:
        super().__init__(
            preferred_temporality=inner._preferred_temporality,
            preferred_aggregation=inner._preferred_aggregation,
        )
        self._inner = inner
        self._on_error = on_error
        self._component = component

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        try:
            result = self._inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        except Exception as e:
            log.debug("copilot-proxy-insight: metric export raised %r", e)
            result = MetricExportResult.FAILURE
        if result is not MetricExportResult.SUCCESS:
            _report(self._on_error, self._component)
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._inner.shutdown(timeout_millis=timeout_millis, **kwargs)


def build_exporters(settings: OtlpSettings) -> tuple[SpanExporter, MetricExporter]:
    """The OTLP span and metric exporters of `settings` (gRPC only with its optional package)."""
    headers = dict(settings.headers) if settings.headers is not None else None
    if settings.protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetrics
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpans
        except ImportError as e:
            raise OtelConfigError(
                "OTLP protocol 'grpc' needs the optional package opentelemetry-exporter-otlp-proto-grpc "
                "(pip install 'copilot-proxy-insight[otel-grpc]'); or use protocol http/protobuf"
            ) from e
        grpc_spans: SpanExporter = GrpcSpans(
            endpoint=settings.traces_endpoint, headers=headers, timeout=settings.timeout_s
        )
        grpc_metrics: MetricExporter = GrpcMetrics(
            endpoint=settings.metrics_endpoint, headers=headers, timeout=settings.timeout_s
        )
        return grpc_spans, grpc_metrics
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return (
        OTLPSpanExporter(endpoint=settings.traces_endpoint, headers=headers, timeout=settings.timeout_s),
        OTLPMetricExporter(endpoint=settings.metrics_endpoint, headers=headers, timeout=settings.timeout_s),
    )


def build_providers(
    settings: OtlpSettings, service_name: str, on_error: ErrorCallback
) -> tuple[MeterProvider, TracerProvider]:
    """Meter and tracer providers exporting over OTLP as `settings` say; failed exports call `on_error`."""
    span_exporter, metric_exporter = build_exporters(settings)
    resource = build_resource(service_name)
    tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    if settings.traces:
        # Bounded queue (OTEL_BSP_MAX_QUEUE_SIZE, default 2048): while the collector is away the oldest
        # spans are dropped instead of growing memory.
        tracer_provider.add_span_processor(BatchSpanProcessor(CountingSpanExporter(span_exporter, on_error)))
    else:
        span_exporter.shutdown()
    readers: list[MetricReader] = []
    if settings.metrics:
        counting = CountingMetricExporter(metric_exporter, on_error)
        try:
            reader = PeriodicExportingMetricReader(
                counting,
                export_interval_millis=settings.export_interval_ms,
                cardinality_limits={Counter: METRIC_CARDINALITY_LIMIT, Histogram: METRIC_CARDINALITY_LIMIT},
            )
        except TypeError:  # an SDK from before cardinality_limits (its limit is 2000 attribute sets)
            reader = PeriodicExportingMetricReader(counting, export_interval_millis=settings.export_interval_ms)
        readers.append(reader)
    else:
        metric_exporter.shutdown()
    return MeterProvider(resource=resource, metric_readers=readers, shutdown_on_exit=False), tracer_provider


def build_otel_sink(
    options: OtelOptions,
    on_error: ErrorCallback,
    *,
    timeout_s: float | None = None,
    close_timeout_s: float = DEFAULT_CLOSE_TIMEOUT_S,
) -> OtelSink | None:
    """The OTel sink with real OTLP exporters, or None when OpenTelemetry is not configured.

    See `otel_config.resolve_settings` for how options and environment combine; raises OtelConfigError for
    unusable settings. Export failures call `on_error("otel_traces")` / `on_error("otel_metrics")` from the
    SDK's export threads.
    """
    settings = resolve_settings(
        options.enabled, options.endpoint, options.protocol, options.headers, options.export_interval_s, timeout_s
    )
    if settings is None:
        return None
    meter_provider, tracer_provider = build_providers(settings, options.service_name, on_error)
    return OtelSink(
        meter_provider,
        tracer_provider,
        pseudonym_key=options.pseudonym_key,
        pseudonymous_users=options.pseudonymous_users,
        close_timeout_s=close_timeout_s,
        settings=settings,
    )


__all__ = ["OtelConfigError", "build_otel_sink", "build_providers"]
