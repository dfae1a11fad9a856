"""OpenTelemetry sink: GenAI-convention metrics from the metric table and one CLIENT span per Copilot model call.

The sink only records: instruments add to in-memory aggregations and finished spans go to the tracer
provider's processors (a bounded BatchSpanProcessor queue in production), so `handle()` does no I/O on
mitmproxy's event loop. Exporting happens on the SDK's own threads (see `exporter.otel_pipeline`, which
builds the real OTLP pipeline; `exporter.otel_config` resolves its settings).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util.types import AttributeValue

from exporter import __version__
from exporter import metricdefs as md
from exporter.dispatch import AuthFailure, Emitted, ExporterError, Health, LabelOverflow
from exporter.events import UsageEvent
from exporter.identity import pseudonym
from exporter.labels import OTHER
from exporter.observe import Observation, operation_name

if TYPE_CHECKING:
    from exporter.otel_config import OtlpSettings

log = logging.getLogger("copilot_proxy_insight")

PROVIDER_NAME = "github_copilot"  # gen_ai.provider.name: no well-known value exists for GitHub Copilot
SCOPE_NAME = "copilot_proxy_insight"
DEFAULT_CLOSE_TIMEOUT_S = 5.0  # the longest close() waits for the last flush before giving up
MAX_CONTENT_CHARS = 16_384  # prompt / answer text per span attribute (content capture only)

USER_ATTRIBUTE = "enduser.id"
PSEUDO_USER_ATTRIBUTE = "enduser.pseudo.id"
_STATUS_ATTRIBUTE = "http.response.status_code"

_TRACE_SALT = b"copilot-proxy-insight/interaction\0"


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


class OtelSink:
    """Records the bounded observations of every call as OTel metrics (from `metricdefs.METRICS`), and model
    calls as spans.

    The providers are created once by the caller (`otel_pipeline.build_otel_sink`, or in-memory ones in
    tests), injected here, and flushed and shut down by `close()`. Label values arrive bounded by the
    dispatcher's label policy, the same as Prometheus gets. Users are sent as `enduser.id`, or as
    `enduser.pseudo.id` when `pseudonym_key` is set (hashed here, with the project's `identity.pseudonym`)
    or `pseudonymous_users` says they already are pseudonyms.
    """

    name = "otel"

    def __init__(
        self,
        meter_provider: MeterProvider,
        tracer_provider: TracerProvider,
        *,
        pseudonym_key: str = "",
        pseudonymous_users: bool = False,
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
        self._max_content = max_content_chars
        self._close_timeout = close_timeout_s
        self._closed = False
        self._close_lock = threading.Lock()
        self._pseudonyms: dict[str, str] = {}
        meter = meter_provider.get_meter(SCOPE_NAME, __version__)
        self._tracer = tracer_provider.get_tracer(SCOPE_NAME, __version__)
        self._instruments: dict[str, Any] = {}
        self._names: dict[str, tuple[str, ...]] = {}
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

    # -- metrics --------------------------------------------------------------------------------

    def _attribute(self, name: str, value: str) -> AttributeValue | None:
        if name == self._user_attribute:
            return self._user(value)
        if name == _STATUS_ATTRIBUTE:
            return int(value) if value.isdigit() else None  # "error": no response, no status attribute
        if name == "gen_ai.request.model" and value == "unknown":
            return None  # a call whose request named no model
        return value

    def _record(
        self,
        m: md.MetricDef,
        value: float,
        labels: Sequence[str],
        extra: Mapping[str, AttributeValue | None] | None = None,
    ) -> None:
        attrs: dict[str, AttributeValue] = {}
        for name, v in zip(self._names[m.name], labels, strict=True):
            attribute = self._attribute(name, v)
            if attribute is not None:
                attrs[name] = attribute
        if extra:
            for name in m.otel_extra_attributes:
                x = extra.get(name)
                if x is not None:
                    attrs[name] = x
        instrument = self._instruments[m.name]
        if m.otel_instrument is md.MetricType.HISTOGRAM:
            instrument.record(value, attrs)
        else:
            instrument.add(value, attrs)

    def _user(self, user: str) -> str:
        if not self._key or user == OTHER:
            return user
        known = self._pseudonyms.get(user)
        if known is None:
            if len(self._pseudonyms) > 100_000:
                self._pseudonyms.clear()
            known = self._pseudonyms[user] = pseudonym(user, self._key)
        return known

    def _genai(self, item: Emitted, op: str | None, failure: str | None) -> dict[str, AttributeValue | None]:
        model = next((o.labels[2] for o in item.observations if o.metric is md.MODEL_CALLS), None)
        return {
            "gen_ai.operation.name": op,
            "gen_ai.provider.name": PROVIDER_NAME,
            "gen_ai.request.model": model if model != "unknown" else None,
            "server.address": item.event.host or None,
            "error.type": failure,
        }

    def handle(self, item: Emitted) -> None:
        """Records one call: cheap, in-memory only (called on mitmproxy's event loop)."""
        if self._closed:
            return
        event = item.event
        op = operation_name(event.kind) if event.model_call else None
        failure = error_type(event)
        genai = self._genai(item, op, failure)
        obs: Observation
        for obs in item.observations:
            # gen_ai.client.* describe GenAI operations only (obs.genai): telemetry posts, token exchanges and
            # model lists keep their durations in Prometheus (copilot_request_duration_seconds{kind=...}).
            if not obs.genai or obs.metric.name not in self._instruments:
                continue
            self._record(obs.metric, obs.value, obs.labels, genai)
        if event.model_call or event.counted:
            self._span(event, op or "chat", failure)

    def health(self, signal: Health) -> None:
        """Counts the exporter's own signals; safe from any thread (OTLP export failures arrive from the SDK's)."""
        if self._closed:
            return
        if isinstance(signal, ExporterError):
            self._record(md.EXPORTER_ERRORS, 1, (signal.component,))
        elif isinstance(signal, LabelOverflow):
            self._record(md.LABEL_OVERFLOWS, 1, (signal.label,))
        elif isinstance(signal, AuthFailure):
            self._record(md.PROXY_AUTH_FAILURES, 1, ())

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
            "copilot.credits.nano_aiu": event.credits_nano_aiu,
            "copilot.credits.source": event.credits_source,
            "copilot.credits.nano_aiu_estimated": event.nano_aiu_estimated,
            "copilot.error": event.error,
        }
        attrs: dict[str, AttributeValue] = {k: v for k, v in candidates.items() if v is not None}
        if self._content(event, attrs):
            attrs["copilot.content_truncated"] = True
        return attrs

    def _content(self, event: UsageEvent, attrs: dict[str, AttributeValue]) -> bool:
        """Prompt and answer as GenAI messages (content capture only); True when one was cut."""
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
            message = {
                "role": "assistant",
                "parts": [{"type": "text", "content": text}],
                "finish_reason": event.finish_reason or "unknown",
            }
            attrs["gen_ai.output.messages"] = json.dumps([message], ensure_ascii=False)
        return truncated

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
