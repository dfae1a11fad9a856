"""OpenTelemetry sink: GenAI-convention metrics from the metric table and one CLIENT span per Copilot model call.

The sink only records: instruments add to in-memory aggregations and finished spans go to the tracer
provider's processors (a bounded BatchSpanProcessor queue in production), so `handle()` does no I/O on
mitmproxy's event loop. Exporting happens on the SDK's own threads; a failed export is reported through
`on_error(component)` and never reaches the proxy. `otel_sink_from_options` builds the real OTLP pipeline
from the addon options and the standard `OTEL_*` environment variables.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricReader,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util.re import parse_env_headers
from opentelemetry.util.types import AttributeValue

from exporter import __version__
from exporter import metricdefs as md
from exporter.classify import CHAT_KINDS, Kind
from exporter.events import UsageEvent
from exporter.identity import pseudonym
from exporter.labels import OTHER, LabelBounds
from exporter.sinks.prometheus import FOLDABLE

log = logging.getLogger("copilot_proxy_insight")

PROVIDER_NAME = "github_copilot"  # gen_ai.provider.name: no well-known value exists for GitHub Copilot
SCOPE_NAME = "copilot_proxy_insight"
DEFAULT_SERVICE_NAME = "copilot-proxy-insight"
PROTOCOLS = ("http/protobuf", "grpc")
DEFAULT_PROTOCOL = "http/protobuf"
DEFAULT_EXPORT_TIMEOUT_S = 5.0  # per OTLP request, retries included (OTEL_EXPORTER_OTLP_TIMEOUT overrides)
DEFAULT_CLOSE_TIMEOUT_S = 5.0  # the longest close() waits for the last flush before giving up
MAX_CONTENT_CHARS = 16_384  # prompt / answer text per span attribute (content capture only)
# Distinct attribute sets per instrument in the OTLP reader. The SDK's default, 2000, would fold sets
# that Prometheus keeps; the sink's own caps (users, models, max_series) bound them, this is a backstop.
METRIC_CARDINALITY_LIMIT = 100_000
TRACES_COMPONENT = "otel_traces"
METRICS_COMPONENT = "otel_metrics"

USER_ATTRIBUTE = "enduser.id"
PSEUDO_USER_ATTRIBUTE = "enduser.pseudo.id"

# gen_ai.operation.name per kind of model call (semantic-conventions well-known values).
OPERATIONS: dict[str, str] = {
    **{k.value: "chat" for k in CHAT_KINDS},
    Kind.NEXT_EDIT.value: "chat",
    Kind.INSTANT_APPLY.value: "chat",
    Kind.PROXY_CHAT_OTHER.value: "chat",
    Kind.COMPLETION.value: "text_completion",
    Kind.EMBEDDINGS.value: "embeddings",
}

_TRACE_SALT = b"copilot-proxy-insight/interaction\0"
# The exporter's own counters: bounded label values, outside the series cap (as in Prometheus).
_UNCAPPED = (md.PROXY_AUTH_FAILURES, md.EXPORTER_ERRORS, md.LABEL_OVERFLOWS)

ErrorCallback = Callable[[str], None]


class OtelConfigError(ValueError):
    """The OpenTelemetry options or environment cannot be used (the addon turns this into an OptionsError)."""


# -- pure helpers -------------------------------------------------------------------------------------


def operation_name(kind: str) -> str | None:
    """gen_ai.operation.name of a kind of model call; None for kinds that are not GenAI operations."""
    return OPERATIONS.get(kind)


def error_type(event: UsageEvent) -> str | None:
    """error.type of a failed call: the HTTP status for 4xx/5xx, `no_response` when none came back."""
    if event.status is None:
        return "no_response"
    if event.status >= 400:
        return str(event.status)
    return None


def turn_ids(interaction_id: str) -> tuple[int, int]:
    """Deterministic (trace id, parent span id) of one chat turn, from its interaction id.

    Every model call of a turn gets the same trace id and the same (never exported) parent span id, so
    a trace backend groups the tool-loop steps of a turn into one trace, across proxy instances too.
    """
    digest = hashlib.sha256(_TRACE_SALT + interaction_id.encode("utf-8")).digest()
    trace_id = int.from_bytes(digest[:16], "big") or 1
    span_id = int.from_bytes(digest[16:24], "big") or 1
    return trace_id, span_id


def turn_context(interaction_id: str) -> Context:
    trace_id, span_id = turn_ids(interaction_id)
    parent = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    return trace.set_span_in_context(NonRecordingSpan(parent))


def _cut(text: str, limit: int) -> tuple[str, bool]:
    return (text, False) if len(text) <= limit else (text[:limit], True)


def _ns(seconds: float) -> int:
    return round(seconds * 1e9)


# -- exporters that report their failures --------------------------------------------------------------


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


# -- the sink -------------------------------------------------------------------------------------------


class OtelSink:
    """Records every UsageEvent as OTel metrics (from `metricdefs.METRICS`) and model calls as spans.

    The providers are created once by the caller (`otel_sink_from_options`, or in-memory ones in tests),
    injected here, and flushed and shut down by `close()`. Metric attributes are bounded like the
    Prometheus labels: users and models capped by `max_users` / `max_models`, label sets by `max_series`.
    Users are sent as `enduser.id`, or as `enduser.pseudo.id` when `pseudonym_key` is set (hashed here,
    with the project's `identity.pseudonym`) or `pseudonymous_users` says they already are pseudonyms.
    """

    def __init__(
        self,
        meter_provider: MeterProvider,
        tracer_provider: TracerProvider,
        *,
        pseudonym_key: str = "",
        pseudonymous_users: bool = False,
        max_users: int = 500,
        max_models: int = 100,
        max_series: int = 10_000,
        max_content_chars: int = MAX_CONTENT_CHARS,
        close_timeout_s: float = DEFAULT_CLOSE_TIMEOUT_S,
        settings: OtlpSettings | None = None,
    ) -> None:
        self.meter_provider = meter_provider
        self.settings = settings  # how the real exporters send; None with injected test providers
        self.tracer_provider = tracer_provider
        # Users become pseudonyms here (pseudonym_key: only towards the collector), or already are
        # (pseudonymous_users: the addon's copilot_pseudonym_key replaced them in every output).
        self._key = "" if pseudonymous_users else pseudonym_key
        pseudo = pseudonymous_users or bool(pseudonym_key)
        self._user_attribute = PSEUDO_USER_ATTRIBUTE if pseudo else USER_ATTRIBUTE
        self.max_series = max_series
        self._max_content = max_content_chars
        self._close_timeout = close_timeout_s
        self._closed = False
        self._close_lock = threading.Lock()
        self.bounds = LabelBounds(max_users=max_users, max_models=max_models, on_overflow=self._label_overflow)
        meter = meter_provider.get_meter(SCOPE_NAME, __version__)
        self._tracer = tracer_provider.get_tracer(SCOPE_NAME, __version__)
        self._instruments: dict[str, Any] = {}
        self._names: dict[str, tuple[str, ...]] = {}
        self._fold: dict[str, tuple[bool, ...]] = {}
        self._series: set[tuple[object, ...]] = set()
        for m in md.METRICS:
            if not m.otel_name:
                continue
            if m.otel_instrument is md.MetricType.HISTOGRAM:
                self._instruments[m.name] = meter.create_histogram(
                    m.otel_name,
                    unit=m.otel_unit,
                    description=m.help,
                    explicit_bucket_boundaries_advisory=m.otel_bucket_bounds or None,
                )
            elif m.otel_instrument is md.MetricType.COUNTER:
                self._instruments[m.name] = meter.create_counter(m.otel_name, unit=m.otel_unit, description=m.help)
            else:  # gauges (client and build info) stay Prometheus-only
                continue
            self._names[m.name] = tuple(self._user_attribute if a == USER_ATTRIBUTE else a for a in m.otel_attributes)
            if m not in _UNCAPPED:
                self._fold[m.name] = tuple(label in FOLDABLE for label in m.labels)

    # -- metrics --------------------------------------------------------------------------------

    def _record(
        self,
        m: md.MetricDef,
        value: float,
        labels: Sequence[AttributeValue | None],
        extra: Mapping[str, AttributeValue | None] | None = None,
    ) -> None:
        fold = self._fold.get(m.name)
        if fold is not None:
            labels = self._capped(m, fold, labels)
        attrs: dict[str, AttributeValue] = {}
        for name, v in zip(self._names[m.name], labels, strict=True):
            if v is not None:
                attrs[name] = v
        if extra:
            for name in m.otel_extra_attributes:
                v = extra.get(name)
                if v is not None:
                    attrs[name] = v
        instrument = self._instruments[m.name]
        if m.otel_instrument is md.MetricType.HISTOGRAM:
            instrument.record(value, attrs)
        else:
            instrument.add(value, attrs)

    def _capped(
        self, m: md.MetricDef, fold: tuple[bool, ...], labels: Sequence[AttributeValue | None]
    ) -> Sequence[AttributeValue | None]:
        """The Prometheus sink's series cap: past `max_series` label sets, new sets fold their
        network-derived values (user, editor, language, model) into `other`, counted as a `series` overflow."""
        key = (m.name, *labels)
        if key in self._series:
            return labels
        if len(self._series) >= self.max_series:
            labels = tuple(OTHER if f and v is not None else v for f, v in zip(fold, labels, strict=True))
            key = (m.name, *labels)
            self._label_overflow("series")
        self._series.add(key)
        return labels

    def _user(self, user: str) -> str:
        if not self._key or user == OTHER:
            return user
        return pseudonym(user, self._key)

    def handle(self, event: UsageEvent, detail: object = None) -> None:
        """Records one event: cheap, in-memory only (called on mitmproxy's event loop)."""
        if self._closed:
            return
        kind = event.kind
        op = operation_name(kind) if event.model_call else None
        failure = error_type(event)
        model = self.bounds.capped("model", event.model) if event.model and event.model_call else None
        genai: dict[str, AttributeValue | None] = {
            "gen_ai.operation.name": op,
            "gen_ai.provider.name": PROVIDER_NAME,
            "gen_ai.request.model": model,
            "server.address": event.host or None,
            "error.type": failure,
        }
        self._record(md.RESPONSES, 1, (kind, event.status), genai)
        if op is not None:
            # gen_ai.client.* describe GenAI operations only: telemetry posts, token exchanges and model
            # lists keep their durations in Prometheus (copilot_request_duration_seconds{kind=...}).
            if event.duration_s is not None:
                self._record(md.REQUEST_DURATION, event.duration_s, (kind,), genai)
            if event.ttft_s is not None:
                self._record(md.TIME_TO_FIRST_TOKEN, event.ttft_s, (kind,), genai)
        user = self._user(self.bounds.capped("user", event.user))
        if event.status is None or event.status >= 400:
            self._record(md.USER_ERRORS, 1, (user, kind, event.status))
        if event.counted:
            self._record(md.REQUESTS, 1, (user, event.editor, event.language, kind))
        else:
            self._record(md.SKIPPED, 1, (kind, event.skip_reason or "unknown"))
        if event.model_call:
            self._record(md.MODEL_CALLS, 1, (user, kind, model, event.initiator), genai)
            if op is not None:
                if event.input_tokens is not None:
                    self._record(md.TOKENS, event.input_tokens, (user, kind, model, "input"), genai)
                if event.output_tokens is not None:
                    self._record(md.TOKENS, event.output_tokens, (user, kind, model, "output"), genai)
        if event.model_call or event.counted:
            self._span(event, op or "chat", failure)

    def auth_failure(self) -> None:
        if not self._closed:
            self._record(md.PROXY_AUTH_FAILURES, 1, ())

    def exporter_error(self, component: str) -> None:
        """Counts an exporter failure (`copilot.exporter_errors`); safe from any thread."""
        if not self._closed:
            self._record(md.EXPORTER_ERRORS, 1, (component,))

    def _label_overflow(self, label: str) -> None:
        self._record(md.LABEL_OVERFLOWS, 1, (label,))

    # -- spans ----------------------------------------------------------------------------------

    def span_attributes(self, event: UsageEvent, op: str, failure: str | None) -> dict[str, AttributeValue]:
        """The attributes of a model call's span (GenAI conventions plus `copilot.*`)."""
        candidates: dict[str, AttributeValue | None] = {
            "gen_ai.operation.name": op,
            "gen_ai.provider.name": PROVIDER_NAME,
            "gen_ai.request.model": event.model,
            "gen_ai.response.model": event.resolved_model,
            "gen_ai.request.stream": event.streamed,
            "gen_ai.response.finish_reasons": [event.finish_reason] if event.finish_reason else None,
            "gen_ai.response.time_to_first_chunk": event.ttft_s,
            "gen_ai.usage.input_tokens": event.input_tokens,
            "gen_ai.usage.output_tokens": event.output_tokens,
            "gen_ai.usage.cache_read.input_tokens": event.cached_tokens,
            "gen_ai.usage.reasoning.output_tokens": event.reasoning_tokens,
            "server.address": event.host or None,
            "http.request.method": event.method or None,
            "url.path": event.path or None,
            "http.response.status_code": event.status,
            "error.type": failure,
            self._user_attribute: self._user(event.user),
            "copilot.editor": event.editor,
            "copilot.editor_version": event.editor_version,
            "copilot.plugin": event.plugin,
            "copilot.plugin_version": event.plugin_version,
            "copilot.language": event.language,
            "copilot.kind": event.kind,
            "copilot.initiator": event.initiator,
            "copilot.initiator_source": event.initiator_source,
            "copilot.interaction_id": event.interaction_id,
            "copilot.request_id": event.request_id,
            "copilot.intent": event.intent,
            "copilot.counted": event.counted,
            "copilot.skip_reason": event.skip_reason,
            "copilot.speculative": event.speculative,
            "copilot.tool_calls": list(event.tool_calls) if event.tool_calls else None,
            "copilot.nano_aiu": event.nano_aiu,
            "copilot.error": event.error,
        }
        attrs: dict[str, AttributeValue] = {k: v for k, v in candidates.items() if v is not None}
        truncated = False
        if event.prompt is not None:
            text, cut = _cut(event.prompt, self._max_content)
            truncated |= cut
            attrs["gen_ai.input.messages"] = json.dumps(
                [{"role": "user", "parts": [{"type": "text", "content": text}]}], ensure_ascii=False
            )
        if event.completion is not None:
            text, cut = _cut(event.completion, self._max_content)
            truncated |= cut
            attrs["gen_ai.output.messages"] = json.dumps(
                [
                    {
                        "role": "assistant",
                        "parts": [{"type": "text", "content": text}],
                        "finish_reason": event.finish_reason or "unknown",
                    }
                ],
                ensure_ascii=False,
            )
        if truncated:
            attrs["copilot.content_truncated"] = True
        return attrs

    def _span(self, event: UsageEvent, op: str, failure: str | None) -> None:
        start = _ns(event.timestamp.timestamp())
        end = start + _ns(event.duration_s or 0.0)
        name = f"{op} {event.model}" if event.model else op
        context = turn_context(event.interaction_id) if event.interaction_id else None
        span = self._tracer.start_span(
            name,
            context=context,
            kind=SpanKind.CLIENT,
            attributes=self.span_attributes(event, op, failure),
            start_time=start,
        )
        if failure is not None:
            span.set_status(Status(StatusCode.ERROR, event.error or f"HTTP {event.status}"))
        span.end(end_time=end)

    # -- lifecycle ------------------------------------------------------------------------------

    def force_flush(self, timeout_s: float = 5.0) -> bool:
        """Exports what is pending now (blocking; for tests and shutdown, never on the request path)."""
        ms = int(timeout_s * 1000)
        traces = self.tracer_provider.force_flush(ms)
        try:
            metrics = self.meter_provider.force_flush(ms)
        except Exception as e:  # the SDK raises when a reader fails to collect
            log.warning("copilot-proxy-insight: OpenTelemetry metric flush failed: %s", e)
            metrics = False
        return bool(traces and metrics)

    def close(self) -> None:
        """Flushes and shuts both providers down; returns within `close_timeout_s` even if the collector hangs.

        Shutting a provider down exports what is still pending (the span queue, the last metric
        collection); traces and metrics shut down side by side so a dead collector costs one timeout.
        """
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        deadline = time.monotonic() + self._close_timeout
        timeout_ms = self._close_timeout * 1000

        def run(what: str, job: Callable[[], object]) -> threading.Thread:
            def guarded() -> None:
                try:
                    job()
                except Exception as e:
                    log.warning("copilot-proxy-insight: OpenTelemetry %s shutdown failed: %s", what, e)

            t = threading.Thread(target=guarded, name=f"copilot-proxy-insight-otel-{what}-close", daemon=True)
            t.start()
            return t

        threads = [
            run("traces", self.tracer_provider.shutdown),
            run("metrics", lambda: self.meter_provider.shutdown(timeout_millis=timeout_ms)),
        ]
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in threads):
            log.warning(
                "copilot-proxy-insight: OpenTelemetry export did not finish within %.0f s; dropping what is left",
                self._close_timeout,
            )


# -- building the real pipeline from options and environment --------------------------------------------


def _env(name: str) -> str:
    return os.environ.get(name, "").strip()


def _truthy(value: str) -> bool:
    return value.lower() in ("1", "true", "yes", "on")


def parse_headers(headers: str) -> dict[str, str]:
    """`key=value,key2=value2` (the OTEL_EXPORTER_OTLP_HEADERS format, values URL-encoded)."""
    parsed = dict(parse_env_headers(headers, liberal=True))
    if headers.strip() and not parsed:
        raise OtelConfigError(f"OTLP headers: expected key=value,key2=value2, got {headers!r}")
    return parsed


def build_resource(service_name: str) -> Resource:
    """Resource.create with OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES; the option wins over both."""
    attributes: dict[str, AttributeValue] = {"service.version": __version__}
    if service_name.strip():
        attributes["service.name"] = service_name.strip()
    elif not OTELResourceDetector().detect().attributes.get("service.name"):
        attributes["service.name"] = DEFAULT_SERVICE_NAME
    return Resource.create(attributes)


_ENDPOINT_VARS = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
)
_TIMEOUT_VARS = (
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
)
_DEFAULT_ENDPOINTS = {"http/protobuf": "http://localhost:4318", "grpc": "http://localhost:4317"}
DEFAULT_EXPORT_INTERVAL_MS = 60_000.0


@dataclass(frozen=True, slots=True)
class OtlpSettings:
    """Where and how the OTLP exporters send, resolved from the options first, then OTEL_* variables."""

    protocol: str
    traces_endpoint: str
    metrics_endpoint: str
    headers: Mapping[str, str] | None  # from the option; None: the exporters read OTEL_EXPORTER_OTLP_*HEADERS
    timeout_s: float | None  # None: the exporters read OTEL_EXPORTER_OTLP_*TIMEOUT
    export_interval_ms: float
    traces: bool
    metrics: bool

    def describe(self) -> str:
        """One line for the log (header names only: their values are often credentials)."""
        signals = [name for name, on in (("traces", self.traces), ("metrics", self.metrics)) if on]
        names = sorted(self.headers or parse_env_headers(_env("OTEL_EXPORTER_OTLP_HEADERS"), liberal=True))
        return (
            f"OTLP {self.protocol} {'+'.join(signals) or 'nothing'}: traces to {self.traces_endpoint}, "
            f"metrics to {self.metrics_endpoint} every {self.export_interval_ms / 1000:g} s"
            + (f", headers {', '.join(names)}" if names else "")
        )


def _signal_endpoint(protocol: str, option: str, signal: str) -> str:
    if option:
        if protocol == "grpc":
            return option
        parts = urlsplit(option)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise OtelConfigError(f"OTLP endpoint must be an http:// or https:// URL, not {option!r}")
        return f"{option.rstrip('/')}/v1/{signal}"
    specific = _env(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
    if specific:
        return specific  # the signal-specific variable is the full URL
    base = _env("OTEL_EXPORTER_OTLP_ENDPOINT") or _DEFAULT_ENDPOINTS[protocol]
    return base if protocol == "grpc" else f"{base.rstrip('/')}/v1/{signal}"


def resolve_settings(
    enabled: bool,
    endpoint: str,
    protocol: str,
    headers: str,
    export_interval_s: float,
    timeout_s: float | None = None,
) -> OtlpSettings | None:
    """The OTLP settings, or None when OpenTelemetry is not configured (pure: reads only os.environ).

    On when `enabled` or an OTLP endpoint is given (option or OTEL_EXPORTER_OTLP_[TRACES_|METRICS_]ENDPOINT);
    off with OTEL_SDK_DISABLED=true. Empty options fall back to the OTEL_* environment, then to the
    defaults (http/protobuf to http://localhost:4318, metrics every 60 s). OTEL_TRACES_EXPORTER=none or
    OTEL_METRICS_EXPORTER=none turns one signal off. Raises OtelConfigError for unusable settings.
    """
    if _truthy(_env("OTEL_SDK_DISABLED")):
        return None
    endpoint = endpoint.strip()
    if not (enabled or endpoint or any(_env(v) for v in _ENDPOINT_VARS)):
        return None
    proto = (protocol.strip() or _env("OTEL_EXPORTER_OTLP_PROTOCOL") or DEFAULT_PROTOCOL).lower()
    if proto not in PROTOCOLS:
        raise OtelConfigError(
            f"OTLP protocol must be one of {', '.join(PROTOCOLS)}, not {proto!r} (http/json is not supported)"
        )
    if export_interval_s < 0:
        raise OtelConfigError("the metric export interval must be 0 (environment or 60 s) or a positive number")
    interval_ms = export_interval_s * 1000
    if not interval_ms:
        try:
            interval_ms = float(_env("OTEL_METRIC_EXPORT_INTERVAL") or DEFAULT_EXPORT_INTERVAL_MS)
        except ValueError as e:
            raise OtelConfigError(f"OTEL_METRIC_EXPORT_INTERVAL must be milliseconds: {e}") from e
        if interval_ms <= 0:
            raise OtelConfigError("OTEL_METRIC_EXPORT_INTERVAL must be positive")
    timeout = timeout_s
    if timeout is None and not any(_env(v) for v in _TIMEOUT_VARS):
        timeout = DEFAULT_EXPORT_TIMEOUT_S
    return OtlpSettings(
        protocol=proto,
        traces_endpoint=_signal_endpoint(proto, endpoint, "traces"),
        metrics_endpoint=_signal_endpoint(proto, endpoint, "metrics"),
        headers=parse_headers(headers) if headers.strip() else None,
        timeout_s=timeout,
        export_interval_ms=interval_ms,
        traces=_env("OTEL_TRACES_EXPORTER").lower() != "none",
        metrics=_env("OTEL_METRICS_EXPORTER").lower() != "none",
    )


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


def otel_sink_from_options(
    enabled: bool,
    endpoint: str,
    protocol: str,
    headers: str,
    service_name: str,
    export_interval_s: float,
    pseudonymize_key: str,
    on_error: ErrorCallback,
    *,
    pseudonymous_users: bool = False,
    max_users: int = 500,
    max_models: int = 100,
    max_series: int = 10_000,
    timeout_s: float | None = None,
    close_timeout_s: float = DEFAULT_CLOSE_TIMEOUT_S,
) -> OtelSink | None:
    """The OTel sink with real OTLP exporters, or None when OpenTelemetry is not configured.

    See `resolve_settings` for how options and environment combine; raises OtelConfigError for unusable
    settings. Export failures call `on_error("otel_traces")` / `on_error("otel_metrics")` from the SDK's
    export threads.
    """
    settings = resolve_settings(enabled, endpoint, protocol, headers, export_interval_s, timeout_s)
    if settings is None:
        return None
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
    meter_provider = MeterProvider(resource=resource, metric_readers=readers, shutdown_on_exit=False)
    return OtelSink(
        meter_provider,
        tracer_provider,
        pseudonym_key=pseudonymize_key,
        pseudonymous_users=pseudonymous_users,
        max_users=max_users,
        max_models=max_models,
        max_series=max_series,
        close_timeout_s=close_timeout_s,
        settings=settings,
    )
