"""OTel over real OTLP/HTTP: a local receiver decodes what the sink's exporters send; a dead collector is harmless."""

from __future__ import annotations

import gzip
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from exporter import __version__
from exporter import metricdefs as md
from exporter.events import UsageEvent
from exporter.identity import pseudonym
from exporter.observe import operation_name
from exporter.otel_pipeline import build_otel_sink
from exporter.settings import OtelOptions
from exporter.sinks import otel
from tests import samples
from tests.conftest import Harness
from tests.e2e.harness import closed_port
from tests.factories import Driven, event

pytestmark = pytest.mark.e2e


class Receiver:
    """A minimal OTLP/HTTP collector on 127.0.0.1: keeps every POST (path, headers, body) and answers 200."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                with receiver._lock:
                    receiver.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def posts(self, path: str) -> list[tuple[dict[str, str], bytes]]:
        with self._lock:
            return [(h, b) for p, h, b in self.requests if p == path]


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def _attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs if isinstance(kv, KeyValue)}


def _spans(receiver: Receiver) -> tuple[list[dict[str, Any]], list[Span]]:
    resources, spans = [], []
    for _, body in receiver.posts("/v1/traces"):
        req = ExportTraceServiceRequest()
        req.ParseFromString(body)
        for rs in req.resource_spans:
            resources.append(_attrs(rs.resource.attributes))
            for ss in rs.scope_spans:
                assert ss.scope.name == otel.SCOPE_NAME and ss.scope.version == __version__
                spans.extend(ss.spans)
    return resources, spans


def _metrics(receiver: Receiver) -> dict[str, list[Any]]:
    """The data points of the latest export per metric name (cumulative temporality)."""
    out: dict[str, list[Any]] = {}
    for _, body in receiver.posts("/v1/metrics"):
        req = ExportMetricsServiceRequest()
        req.ParseFromString(body)
        for rm in req.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    kind = m.WhichOneof("data")
                    out[m.name] = [(m.unit, kind, p) for p in getattr(m, kind).data_points]
    return out


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def _events(h: Harness) -> list[UsageEvent]:
    for ex in samples.ALL:
        h.flow(ex)
    return h.events


_TIMEOUTS = ("timeout_s", "close_timeout_s")
_CAPS = ("max_users", "max_models", "max_series")


def _sink(endpoint: str, errors: list[str], **kw: Any) -> Driven:
    """The real OTLP pipeline's sink, behind a dispatcher (caps and timeouts may be given as keywords)."""
    args: dict[str, Any] = {
        "enabled": True,
        "endpoint": endpoint,
        "protocol": "http/protobuf",
        "headers": "x-api-key=s3cret",
        "service_name": "copilot-e2e",
        "export_interval_s": 3600.0,  # only explicit flushes export in these tests
    }
    on_error = kw.pop("on_error", errors.append)
    timeouts = {k: kw.pop(k) for k in _TIMEOUTS if k in kw}
    caps = {k: kw.pop(k) for k in _CAPS if k in kw}
    args.update(kw)
    sink = build_otel_sink(OtelOptions(**args), on_error, **timeouts)
    assert sink is not None
    return Driven(sink, **caps)


def test_metrics_and_spans_reach_an_otlp_http_collector(
    clean_env: pytest.MonkeyPatch, receiver: Receiver, harness: Harness
) -> None:
    errors: list[str] = []
    sink = _sink(f"http://127.0.0.1:{receiver.port}", errors)
    events = _events(harness)
    for ev in events:
        sink.handle(ev)
    assert sink.force_flush(10)
    sink.close()
    assert errors == []

    # Transport: the configured path, content type and headers.
    for path in ("/v1/traces", "/v1/metrics"):
        posts = receiver.posts(path)
        assert posts, path
        assert all(h["content-type"] == "application/x-protobuf" and h["x-api-key"] == "s3cret" for h, _ in posts)

    resources, spans = _spans(receiver)
    assert resources and all(r["service.name"] == "copilot-e2e" for r in resources)
    assert all(r["service.version"] == __version__ and r["telemetry.sdk.language"] == "python" for r in resources)
    calls = [e for e in events if e.model_call]
    assert len(spans) == len(calls) == 12
    by_request = {_attrs(s.attributes)["copilot.request_id"]: s for s in spans}
    for ev in calls:
        span = by_request[ev.request_id]
        a = _attrs(span.attributes)
        assert span.kind == Span.SPAN_KIND_CLIENT
        assert span.name == f"{operation_name(ev.kind)} {ev.model}"
        assert span.start_time_unix_nano == round(ev.timestamp.timestamp() * 1e9)
        assert span.end_time_unix_nano - span.start_time_unix_nano == round((ev.duration_s or 0) * 1e9)
        assert a["gen_ai.request.model"] == ev.model
        assert a.get("gen_ai.usage.input_tokens") == ev.input_tokens
        assert a.get("gen_ai.usage.output_tokens") == ev.output_tokens
        assert a["enduser.id"] == "alice" and a["http.response.status_code"] == 200
        assert a["copilot.counted"] is ev.counted and a["copilot.kind"] == ev.kind
        assert span.status.code == Status.STATUS_CODE_UNSET
    turn = [s for s in spans if _attrs(s.attributes).get("copilot.interaction_id") == samples.AGENT_TURN_INTERACTION_ID]
    trace_id, parent_id = otel.turn_ids(samples.AGENT_TURN_INTERACTION_ID)
    assert len(turn) == 4
    assert {s.trace_id for s in turn} == {trace_id.to_bytes(16, "big")}
    assert {s.parent_span_id for s in turn} == {parent_id.to_bytes(8, "big")}

    metrics = _metrics(receiver)
    unit, kind, points = zip(*metrics["gen_ai.client.token.usage"], strict=True)
    assert set(unit) == {"{token}"} and set(kind) == {"histogram"}
    agent_input = [
        p
        for p in points
        if _attrs(p.attributes)
        == {
            "enduser.id": "alice",
            "copilot.kind": "chat_agent",
            "gen_ai.request.model": "gpt-4.1",
            "gen_ai.token.type": "input",
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "github_copilot",
            "server.address": "api.business.githubcopilot.com",
        }
    ]
    assert [(p.count, p.sum) for p in agent_input] == [(2, 9120 + 9190)]
    assert tuple(agent_input[0].explicit_bounds) == md.TOKEN_BUCKETS  # each histogram keeps its own buckets
    durations = metrics["gen_ai.client.operation.duration"]
    assert {u for u, _, _ in durations} == {"s"}
    assert {tuple(p.explicit_bounds) for _, _, p in durations} == {md.DURATION_BUCKETS}
    ttft = metrics["gen_ai.client.operation.time_to_first_chunk"]
    assert {tuple(p.explicit_bounds) for _, _, p in ttft} == {md.TTFT_BUCKETS}
    assert sum(p.count for _, _, p in durations) == 12
    requests = {tuple(sorted(_attrs(p.attributes).items())): p.as_int for _, _, p in metrics["copilot.requests"]}
    assert (
        requests[
            (
                ("copilot.editor", "vscode"),
                ("copilot.kind", "chat_agent"),
                ("copilot.language", "unknown"),
                ("enduser.id", "alice"),
            )
        ]
        == 3
    )
    assert sum(requests.values()) == 8
    assert {u for u, _, _ in metrics["copilot.requests"]} == {"{request}"}
    skipped = {_attrs(p.attributes)["copilot.skip_reason"]: p.as_int for _, _, p in metrics["copilot.skipped_requests"]}
    assert skipped["agent_step"] == 1 and skipped["speculative"] == 1
    responses = [_attrs(p.attributes) for _, _, p in metrics["copilot.responses"]]
    assert {"copilot.kind": "completion", "http.response.status_code": 200} in responses


def test_many_users_are_not_folded_by_the_sdk_cardinality_limit(
    clean_env: pytest.MonkeyPatch, receiver: Receiver
) -> None:
    """Users are capped by copilot_max_users like in Prometheus, not by the SDK's default 2000 attribute sets."""
    errors: list[str] = []
    sink = _sink(f"http://127.0.0.1:{receiver.port}", errors, max_users=5000)
    for i in range(2500):
        sink.handle(event(user=f"user{i:04d}"))
    sink.close()
    assert errors == []
    points = _metrics(receiver)["copilot.requests"]
    users = {_attrs(p.attributes).get("enduser.id") for _, _, p in points}
    assert len(users) == 2500 and None not in users
    assert not any("otel.metric.overflow" in _attrs(p.attributes) for _, _, p in points)


def test_pseudonyms_and_content_over_the_wire(
    clean_env: pytest.MonkeyPatch, receiver: Receiver, harness: Harness
) -> None:
    harness.tctx.configure(harness.addon, copilot_capture_content=True)
    errors: list[str] = []
    sink = _sink(f"http://127.0.0.1:{receiver.port}/", errors, pseudonym_key="k", headers="")
    for ev in _events(harness):
        sink.handle(ev)
    sink.close()  # close flushes what is pending
    assert errors == []
    _, spans = _spans(receiver)
    assert spans
    pseudo = pseudonym("alice", "k")
    for s in spans:
        a = _attrs(s.attributes)
        assert a["enduser.pseudo.id"] == pseudo and "enduser.id" not in a
    assert any("gen_ai.input.messages" in _attrs(s.attributes) for s in spans)
    wire = b"".join(b for _, b in receiver.posts("/v1/metrics"))
    assert pseudo.encode() in wire and b"alice" not in wire


def test_a_dead_collector_never_blocks_or_breaks_the_proxy(
    clean_env: pytest.MonkeyPatch, harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    errors: list[str] = []
    lock = threading.Lock()

    def on_error(component: str) -> None:
        with lock:
            errors.append(component)

    close_timeout = 3.0
    sink = _sink(
        f"http://127.0.0.1:{closed_port()}",
        [],
        on_error=on_error,
        timeout_s=0.5,
        close_timeout_s=close_timeout,
    )
    events = _events(harness)
    # handle() must never touch the network on the calling (event loop) thread.
    connects: list[str] = []
    real_connect = socket.socket.connect

    def spy(self: socket.socket, address: Any) -> Any:
        connects.append(threading.current_thread().name)
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", spy)
    caller = threading.current_thread().name
    for _ in range(50):
        for ev in events:
            sink.handle(ev)  # never raises
    assert caller not in connects
    # A flush (the SDK's export threads do this on their schedule) fails and is counted, not raised.
    sink.force_flush(5)
    assert connects  # the spy sees the exporters' connections: its silence above means something
    with lock:
        assert "otel_traces" in errors and "otel_metrics" in errors
    started = time.monotonic()
    sink.close()
    assert time.monotonic() - started < close_timeout + 2
    sink.handle(events[0])  # after close: ignored


def test_close_is_bounded_when_the_collector_hangs(clean_env: pytest.MonkeyPatch, harness: Harness) -> None:
    """A collector that accepts connections and never answers: close() gives up after close_timeout_s."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)  # never accept()ed: requests are sent and no answer ever comes
        port = listener.getsockname()[1]
        errors: list[str] = []
        sink = _sink(f"http://127.0.0.1:{port}", errors, timeout_s=60.0, close_timeout_s=1.0)
        for ev in _events(harness):
            sink.handle(ev)
        started = time.monotonic()
        sink.close()
        elapsed = time.monotonic() - started
        assert elapsed < 10.0  # bounded by close_timeout_s, far below the exporter's 60 s timeout


# -- through the addon's options ------------------------------------------------------------------------


def _wired(h: Harness) -> None:
    assert "copilot_otel" in h.tctx.options


def test_the_addon_exports_over_otlp(clean_env: pytest.MonkeyPatch, receiver: Receiver, harness: Harness) -> None:
    _wired(harness)
    harness.tctx.configure(
        harness.addon, copilot_otel_endpoint=f"http://127.0.0.1:{receiver.port}", copilot_otel_export_interval="3600"
    )
    events = _events(harness)
    harness.addon.done()  # flushes and shuts the providers down
    _, spans = _spans(receiver)
    assert len(spans) == sum(e.model_call for e in events) == 12
    requests = _metrics(receiver)["copilot.requests"]
    assert sum(p.as_int for _, _, p in requests) == sum(e.counted for e in events)


def test_the_addon_counts_otlp_failures_and_rejects_bad_options(
    clean_env: pytest.MonkeyPatch, harness: Harness
) -> None:
    from mitmproxy import exceptions

    _wired(harness)
    harness.tctx.configure(harness.addon, copilot_otel_endpoint=f"http://127.0.0.1:{closed_port()}")
    _events(harness)
    sink: Any = getattr(harness.addon, "otel", None)
    assert sink is not None
    sink.force_flush(5)
    assert harness.sample("copilot_exporter_errors_total", component="otel_traces") >= 1
    assert harness.sample("copilot_exporter_errors_total", component="otel_metrics") >= 1
    clean_env.setitem(__import__("sys").modules, "opentelemetry.exporter.otlp.proto.grpc", None)
    for bad in ({"copilot_otel_protocol": "grpc"}, {"copilot_otel_endpoint": "collector:4318"}):
        with pytest.raises(exceptions.OptionsError):
            harness.tctx.configure(harness.addon, copilot_otel=True, **bad)
