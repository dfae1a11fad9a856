"""Prometheus sink: the exposition's names, HELP and TYPE locked by a golden file; values per label set."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from exporter import metricdefs as md
from exporter.dispatch import AuthFailure, ClientSeen, ExporterError, LabelOverflow
from exporter.metrics_server import serve_metrics
from exporter.sinks.prometheus import PrometheusSink
from tests.factories import Driven, chat, event

GOLDEN = Path(__file__).parent / "golden" / "metrics_help_type.txt"


def _sink(**caps: int) -> Driven:
    return Driven(PrometheusSink(), **caps)


def test_golden_names_help_and_type() -> None:
    sink = _sink()
    sink.handle(event())
    sink.health(ClientSeen("alice", "vscode", "1.111.0", "copilot-chat", "0.42.0"))
    sink.health(AuthFailure())
    sink.health(ExporterError("daily"))
    sink.health(LabelOverflow("user"))
    sink.build_info("0.1.0", "12.3.1")
    text = generate_latest(sink.registry).decode()
    lines = [line for line in text.splitlines() if line.startswith(("# HELP", "# TYPE"))]
    assert "\n".join(lines) + "\n" == GOLDEN.read_text()


def test_every_table_entry_is_exposed_with_its_labels() -> None:
    sink = _sink()
    names = {m.name for m in sink.registry.collect()}
    for m in md.METRICS:
        # collected gauges (quota, budgets) come from the cost sink's collectors: tests/test_quota.py
        assert (m.name in names) != m.collected
    assert md.all_series_names() >= {"copilot_requests_total", "copilot_request_duration_seconds_bucket"}


def test_values_per_label_set() -> None:
    sink = _sink()
    sink.handle(event())
    sink.handle(event(counted=False, skip_reason="speculative", initiator="agent"))
    sink.handle(chat(input_tokens=100, output_tokens=7, status=200))
    sink.handle(chat(counted=False, skip_reason="http_error", status=429, input_tokens=None, output_tokens=None))
    sink.handle(event(kind="telemetry", model_call=False, counted=False, skip_reason="not_interaction", model=None))
    g = sink.registry.get_sample_value
    assert (
        g("copilot_requests_total", {"user": "alice", "editor": "vscode", "language": "python", "kind": "completion"})
        == 1
    )
    assert (
        g("copilot_requests_total", {"user": "alice", "editor": "vscode", "language": "unknown", "kind": "chat_agent"})
        == 1
    )
    assert g("copilot_skipped_requests_total", {"kind": "completion", "reason": "speculative"}) == 1
    assert (
        g(
            "copilot_model_calls_total",
            {"user": "alice", "kind": "completion", "model": "gpt-41-copilot", "initiator": "agent"},
        )
        == 1
    )
    assert (
        g("copilot_tokens_total", {"user": "alice", "kind": "chat_agent", "model": "gpt-4.1", "type": "input"}) == 100
    )
    assert g("copilot_responses_total", {"kind": "chat_agent", "code": "429"}) == 1
    assert g("copilot_responses_total", {"kind": "telemetry", "code": "200"}) == 1
    assert (
        g("copilot_model_calls_total", {"user": "alice", "kind": "telemetry", "model": "unknown", "initiator": "user"})
        is None
    )
    assert g("copilot_request_duration_seconds_bucket", {"kind": "completion", "le": "0.25"}) == 2
    assert g("copilot_time_to_first_token_seconds_count", {"kind": "completion"}) == 2


def test_user_and_model_caps_fold_into_other_and_count() -> None:
    sink = _sink(max_users=2, max_models=1)
    for i in range(5):
        sink.handle(event(user=f"user{i}", model=f"model{i}"))
    g = sink.registry.get_sample_value
    assert (
        g("copilot_requests_total", {"user": "other", "editor": "vscode", "language": "python", "kind": "completion"})
        == 3
    )
    assert g("copilot_label_overflows_total", {"label": "user"}) == 3
    assert g("copilot_label_overflows_total", {"label": "model"}) == 4
    users = {s.labels["user"] for m in sink.registry.collect() for s in m.samples if "user" in s.labels}
    assert users == {"user0", "user1", "other"}


def test_metrics_server_serves_and_releases_its_port() -> None:
    sink = _sink()
    sink.handle(event())
    server = serve_metrics(sink.registry, "127.0.0.1", 0)
    port = server.port
    assert port and server.url == f"http://127.0.0.1:{port}/metrics"
    body = urllib.request.urlopen(server.url, timeout=5).read().decode()
    assert 'copilot_requests_total{editor="vscode",kind="completion",language="python",user="alice"} 1.0' in body
    server.close()
    again = serve_metrics(_sink().registry, "127.0.0.1", port)  # the port is free again (script reload)
    again.close()


def test_taken_port_raises_oserror() -> None:
    first = serve_metrics(_sink().registry, "127.0.0.1", 0)
    try:
        with pytest.raises(OSError):
            serve_metrics(_sink().registry, "127.0.0.1", first.port)
    finally:
        first.close()


def test_failed_calls_are_counted_per_user() -> None:
    sink = _sink()
    sink.handle(chat(status=429, counted=False, skip_reason="http_error"))
    sink.handle(chat(user="bob", status=402, counted=False, skip_reason="http_error", error_code="quota_exceeded"))
    sink.handle(chat(user="bob", status=None, counted=False, skip_reason="no_response"))
    sink.handle(chat(user="bob", status=200))
    g = sink.registry.get_sample_value
    errors = {"kind": "chat_agent", "error_code": "none"}
    assert g("copilot_user_errors_total", {**errors, "user": "alice", "code": "429"}) == 1
    assert g("copilot_user_errors_total", {**errors, "user": "bob", "code": "402", "error_code": "quota_exceeded"}) == 1
    assert g("copilot_user_errors_total", {**errors, "user": "bob", "code": "error"}) == 1
    assert g("copilot_user_errors_total", {**errors, "user": "bob", "code": "200"}) is None
