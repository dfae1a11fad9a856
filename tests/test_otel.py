"""OTel sink: metrics and spans over the sample exchanges, with in-memory reader and span exporter."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import sys
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    MetricExporter,
    MetricExportResult,
    MetricsData,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.semconv._incubating.metrics import gen_ai_metrics
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util.re import parse_env_headers

from exporter import __version__, observe, otel_config, otel_pipeline
from exporter import metricdefs as md
from exporter.dispatch import AuthFailure, ExporterError
from exporter.events import UsageEvent
from exporter.identity import pseudonym
from exporter.otel_config import OtelConfigError
from exporter.otel_pipeline import build_otel_sink
from exporter.settings import OtelOptions
from exporter.sinks import otel
from exporter.sinks.otel import OtelSink
from exporter.sinks.prometheus import PrometheusSink
from tests import samples, telemetry_samples
from tests.conftest import Harness
from tests.e2e.harness import closed_port
from tests.factories import Driven, chat, event

AGENT_TURN = samples.AGENT_TURN_INTERACTION_ID


@dataclass
class Otel:
    sink: Driven  # the OtelSink behind a real dispatcher and label policy
    reader: InMemoryMetricReader
    spans: InMemorySpanExporter

    def points(self, otel_name: str) -> list[tuple[dict[str, Any], Any]]:
        data = self.reader.get_metrics_data()
        out: list[tuple[dict[str, Any], Any]] = []
        if data is None:
            return out
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == otel_name:
                        out.extend((dict(p.attributes or {}), p) for p in metric.data.data_points)
        return out

    def metric(self, otel_name: str) -> Any:
        data = self.reader.get_metrics_data()
        assert data is not None
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == otel_name:
                        return metric
        raise AssertionError(f"{otel_name} not exported")

    def value(self, otel_name: str, **attrs: Any) -> float:
        """Sum of a counter (or histogram sum) over the points whose attributes include `attrs`."""
        total = 0.0
        for got, p in self.points(otel_name):
            if all(got.get(k) == v for k, v in attrs.items()):
                total += p.sum if isinstance(p, HistogramDataPoint) else p.value
        return total

    def finished(self) -> Sequence[ReadableSpan]:
        return self.spans.get_finished_spans()


_CAPS = ("max_users", "max_models", "max_series")


def make(**kwargs: Any) -> Otel:
    """An OtelSink on in-memory providers, behind a dispatcher (caps: max_users, max_models, max_series)."""
    reader = InMemoryMetricReader()
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    caps = {k: kwargs.pop(k) for k in _CAPS if k in kwargs}
    sink = OtelSink(MeterProvider(metric_readers=[reader]), tracer_provider, **kwargs)
    return Otel(Driven(sink, **caps), reader, spans)


@pytest.fixture
def o() -> Iterator[Otel]:
    x = make()
    yield x
    x.sink.close()


def replay(h: Harness, sink: Driven | None = None) -> list[UsageEvent]:
    for ex in samples.ALL:
        h.flow(ex)
    if sink is not None:
        for ev in h.events:
            sink.handle(ev)
    return h.events


# -- the metric table -------------------------------------------------------------------------------------


def test_table_uses_the_current_genai_semconv_names() -> None:
    by_name = {m.otel_name: m for m in md.METRICS if m.otel_name}
    assert by_name[gen_ai_metrics.GEN_AI_CLIENT_TOKEN_USAGE] is md.TOKENS
    assert by_name[gen_ai_metrics.GEN_AI_CLIENT_OPERATION_DURATION] is md.REQUEST_DURATION
    assert by_name[gen_ai_metrics.GEN_AI_CLIENT_OPERATION_TIME_TO_FIRST_CHUNK] is md.TIME_TO_FIRST_TOKEN
    assert md.TOKENS.otel_instrument is md.MetricType.HISTOGRAM and md.TOKENS.otel_unit == "{token}"
    assert md.REQUEST_DURATION.otel_unit == md.TIME_TO_FIRST_TOKEN.otel_unit == "s"
    # Every OTel metric names one attribute per Prometheus label; the Prometheus side is untouched.
    for m in md.METRICS:
        if m.otel_name:
            assert len(m.otel_attributes) == len(m.labels), m.name
            assert m.otel_unit, m.name
    assert md.TOKENS.name == "copilot_tokens" and md.TOKENS.type is md.MetricType.COUNTER


def test_table_rejects_a_missing_attribute_name() -> None:
    with pytest.raises(ValueError, match="one attribute per label"):
        md.MetricDef("x", md.MetricType.COUNTER, ("a", "b"), "h", otel_name="x", otel_attributes=("a",))


def test_every_otel_instrument_of_the_table_is_exported(o: Otel) -> None:
    o.sink.handle(event())
    o.sink.handle(event(counted=False, skip_reason="speculative"))
    o.sink.handle(event(counted=False, skip_reason="http_error", status=429))
    o.sink.handle(event(kind="telemetry", model_call=False, counted=False, telemetry=telemetry_samples.full_report()))
    o.sink.handle(event(kind="chat_agent", credits_nano_aiu=5, credits_source="server"))
    o.sink.handle(event(kind="chat_agent", unknown_price=True))
    o.sink.health(AuthFailure())
    o.sink.health(ExporterError("jsonlog"))
    small = make(max_users=1)
    small.sink.handle(event(user="bob"))
    small.sink.handle(event(user="carol"))
    exported = {m.name for x in (o, small) for m in _metrics(x.reader.get_metrics_data())}
    want = {m.otel_name for m in md.METRICS if m.otel_name}
    assert want <= exported
    assert {m.otel_name for m in md.METRICS if m.type is md.MetricType.GAUGE} == {""}  # info gauges: Prometheus only
    small.sink.close()


def _metrics(data: MetricsData | None) -> list[Any]:
    assert data is not None
    return [m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics]


# -- metrics over the sample exchanges ----------------------------------------------------------------


def test_counters_agree_with_prometheus_for_every_label_set(harness: Harness, o: Otel) -> None:
    """One table feeds both sinks: every Prometheus counter sample has the same value in OTel."""
    replay(harness, o.sink)
    registry = harness.addon.prometheus.registry
    compared = 0
    for m in (md.REQUESTS, md.MODEL_CALLS, md.TOKENS, md.RESPONSES, md.SKIPPED):
        to_label = dict(zip(m.otel_attributes, m.labels, strict=True))
        otel_values: dict[tuple[tuple[str, str], ...], float] = defaultdict(float)
        for attrs, p in o.points(m.otel_name):
            labels = {label: "unknown" for label in m.labels}
            if m is md.RESPONSES:
                labels["code"] = "error"
            for k, v in attrs.items():
                if k in to_label:
                    labels[to_label[k]] = str(v)
            otel_values[tuple(sorted(labels.items()))] += p.sum if isinstance(p, HistogramDataPoint) else p.value
        prom_values: dict[tuple[tuple[str, str], ...], float] = {}
        for family in registry.collect():
            for s in family.samples:
                if s.name == m.exposed_name and s.value:
                    prom_values[tuple(sorted(s.labels.items()))] = s.value
        assert prom_values, m.name
        assert {k: v for k, v in otel_values.items() if v} == prom_values, m.name
        compared += len(prom_values)
    assert compared >= 20


def test_token_usage_histogram(harness: Harness, o: Otel) -> None:
    replay(harness, o.sink)
    name = "gen_ai.client.token.usage"
    assert o.metric(name).unit == "{token}"
    agent = {"gen_ai.request.model": "gpt-4.1", "copilot.kind": "chat_agent"}
    assert o.value(name, **agent, **{"gen_ai.token.type": "input"}) == 9120 + 9190
    assert o.value(name, **agent, **{"gen_ai.token.type": "output"}) == 21 + 14
    ((attrs, point),) = [
        (a, p)
        for a, p in o.points(name)
        if a.get("gen_ai.request.model") == "gpt-4.1"
        and a["copilot.kind"] == "chat_agent"
        and a["gen_ai.token.type"] == "input"
    ]
    assert attrs == {
        "enduser.id": "alice",
        "copilot.kind": "chat_agent",
        "gen_ai.request.model": "gpt-4.1",
        "gen_ai.token.type": "input",
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "github_copilot",
        "server.address": "api.business.githubcopilot.com",
    }
    assert point.count == 2 and point.min == 9120 and point.max == 9190
    assert tuple(point.explicit_bounds) == md.TOKEN_BUCKETS
    completion = {"gen_ai.operation.name": "text_completion", "gen_ai.token.type": "output"}
    assert o.value(name, **completion) == 4 + 5 + 0 + 14  # the empty completion reports 0 output tokens
    total_in = sum(e.input_tokens or 0 for e in harness.events if e.model_call)
    assert o.value(name, **{"gen_ai.token.type": "input"}) == total_in


def test_duration_and_time_to_first_chunk(harness: Harness, o: Otel) -> None:
    events = replay(harness, o.sink)
    duration = o.metric("gen_ai.client.operation.duration")
    assert duration.unit == "s"
    points = [p for _, p in o.points("gen_ai.client.operation.duration")]
    assert tuple(points[0].explicit_bounds) == md.DURATION_BUCKETS
    # Only GenAI operations: the token exchange and the telemetry post are not in gen_ai.client.*.
    model_calls = [e for e in events if e.model_call]
    assert sum(p.count for p in points) == len(model_calls) == 12
    assert o.value("gen_ai.client.operation.duration") == pytest.approx(sum(e.duration_s or 0 for e in model_calls))
    completions = [p for a, p in o.points("gen_ai.client.operation.duration") if a["copilot.kind"] == "completion"]
    assert sum(p.count for p in completions) == 5
    ttft = [(a, p) for a, p in o.points("gen_ai.client.operation.time_to_first_chunk")]
    assert tuple(ttft[0][1].explicit_bounds) == md.TTFT_BUCKETS
    assert sum(p.count for a, p in ttft if a["copilot.kind"] == "completion") == 4  # the empty one has no token
    assert all(a["gen_ai.provider.name"] == "github_copilot" and "error.type" not in a for a, _ in ttft)


def test_interaction_counters_by_user_editor_language_kind(harness: Harness, o: Otel) -> None:
    replay(harness, o.sink)
    v = o.value
    req = "copilot.requests"
    assert v(req, **{"enduser.id": "alice", "copilot.editor": "vscode", "copilot.language": "python"}) == 1
    assert v(req, **{"copilot.editor": "jetbrains-iu", "copilot.language": "java", "copilot.kind": "completion"}) == 1
    assert v(req, **{"copilot.editor": "vscode", "copilot.kind": "chat_agent"}) == 3
    assert v(req, **{"copilot.editor": "zed", "copilot.kind": "chat"}) == 1
    assert v(req) == 8
    assert v("copilot.skipped_requests", **{"copilot.kind": "completion", "copilot.skip_reason": "speculative"}) == 1
    assert v("copilot.skipped_requests", **{"copilot.kind": "chat_agent", "copilot.skip_reason": "agent_step"}) == 1
    assert v("copilot.skipped_requests", **{"copilot.kind": "telemetry", "copilot.skip_reason": "not_interaction"}) == 1
    calls = {"copilot.kind": "chat_agent", "gen_ai.request.model": "gpt-4.1", "copilot.initiator": "agent"}
    assert v("copilot.model_calls", **calls) == 1
    assert v("copilot.model_calls") == 12
    assert v("copilot.responses", **{"copilot.kind": "completion", "http.response.status_code": 200}) == 5
    assert o.metric("copilot.requests").unit == "{request}"


def test_errors_responses_and_failures(o: Otel) -> None:
    o.sink.handle(chat(status=429, counted=False, skip_reason="http_error", input_tokens=None, output_tokens=None))
    o.sink.handle(event(status=None, error="Client disconnected.", finish_reason="cancelled", ttft_s=None))
    o.sink.handle(event(status=200))
    r = "copilot.responses"
    assert o.value(r, **{"http.response.status_code": 429, "error.type": "429"}) == 1
    assert o.value(r, **{"error.type": "no_response"}) == 1
    assert [a for a, _ in o.points(r) if "http.response.status_code" not in a] == [
        {"copilot.kind": "completion", "error.type": "no_response"}
    ]
    assert o.value(r, **{"http.response.status_code": 200}) == 1
    failed = [a for a, _ in o.points("gen_ai.client.operation.duration") if "error.type" in a]
    assert sorted(a["error.type"] for a in failed) == ["429", "no_response"]
    spans = {s.attributes.get("http.response.status_code"): s for s in o.finished() if s.attributes is not None}
    assert spans[429].status.status_code is StatusCode.ERROR and spans[429].attributes["error.type"] == "429"
    assert spans[None].status.status_code is StatusCode.ERROR
    assert spans[None].status.description == "Client disconnected."
    assert spans[None].attributes["error.type"] == "no_response"
    assert spans[200].status.status_code is StatusCode.UNSET and "error.type" not in spans[200].attributes
    o.sink.health(ExporterError("otel_traces"))
    o.sink.health(ExporterError("otel_traces"))
    o.sink.health(AuthFailure())
    assert o.value("copilot.exporter_errors", **{"copilot.component": "otel_traces"}) == 2
    assert o.value("copilot.proxy_auth_failures") == 1


def test_users_and_models_are_capped_like_prometheus() -> None:
    x = make(max_users=2, max_models=1)
    for user in ("alice", "bob", "carol", "dave"):
        x.sink.handle(event(user=user))
    x.sink.handle(event(model="other-model"))
    users = {a["enduser.id"] for a, _ in x.points("copilot.requests")}
    assert users == {"alice", "bob", "other"}
    assert x.value("copilot.requests", **{"enduser.id": "other"}) == 2
    assert x.value("copilot.label_overflows", **{"copilot.label": "user"}) == 2
    assert x.value("copilot.label_overflows", **{"copilot.label": "model"}) == 1
    assert {a.get("gen_ai.request.model") for a, _ in x.points("copilot.model_calls")} == {"gpt-41-copilot", "other"}
    # Spans are not metric dimensions: they keep the real values.
    assert {s.attributes["enduser.id"] for s in x.finished() if s.attributes} == {"alice", "bob", "carol", "dave"}
    x.sink.close()


# -- spans ---------------------------------------------------------------------------------------------


def test_one_client_span_per_model_call(harness: Harness, o: Otel) -> None:
    events = replay(harness, o.sink)
    spans = o.finished()
    calls = [e for e in events if e.model_call or e.counted]
    assert len(spans) == len(calls) == 12
    for ev, span in zip(calls, spans, strict=True):
        assert span.kind is SpanKind.CLIENT
        start = round(ev.timestamp.timestamp() * 1e9)
        assert span.start_time == start
        assert span.end_time == start + round((ev.duration_s or 0) * 1e9)
        a = span.attributes
        assert a is not None
        op = "text_completion" if ev.kind == "completion" else "chat"
        assert span.name == f"{op} {ev.model}"
        assert a["gen_ai.operation.name"] == op
        assert a["gen_ai.request.model"] == ev.model
        assert a.get("gen_ai.response.model") == ev.resolved_model
        assert a.get("gen_ai.usage.input_tokens") == ev.input_tokens
        assert a.get("gen_ai.usage.output_tokens") == ev.output_tokens
        assert a["gen_ai.provider.name"] == "github_copilot"
        assert a["server.address"] == ev.host
        assert a["http.response.status_code"] == ev.status == 200
        assert a["enduser.id"] == "alice"
        assert a["copilot.kind"] == ev.kind and a["copilot.counted"] is ev.counted
        assert a.get("copilot.skip_reason") == ev.skip_reason
        assert a["copilot.editor"] == ev.editor and a["copilot.language"] == ev.language
        assert a["copilot.initiator"] == ev.initiator
        assert a.get("copilot.interaction_id") == ev.interaction_id
        assert tuple(a["gen_ai.response.finish_reasons"]) == (ev.finish_reason,)
        assert "gen_ai.input.messages" not in a and "gen_ai.output.messages" not in a
        assert "error.type" not in a and span.status.status_code is StatusCode.UNSET
    agent = next(s for s in spans if s.attributes and s.attributes.get("copilot.kind") == "chat_agent")
    assert agent.attributes is not None
    assert agent.attributes["copilot.editor_version"] == "vscode/1.111.0"
    assert agent.attributes["gen_ai.usage.cache_read.input_tokens"] == 8064
    assert agent.attributes["gen_ai.request.stream"] is True
    assert tuple(agent.attributes["copilot.tool_calls"]) == ("read_file",)


def test_calls_of_one_turn_share_a_deterministic_trace(harness: Harness, o: Otel) -> None:
    events = replay(harness, o.sink)
    spans = o.finished()
    by_turn: dict[str | None, list[ReadableSpan]] = defaultdict(list)
    for span in spans:
        assert span.attributes is not None
        by_turn[span.attributes.get("copilot.interaction_id")].append(span)  # type: ignore[arg-type]
    turn = by_turn[AGENT_TURN]
    # The counted turn, its agent step, the follow-up and the next-edit suggestion carry the same id.
    assert len(turn) == sum(e.interaction_id == AGENT_TURN for e in events) == 4
    trace_id, parent_id = otel.turn_ids(AGENT_TURN)
    assert {s.context.trace_id for s in turn} == {trace_id}
    assert {s.parent.span_id for s in turn if s.parent} == {parent_id}
    assert len({s.context.span_id for s in turn}) == 4
    other_turns = {s.context.trace_id for k, ss in by_turn.items() if k not in (None, AGENT_TURN) for s in ss}
    assert len(other_turns) == 2 and trace_id not in other_turns
    # Calls without an interaction id (completions) are root spans, each in its own trace.
    loose = by_turn[None]
    assert loose and all(s.parent is None for s in loose)
    assert len({s.context.trace_id for s in loose}) == len(loose)
    # Deterministic: another sink (another proxy) puts the same turn in the same trace.
    again = make()
    again.sink.handle(chat(interaction_id=AGENT_TURN))
    assert again.finished()[0].context.trace_id == trace_id
    again.sink.close()


def test_pseudonymous_user_ids(harness: Harness) -> None:
    key = "k3y-for-tests"
    x = make(pseudonym_key=key)
    replay(harness, x.sink)
    expected = "u-" + hmac.new(key.encode(), b"alice", hashlib.sha256).hexdigest()[:16]
    assert expected == pseudonym("alice", key)  # the project's pseudonyms: the same as copilot_pseudonym_key
    for span in x.finished():
        assert span.attributes is not None
        assert span.attributes["enduser.pseudo.id"] == expected
        assert "enduser.id" not in span.attributes
    assert {a["enduser.pseudo.id"] for a, _ in x.points("copilot.requests")} == {expected}
    assert {a["enduser.pseudo.id"] for a, _ in x.points("gen_ai.client.token.usage")} == {expected}
    dump = json.dumps(
        [dict(s.attributes or {}) for s in x.finished()]
        + [a for m in ("copilot.requests", "copilot.model_calls", "gen_ai.client.token.usage") for a, _ in x.points(m)],
        default=str,
    )
    assert "alice" not in dump
    other_key = make(pseudonym_key="another-key")
    other_key.sink.handle(event())
    assert other_key.finished()[0].attributes["enduser.pseudo.id"] not in (expected, "alice")  # type: ignore[index]
    x.sink.close()
    other_key.sink.close()


def test_users_already_pseudonymous_are_not_hashed_again() -> None:
    x = make(pseudonymous_users=True, pseudonym_key="ignored")
    x.sink.handle(event(user="u-0123456789abcdef"))
    (span,) = x.finished()
    assert span.attributes is not None
    assert span.attributes["enduser.pseudo.id"] == "u-0123456789abcdef" and "enduser.id" not in span.attributes
    assert [a["enduser.pseudo.id"] for a, _ in x.points("copilot.requests")] == ["u-0123456789abcdef"]
    x.sink.close()


def test_series_cap_folds_like_the_prometheus_sink() -> None:
    prom = Driven(PrometheusSink(), max_series=20)
    x = make(max_series=20)
    events = [event(user=f"user{i:02d}", language=("python", "go")[i % 2]) for i in range(30)]
    events += [chat(user=f"user{i:02d}") for i in range(5)]
    for ev in events:
        prom.handle(ev)
        x.sink.handle(ev)
    prom_requests = {
        tuple(s.labels[label] for label in md.REQUESTS.labels): s.value
        for family in prom.registry.collect()
        for s in family.samples
        if s.name == "copilot_requests_total"
    }
    otel_requests = {
        tuple(a.get(name, "unknown") for name in md.REQUESTS.otel_attributes): p.value
        for a, p in x.points("copilot.requests")
    }
    assert otel_requests == prom_requests
    assert ("other", "other", "other", "completion") in otel_requests  # folded once the cap was reached
    folded = x.value("copilot.label_overflows", **{"copilot.label": "series"})
    assert folded == prom.registry.get_sample_value("copilot_label_overflows_total", {"label": "series"}) > 0
    x.sink.close()


def test_no_content_without_capture(harness: Harness, o: Otel) -> None:
    events = replay(harness, o.sink)
    assert all(e.prompt is None and e.completion is None for e in events)
    for span in o.finished():
        assert span.attributes is not None
        assert not any(k.startswith(("gen_ai.input", "gen_ai.output")) for k in span.attributes)


def test_content_with_capture(harness: Harness, o: Otel) -> None:
    harness.tctx.configure(harness.addon, copilot_capture_content=True)
    events = replay(harness, o.sink)
    by_request = {s.attributes["copilot.request_id"]: s for s in o.finished() if s.attributes}
    captured = [e for e in events if e.model_call and e.prompt is not None]
    assert len(captured) >= 8
    for ev in captured:
        a = by_request[ev.request_id].attributes
        assert a is not None
        messages = json.loads(str(a["gen_ai.input.messages"]))
        assert messages == [{"role": "user", "parts": [{"type": "text", "content": ev.prompt}]}]
        if ev.completion is not None:
            out = json.loads(str(a["gen_ai.output.messages"]))
            assert out[0]["role"] == "assistant" and out[0]["parts"][0]["content"] == ev.completion
            assert out[0]["finish_reason"] == ev.finish_reason
    agent = next(e for e in captured if e.kind == "chat_agent" and e.counted)
    assert "Add a unit test for add()" in (agent.prompt or "")


def test_long_content_is_cut() -> None:
    x = make(max_content_chars=10)
    x.sink.handle(event(prompt="p" * 50, completion="c" * 5))
    (span,) = x.finished()
    a = span.attributes
    assert a is not None
    assert json.loads(str(a["gen_ai.input.messages"]))[0]["parts"][0]["content"] == "p" * 10
    assert json.loads(str(a["gen_ai.output.messages"]))[0]["parts"][0]["content"] == "c" * 5
    assert a["copilot.content_truncated"] is True
    x.sink.close()


def test_operation_names_and_span_names() -> None:
    x = make()
    x.sink.handle(event(kind="next_edit", model="copilot-nes-xtab"))
    x.sink.handle(event(kind="embeddings", model="text-embedding-3-small", counted=False, skip_reason="auxiliary"))
    x.sink.handle(chat(model=None))
    x.sink.handle(event(kind="telemetry", model_call=False, counted=False, skip_reason="not_interaction", model=None))
    assert [s.name for s in x.finished()] == ["chat copilot-nes-xtab", "embeddings text-embedding-3-small", "chat"]
    assert observe.operation_name("telemetry") is None
    x.sink.close()


def test_close_shuts_the_providers_down_once(o: Otel) -> None:
    o.sink.handle(event())
    o.sink.close()
    o.sink.close()
    o.sink.handle(event())  # ignored after close, never raises
    o.sink.health(ExporterError("x"))
    assert len(o.finished()) == 1
    assert o.spans._stopped  # the span exporter was shut down with the provider


# -- export failures reach on_error ---------------------------------------------------------------------


class _FailingSpans(SpanExporter):
    def __init__(self, result: SpanExportResult | Exception) -> None:
        self.result = result
        self.shut = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if isinstance(self.result, Exception):
            raise self.result
        return self.result

    def shutdown(self) -> None:
        self.shut = True


class _FailingMetrics(MetricExporter):
    def __init__(self, result: MetricExportResult | Exception) -> None:
        super().__init__()
        self.result = result

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        if isinstance(self.result, Exception):
            raise self.result
        return self.result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


@pytest.mark.parametrize("result", [SpanExportResult.FAILURE, RuntimeError("boom"), SpanExportResult.SUCCESS])
def test_span_export_failures_are_counted(result: SpanExportResult | Exception) -> None:
    errors: list[str] = []
    inner = _FailingSpans(result)
    wrapped = otel_pipeline.CountingSpanExporter(inner, errors.append)
    out = wrapped.export([])
    failed = result is not SpanExportResult.SUCCESS
    assert out is (SpanExportResult.FAILURE if failed else SpanExportResult.SUCCESS)
    assert errors == (["otel_traces"] if failed else [])
    wrapped.shutdown()
    assert inner.shut


@pytest.mark.parametrize("result", [MetricExportResult.FAILURE, RuntimeError("boom"), MetricExportResult.SUCCESS])
def test_metric_export_failures_are_counted(result: MetricExportResult | Exception) -> None:
    errors: list[str] = []
    wrapped = otel_pipeline.CountingMetricExporter(_FailingMetrics(result), errors.append)
    failed = result is not MetricExportResult.SUCCESS
    assert (wrapped.export(MetricsData(resource_metrics=[])) is MetricExportResult.FAILURE) is failed
    assert errors == (["otel_metrics"] if failed else [])


def test_a_failing_error_callback_does_not_escape() -> None:
    def broken(component: str) -> None:
        raise RuntimeError(component)

    wrapped = otel_pipeline.CountingSpanExporter(_FailingSpans(SpanExportResult.FAILURE), broken)
    assert wrapped.export([]) is SpanExportResult.FAILURE


# -- the factory: options and OTEL_* environment --------------------------------------------------------


def _build(enabled: bool = True, endpoint: str | None = None, **kw: Any) -> OtelSink | None:
    options = OtelOptions(
        enabled=enabled, endpoint=f"http://127.0.0.1:{closed_port()}" if endpoint is None else endpoint, **kw
    )
    return build_otel_sink(options, lambda component: None, timeout_s=0.5, close_timeout_s=2.0)


def _resource(sink: OtelSink) -> dict[str, Any]:
    return dict(sink.tracer_provider.resource.attributes)


def test_off_unless_configured(clean_env: pytest.MonkeyPatch) -> None:
    assert _build(enabled=False, endpoint="") is None
    clean_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    sink = _build(enabled=False, endpoint="")
    assert sink is not None
    sink.close()
    clean_env.setenv("OTEL_SDK_DISABLED", "true")
    assert _build(enabled=True) is None


def test_endpoints_from_option_environment_and_default(clean_env: pytest.MonkeyPatch) -> None:
    resolve = otel_config.resolve_settings
    st = resolve(False, "http://collector:4318/base/", "", "", 0)
    assert st is not None
    assert (st.traces_endpoint, st.metrics_endpoint) == (
        "http://collector:4318/base/v1/traces",
        "http://collector:4318/base/v1/metrics",
    )
    st = resolve(True, "", "", "", 0)
    assert st is not None and st.protocol == "http/protobuf"
    assert st.traces_endpoint == "http://localhost:4318/v1/traces"
    clean_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "https://otel.example:4318")
    clean_env.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "https://metrics.example/custom")
    st = resolve(False, "", "", "", 0)
    assert st is not None
    assert st.traces_endpoint == "https://otel.example:4318/v1/traces"
    assert st.metrics_endpoint == "https://metrics.example/custom"  # signal-specific: used as it is
    st = resolve(False, "http://opt:4318", "", "", 0)  # the option wins over the environment
    assert st is not None and st.metrics_endpoint == "http://opt:4318/v1/metrics"
    clean_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    st = resolve(False, "collector:4317", "", "", 0)
    assert st is not None and st.protocol == "grpc" and st.traces_endpoint == "collector:4317"


def test_resource_service_name_and_version(clean_env: pytest.MonkeyPatch) -> None:
    sink = _build()
    assert sink is not None
    assert _resource(sink)["service.name"] == "copilot-proxy-insight"
    assert _resource(sink)["service.version"] == __version__
    sink.close()
    clean_env.setenv("OTEL_SERVICE_NAME", "proxy-eu")
    clean_env.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=prod")
    sink = _build()
    assert sink is not None
    assert _resource(sink)["service.name"] == "proxy-eu"
    assert _resource(sink)["deployment.environment.name"] == "prod"
    sink.close()
    sink = _build(service_name="from-option")
    assert sink is not None
    assert _resource(sink)["service.name"] == "from-option"
    sink.close()


def test_bad_settings_raise_a_clear_error(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(OtelConfigError, match="protocol must be one of"):
        _build(protocol="http/json")
    clean_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon")
    with pytest.raises(OtelConfigError, match="carrier-pigeon"):
        _build()
    clean_env.delenv("OTEL_EXPORTER_OTLP_PROTOCOL")
    with pytest.raises(OtelConfigError, match="http:// or https://"):
        _build(endpoint="collector:4318")
    with pytest.raises(OtelConfigError, match="key=value"):
        _build(headers="no-equals-sign")
    with pytest.raises(OtelConfigError, match="interval"):
        _build(export_interval_s=-1)


def test_grpc_without_its_package_says_what_to_install(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.grpc", None)
    with pytest.raises(OtelConfigError, match="opentelemetry-exporter-otlp-proto-grpc"):
        _build(protocol="grpc")
    clean_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    with pytest.raises(OtelConfigError, match=r"copilot-proxy-insight\[otel-grpc\]"):
        _build()


def test_headers_timeout_and_interval(clean_env: pytest.MonkeyPatch) -> None:
    assert otel_config.parse_headers("api-key=s3cret, x-tenant=a%20b") == {"api-key": "s3cret", "x-tenant": "a b"}
    st = otel_config.resolve_settings(True, "", "", "api-key=s3cret", 2.5)
    assert st is not None
    assert st.headers == {"api-key": "s3cret"}
    assert st.export_interval_ms == 2500
    assert st.timeout_s == otel_config.DEFAULT_EXPORT_TIMEOUT_S
    assert "s3cret" not in st.describe() and "api-key" in st.describe()
    clean_env.setenv("OTEL_METRIC_EXPORT_INTERVAL", "1234")
    clean_env.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "7")
    clean_env.setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20xyz")
    st = otel_config.resolve_settings(True, "", "", "", 0)
    assert st is not None
    assert st.export_interval_ms == 1234
    assert st.timeout_s is None and st.headers is None  # the SDK exporters read these variables themselves
    assert "authorization" in st.describe() and "xyz" not in st.describe()
    clean_env.setenv("OTEL_METRIC_EXPORT_INTERVAL", "soon")
    with pytest.raises(OtelConfigError, match="OTEL_METRIC_EXPORT_INTERVAL"):
        otel_config.resolve_settings(True, "", "", "", 0)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("Authorization: Bearer sk-LEAK", "entry 1 is not key=value"),
        ("api-key=ok,Authorization: Bearer sk-LEAK", "entry 2 is not key=value"),
        ("api-key=ok,,sk-LEAK", "entry 3 is not key=value"),
    ],
)
def test_every_header_entry_must_be_key_value_and_the_error_never_shows_it(
    clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, text: str, problem: str
) -> None:
    with pytest.raises(OtelConfigError, match=problem) as raised:
        otel_config.parse_headers(text)
    assert "sk-LEAK" not in str(raised.value)
    clean_env.setenv("OTEL_EXPORTER_OTLP_METRICS_HEADERS", text)
    with pytest.raises(OtelConfigError, match=f"OTEL_EXPORTER_OTLP_METRICS_HEADERS: {problem}") as raised:
        otel_config.resolve_settings(True, "", "", "", 0)
    assert "sk-LEAK" not in str(raised.value)
    # The SDK's own parser (the exporters call it too) logs a bad entry without quoting it.
    with caplog.at_level(logging.WARNING):
        parse_env_headers("Authorization: Bearer sk-LEAK")
    assert caplog.records and "sk-LEAK" not in caplog.text


def test_the_factory_builds_real_providers(clean_env: pytest.MonkeyPatch) -> None:
    sink = _build(headers="api-key=s3cret", export_interval_s=2.5)
    assert sink is not None and sink.settings is not None
    assert sink.settings.headers == {"api-key": "s3cret"}
    Driven(sink).handle(event())
    sink.close()


def test_a_signal_can_be_switched_off(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OTEL_TRACES_EXPORTER", "none")
    st = otel_config.resolve_settings(True, "", "", "", 0)
    assert st is not None and not st.traces and st.metrics
    assert st.describe().startswith("OTLP http/protobuf metrics:")
    sink = _build()
    assert sink is not None
    Driven(sink).handle(event())
    sink.close()


def test_the_documentation_names_every_metric_and_attribute() -> None:
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "opentelemetry.md").read_text()
    for m in md.METRICS:
        if m.otel_name:
            assert f"`{m.otel_name}`" in doc, m.otel_name
            assert f"`{m.otel_unit}`" in doc, m.otel_unit
            for name in (*m.otel_attributes, *m.otel_extra_attributes):
                assert f"`{name}`" in doc, name
    x = make(pseudonym_key="k")
    y = make()
    full = chat(
        status=503,
        error="upstream failed",
        interaction_id="i",
        cached_tokens=3,
        reasoning_tokens=2,
        nano_aiu=7,
        tool_calls=("read_file",),
        speculative=True,
        prompt="p",
        completion="c",
    )
    keys = set(x.sink.span_attributes(full, "chat", "503")) | set(y.sink.span_attributes(full, "chat", "503"))
    for key in keys:
        assert f"`{key}`" in doc, key
    for option in ("copilot_otel", "copilot_otel_endpoint", "copilot_otel_protocol", "copilot_otel_headers"):
        assert f"`{option}`" in doc
    for option in ("copilot_otel_service_name", "copilot_otel_export_interval", "copilot_otel_pseudonym_key"):
        assert f"`{option}`" in doc
    x.sink.close()
    y.sink.close()
