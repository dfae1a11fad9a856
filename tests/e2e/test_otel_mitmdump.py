"""OpenTelemetry under a real mitmdump: OTLP/HTTP to a receiver in the test; a dead collector is harmless."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import samples
from tests.e2e.fakebackend import FakeCopilotBackend
from tests.e2e.harness import Mitmdump, closed_port, proxy_client, send
from tests.e2e.test_e2e import (
    PASSWORDS,
    metric,
    metric_total,
    parse_metrics,
    scrape,
    start_proxy,
    variant,
    write_htpasswd,
)
from tests.e2e.test_otel_e2e import Receiver, _attrs, _metrics, _spans

pytestmark = pytest.mark.e2e

TURN = "9d9d9d9d-6666-4e4e-8c8c-00000000e2e0"


def _traffic(backend: FakeCopilotBackend) -> list[samples.Exchange]:
    calls = [
        variant(samples.BY_NAME["vscode_completion"]),
        variant(samples.BY_NAME["jetbrains_completion"]),
        variant(samples.BY_NAME["vscode_agent_turn"], TURN),
        variant(samples.BY_NAME["vscode_agent_step"], TURN),
    ]
    for ex in calls:
        backend.script_exchange(ex)
    return calls


def _send_all(proxy: Mitmdump, calls: list[samples.Exchange], backend: FakeCopilotBackend) -> None:
    with proxy_client(proxy.port, "alice", PASSWORDS["alice"], proxy.ca_cert_path) as client:
        for ex in calls:
            got = send(client, ex)
            assert got.body == backend.response_for(ex.request_id or "").body  # untouched


def _start(backend: FakeCopilotBackend, tmp_path: Path, collector_port: int, **options: str) -> Mitmdump:
    """mitmdump + addon (proxyauth, a free /metrics port) exporting OTLP/HTTP to 127.0.0.1:collector_port."""
    htpasswd = write_htpasswd(tmp_path / "htpasswd", PASSWORDS)
    return start_proxy(
        backend,
        tmp_path / "mitmdump",
        tmp_path / "data",
        htpasswd,
        copilot_otel="true",
        copilot_otel_endpoint=f"http://127.0.0.1:{collector_port}",
        **options,
    )


def test_mitmdump_exports_metrics_and_spans_over_otlp(tmp_path: Path) -> None:
    with Receiver() as receiver, FakeCopilotBackend() as backend:
        calls = _traffic(backend)
        proxy = _start(backend, tmp_path, receiver.port, copilot_otel_service_name="copilot-proxy-e2e")
        try:
            _send_all(proxy, calls, backend)
        finally:
            assert proxy.stop() == 0, proxy.log_text()[-3000:]  # done() flushes the providers
    assert "OpenTelemetry on" in proxy.log_text()

    resources, spans = _spans(receiver)
    assert resources and all(r["service.name"] == "copilot-proxy-e2e" for r in resources)
    assert len(spans) == 4, [s.name for s in spans]
    completion = next(
        s
        for s in spans
        if _attrs(s.attributes)["copilot.kind"] == "completion" and _attrs(s.attributes)["copilot.editor"] == "vscode"
    )
    a = _attrs(completion.attributes)
    assert completion.name == "text_completion gpt-41-copilot"
    assert a["gen_ai.operation.name"] == "text_completion"
    assert a["gen_ai.request.model"] == "gpt-41-copilot"
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (27, 4)
    assert a["enduser.id"] == "alice" and a["copilot.language"] == "python"
    assert a["server.address"] == "proxy.business.githubcopilot.com" and a["http.response.status_code"] == 200
    # The two calls of the chat turn share one trace (derived from the interaction id).
    turn = [s for s in spans if _attrs(s.attributes).get("copilot.interaction_id") == TURN]
    assert len(turn) == 2 and turn[0].trace_id == turn[1].trace_id
    assert {_attrs(s.attributes)["copilot.initiator"] for s in turn} == {"user", "agent"}

    metrics = _metrics(receiver)
    tokens = metrics["gen_ai.client.token.usage"]
    total_input = sum(p.sum for unit, _, p in tokens if _attrs(p.attributes)["gen_ai.token.type"] == "input")
    assert total_input == sum(ex.expected["input_tokens"] or 0 for ex in calls)
    requests = {
        (_attrs(p.attributes)["copilot.editor"], _attrs(p.attributes)["copilot.kind"]): _value_of(p)
        for _, _, p in metrics["copilot.requests"]
    }
    assert requests == {("vscode", "completion"): 1, ("jetbrains-iu", "completion"): 1, ("vscode", "chat_agent"): 1}


def _value_of(point: object) -> int:
    return int(point.as_int)  # type: ignore[attr-defined]


def test_a_dead_collector_never_stops_traffic_or_prometheus(tmp_path: Path) -> None:
    with FakeCopilotBackend() as backend:
        calls = _traffic(backend)
        proxy = _start(backend, tmp_path, closed_port(), copilot_otel_export_interval="0.3")
        try:
            _send_all(proxy, calls, backend)

            def export_failure_counted() -> list[tuple[str, dict[str, str], float]] | None:
                parsed = parse_metrics(scrape(proxy.metrics_url))
                failed = metric_total(parsed, "copilot_exporter_errors_total", component="otel_metrics")
                return parsed if failed >= 1 else None

            parsed = proxy.wait_for(export_failure_counted, 15.0, "the failed OTLP metric export to be counted")
            assert metric(parsed, "copilot_requests_total", ("user", "kind")) == {
                ("alice", "completion"): 2,
                ("alice", "chat_agent"): 1,
            }
            # Still passing traffic after the failures.
            again = variant(samples.BY_NAME["neovim_completion"])
            backend.script_exchange(again)
            _send_all(proxy, [again], backend)
        finally:
            assert proxy.stop() == 0, proxy.log_text()[-3000:]
    log = proxy.log_text()
    assert log.count("otel_metrics failed") == 1  # logged once, not per export
    assert "Traceback" not in log
