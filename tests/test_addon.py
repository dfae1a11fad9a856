"""Addon tests with mitmproxy's taddons/tflow: every sample exchange, identity, streaming, failures."""

from __future__ import annotations

import gc
import gzip
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
from mitmproxy import connection, options
from mitmproxy.proxy.context import Context
from mitmproxy.test import taddons, tflow, tutils

from exporter.classify import HostRole
from exporter.hooks import CopilotInsight
from tests import samples
from tests.conftest import Harness


def _replay_all(h: Harness) -> None:
    for ex in samples.ALL:
        h.flow(ex)


def test_every_sample_exchange_gives_the_expected_event(harness: Harness) -> None:
    _replay_all(harness)
    assert len(harness.events) == len(samples.ALL)
    for ex, ev in zip(samples.ALL, harness.events, strict=True):
        want = ex.expected
        got = {
            "kind": ev.kind,
            "editor": ev.editor,
            "editor_version": ev.editor_version if want["editor_version"] else None,
            "language": None if ev.language == "unknown" else ev.language,
            "model": ev.model,
            "resolved_model": ev.resolved_model,
            "interaction_id": ev.interaction_id,
            "request_id": ev.request_id,
            "streamed": ev.streamed,
            "finish_reason": ev.finish_reason,
            "output_tokens": ev.output_tokens,
            "counted": ev.counted,
            "skip_reason": ev.skip_reason,
        }
        assert got == {k: want[k] for k in got}, ex.name
        if want["initiator"] is not None:
            assert ev.initiator == want["initiator"], ex.name
        assert ev.input_tokens == want["input_tokens"], ex.name
        if "tool_calls" in want:
            assert ev.tool_calls == tuple(name for name, _ in want["tool_calls"]), ex.name
        if "nano_aiu" in want:
            assert ev.nano_aiu == want["nano_aiu"], ex.name
        if want["plugin"]:
            assert f"{ev.plugin}/{ev.plugin_version}" == want["plugin"], ex.name


def test_metrics_count_per_user_editor_language_kind(harness: Harness) -> None:
    _replay_all(harness)
    s = harness.sample
    assert s("copilot_requests_total", user="alice", editor="vscode", language="python", kind="completion") == 1
    assert s("copilot_requests_total", user="alice", editor="jetbrains-iu", language="java", kind="completion") == 1
    assert s("copilot_requests_total", user="alice", editor="neovim", language="lua", kind="completion") == 1
    assert s("copilot_requests_total", user="alice", editor="vscode", language="unknown", kind="chat_agent") == 3
    assert s("copilot_requests_total", user="alice", editor="zed", language="unknown", kind="chat") == 1
    assert s("copilot_requests_total", user="alice", editor="vscode", language="unknown", kind="next_edit") == 1
    assert s("copilot_skipped_requests_total", kind="completion", reason="speculative") == 1
    assert s("copilot_skipped_requests_total", kind="completion", reason="empty_completion") == 1
    assert s("copilot_skipped_requests_total", kind="chat_agent", reason="agent_step") == 1
    assert s("copilot_skipped_requests_total", kind="chat_panel", reason="turn_followup") == 1
    assert s("copilot_skipped_requests_total", kind="telemetry", reason="not_interaction") == 1
    # Every model call counts, speculative prefetches and agent steps included.
    assert s("copilot_model_calls_total", user="alice", kind="chat_agent", model="gpt-4.1", initiator="agent") == 1
    assert (
        s("copilot_model_calls_total", user="alice", kind="completion", model="gpt-41-copilot", initiator="agent") == 1
    )
    assert s("copilot_tokens_total", user="alice", kind="chat_agent", model="gpt-4.1", type="input") == 9120 + 9190
    assert s("copilot_responses_total", kind="completion", code="200") == 5
    assert s("copilot_request_duration_seconds_count", kind="completion") == 5
    assert s("copilot_time_to_first_token_seconds_count", kind="completion") == 4  # the empty one has no token
    assert s("copilot_exporter_errors_total", component="parser") == 0


def test_json_log_and_daily_summary_agree_with_metrics(harness: Harness) -> None:
    _replay_all(harness)
    harness.flush()
    day = harness.events[0].day
    lines = (harness.data_dir / "events" / f"copilot-events_{day}.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    counted = [r for r in records if r["counted"]]
    assert len(counted) == sum(e.counted for e in harness.events) == 8
    assert all(r["event"] == "copilot.request" and r["level"] == "info" for r in counted)
    assert all(r["timestamp"].endswith("Z") for r in records)
    # The token exchange is not a model call: not logged; skipped model calls are. A telemetry post that was
    # read has its own line (copilot.telemetry, docs/acceptance.md).
    assert [r["kind"] for r in records if r["event"] == "copilot.telemetry"] == ["telemetry"]
    assert {r["skip_reason"] for r in records if not r["counted"] and r["event"] != "copilot.telemetry"} == {
        "speculative",
        "empty_completion",
        "agent_step",
        "turn_followup",
    }
    summary = json.loads((harness.data_dir / "metrics" / f"copilot-usage_{day}.json").read_text())
    assert summary == {
        "day": day,
        "total_chat_turns": 4,
        "total_completions_count": 3,
        "usage": {
            "alice": {
                "chat_turns": 4,
                "completions_count": 3,
                "chat": {"vscode-1.111.0": 3, "Zed-0.205.3": 1},
                "completions": {
                    "vscode-1.111.0": {"python": 1},
                    "JetBrains-IU-243.22562.218": {"java": 1},
                    "Neovim-0.11.2": {"lua": 1},
                },
            }
        },
    }
    assert list(summary) == ["day", "total_chat_turns", "total_completions_count", "usage"]


def test_two_users_behind_one_address_stay_apart(harness: Harness) -> None:
    ex = samples.BY_NAME["vscode_completion"]
    c1, c2 = tflow.tclient_conn(), tflow.tclient_conn()
    c2.peername = c1.peername
    harness.flow(ex, user="alice", client=c1, request_id="r-1")
    harness.flow(ex, user="bob", client=c2, request_id="r-2")
    for user in ("alice", "bob"):
        assert (
            harness.sample("copilot_requests_total", user=user, editor="vscode", language="python", kind="completion")
            == 1
        )


def test_user_from_connect_proxy_authorization_without_proxyauth(harness: Harness) -> None:
    client = tflow.tclient_conn()
    connect = tflow.tflow(client_conn=client)
    connect.request.method = "CONNECT"
    connect.request.headers["Proxy-Authorization"] = samples.CONNECT_WITH_AUTH.request_headers[-1][1]
    harness.addon.users.http_connect(connect)
    harness.flow(samples.BY_NAME["vscode_completion"], user=None, client=client)
    assert harness.last().user == "alice"
    harness.flow(samples.BY_NAME["neovim_completion"], user=None)
    assert harness.last().user == "anonymous"


def test_proxy_auth_failures_are_counted(harness: Harness) -> None:
    f = tflow.tflow()
    f.request.method = "CONNECT"
    f.response = tutils.tresp(status_code=407)
    harness.addon.users.http_connect(f)
    assert harness.sample("copilot_proxy_auth_failures_total") == 1


def test_next_edit_borrows_the_editor_version_from_its_connection(harness: Harness) -> None:
    client = tflow.tclient_conn()
    harness.flow(samples.BY_NAME["vscode_agent_turn"], client=client)
    harness.flow(samples.BY_NAME["vscode_next_edit"], client=client)
    assert harness.last().kind == "next_edit"
    assert harness.last().editor_version == "vscode/1.111.0"
    assert harness.last().summary_key == "vscode-1.111.0"


def test_retry_with_the_same_request_id_counts_once(harness: Harness) -> None:
    ex = samples.BY_NAME["vscode_completion"]
    harness.flow(ex)
    harness.flow(ex)
    assert [e.skip_reason for e in harness.events] == [None, "retry_duplicate"]


def test_cancelled_completion_is_not_served(harness: Harness) -> None:
    ex = samples.BY_NAME["vscode_completion"]
    first = ex.response_chunks()[0]
    harness.flow(ex, chunks=(first,), error="client disconnected")
    ev = harness.last()
    assert (ev.counted, ev.skip_reason, ev.finish_reason) == (False, "cancelled", "cancelled")


def test_stream_split_at_every_byte_gives_the_same_answer(harness: Harness) -> None:
    ex = samples.BY_NAME["vscode_messages"]
    body = ex.response_body
    harness.flow(ex, chunks=tuple(body[i : i + 1] for i in range(len(body))), request_id="bytewise")
    ev = harness.last()
    assert ev.counted and ev.tool_calls == ("run_in_terminal",) and ev.finish_reason == "tool_use"
    assert ev.output_tokens == 48


def test_gzip_encoded_stream_is_decoded_from_the_tee(harness: Harness) -> None:
    ex = samples.BY_NAME["vscode_completion"]
    packed = gzip.compress(ex.response_body)
    gz = replace(ex, response_headers=(*ex.response_headers, ("content-encoding", "gzip")))
    harness.flow(gz, chunks=(packed[:10], packed[10:]), request_id="gz")
    ev = harness.last()
    assert ev.counted and ev.output_tokens == 4


def test_malformed_stream_is_a_skip_with_a_reason_not_an_exception(harness: Harness) -> None:
    ex = samples.BY_NAME["vscode_completion"]
    harness.flow(ex, chunks=(b"data: {not json\n\n", b"data: [1,2\n\n"), request_id="bad")
    ev = harness.last()
    assert (ev.counted, ev.skip_reason) == (False, "malformed")


def test_http_errors_are_counted_by_code(harness: Harness) -> None:
    ex = replace(
        samples.BY_NAME["vscode_agent_turn"],
        response_headers=(("content-type", "application/json"),),
        response_body=b'{"error":{"message":"rate limited","code":"rate_limited"}}',
    )
    harness.flow(ex, status=429)
    assert harness.sample("copilot_responses_total", kind="chat_agent", code="429") == 1
    assert harness.last().skip_reason == "http_error"


def test_content_capture_is_off_by_default_and_on_when_asked(harness: Harness) -> None:
    ex = samples.BY_NAME["vscode_completion"]
    harness.flow(ex, request_id="c1")
    assert harness.last().completion is None and harness.last().prompt is None
    harness.tctx.configure(harness.addon, copilot_capture_content=True)
    harness.flow(ex, request_id="c2")
    assert harness.last().completion == "return a + b"
    assert harness.last().prompt is not None and harness.last().prompt.startswith("# Path: src/util.py")


def test_recording_writes_the_original_layout_with_secrets_redacted(harness: Harness) -> None:
    harness.tctx.configure(harness.addon, copilot_record=True)
    harness.flow(samples.BY_NAME["vscode_completion"])
    harness.flow(samples.BY_NAME["telemetry"])
    harness.flush()
    files = sorted((harness.data_dir / "usage").rglob("*.json"))
    assert [f.relative_to(harness.data_dir / "usage").parts[:2] for f in files] == [("alice", "completion")]
    doc = json.loads(files[0].read_text())
    assert doc["request"]["headers"]["authorization"] == "[REDACTED]"
    assert doc["request"]["content"]["extra"]["language"] == "python"
    assert doc["response"]["status_code"] == 200
    assert [c["choices"][0].get("text") for c in doc["response"]["content"] if c["choices"]] == ["return a", " + b"]
    assert "tid=" not in files[0].read_text()


def test_token_exchange_teaches_hosts_and_never_logs_the_token(harness: Harness) -> None:
    harness.addon.hosts.role("proxy.business.githubcopilot.com")
    harness.flow(samples.BY_NAME["vscode_token_exchange"])
    learned = harness.addon.hosts.learned
    assert learned["api.business.githubcopilot.com"] is HostRole.API
    assert learned["proxy.business.githubcopilot.com"] is HostRole.PROXY


def test_only_copilot_hosts_are_intercepted(harness: Harness) -> None:
    from mitmproxy.tls import ClientHello, ClientHelloData

    def hello(sni: str) -> ClientHelloData:
        return ClientHelloData(_context(), ClientHello(_client_hello(sni)))

    for host, intercepted in (
        ("proxy.business.githubcopilot.com", True),
        ("api.github.com", True),
        ("copilot-proxy.octo.ghe.com", True),
        ("github.com", False),
        ("pypi.org", False),
    ):
        data = hello(host)
        harness.addon.interception.tls_clienthello(data)
        assert data.ignore_connection is (not intercepted), host
    harness.tctx.configure(harness.addon, copilot_intercept="all")
    data = hello("pypi.org")
    harness.addon.interception.tls_clienthello(data)
    assert data.ignore_connection is False


def _client_hello(sni: str) -> bytes:
    """A minimal TLS ClientHello handshake message body with one SNI extension."""
    name = sni.encode()
    sni_ext = (
        (0).to_bytes(2, "big")
        + (len(name) + 5).to_bytes(2, "big")
        + (len(name) + 3).to_bytes(2, "big")
        + b"\x00"
        + len(name).to_bytes(2, "big")
        + name
    )
    # version, random, empty session id, one cipher suite, null compression, extensions
    return (
        b"\x03\x03"
        + b"\x00" * 32
        + b"\x00"
        + b"\x00\x02\x13\x01"
        + b"\x01\x00"
        + len(sni_ext).to_bytes(2, "big")
        + sni_ext
    )


def _context() -> Context:
    return Context(tflow.tclient_conn(), options.Options())


def test_unwritable_data_dir_is_counted_and_traffic_still_counts(tmp_path: Path) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the data dir should be")
    addon = CopilotInsight()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, copilot_data_dir=str(blocked), copilot_metrics_port=0)
        h = Harness(addon, tctx, blocked)
        h.flow(samples.BY_NAME["vscode_completion"])
        h.flush()
        assert h.sample("copilot_requests_total", user="alice", editor="vscode", language="python", kind="completion")
        assert h.sample("copilot_exporter_errors_total", component="jsonlog") >= 1
        assert h.sample("copilot_exporter_errors_total", component="daily") >= 1
        addon.done()


def test_failing_sink_does_not_stop_the_others(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_a: object) -> None:
        raise RuntimeError("disk on fire")

    daily = harness.addon.outputs.sink("daily")
    assert daily is not None
    monkeypatch.setattr(daily, "handle", boom)
    harness.flow(samples.BY_NAME["vscode_completion"])
    assert harness.sample("copilot_exporter_errors_total", component="daily") == 1
    assert (
        harness.sample("copilot_requests_total", user="alice", editor="vscode", language="python", kind="completion")
        == 1
    )


def test_restart_continues_the_day(tmp_path: Path) -> None:
    ex = samples.BY_NAME["vscode_completion"]
    for run in range(2):
        addon = CopilotInsight()
        with taddons.context(addon) as tctx:
            tctx.configure(addon, copilot_data_dir=str(tmp_path), copilot_metrics_port=0)
            h = Harness(addon, tctx, tmp_path)
            h.flow(ex, request_id=f"run{run}-a")
            h.flow(ex, request_id=f"run{run}-b")
            addon.done()
            day = h.events[0].day
    summary = json.loads((tmp_path / "metrics" / f"copilot-usage_{day}.json").read_text())
    assert summary["total_completions_count"] == 4
    assert summary["usage"]["alice"]["completions"]["vscode-1.111.0"]["python"] == 4
    assert not [p for p in os.listdir(tmp_path / "metrics") if p.endswith(".tmp")]


def test_non_copilot_flows_are_ignored(harness: Harness) -> None:
    f = tflow.tflow(resp=True)
    f.request.host = "pypi.org"
    harness.addon.requestheaders(f)
    harness.addon.request(f)
    harness.addon.responseheaders(f)
    assert f.response is not None and f.response.stream is False
    harness.addon.response(f)
    assert harness.events == []


def test_client_inventory_gauge(harness: Harness) -> None:
    harness.flow(samples.BY_NAME["jetbrains_completion"])
    assert (
        harness.sample(
            "copilot_client_info",
            user="alice",
            editor="jetbrains-iu",
            editor_version="243.22562.218",
            plugin="copilot-intellij",
            plugin_version="1.5.60-243",
        )
        == 1
    )


def test_connection_close_forgets_connection_state(harness: Harness) -> None:
    client = connection.Client(peername=("127.0.0.1", 5000), sockname=("127.0.0.1", 8080), timestamp_start=0)
    connect = tflow.tflow(client_conn=client)
    connect.request.headers["Proxy-Authorization"] = "bob"
    users = harness.addon.users
    users.http_connect(connect)
    assert users.users[client] == "bob"
    harness.addon.client_disconnected(client)
    del connect, client  # the connection object is gone: so is its user (a weak map, like mitmproxy's proxyauth)
    gc.collect()
    assert len(users.users) == 0


def test_utc_day_rollover_follows_the_injected_clock(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    now = [datetime(2026, 11, 24, 23, 59, 59, 900000, tzinfo=UTC).timestamp()]
    addon = CopilotInsight(clock=lambda: now[0])
    with taddons.context(addon) as tctx:
        tctx.configure(addon, copilot_data_dir=str(tmp_path), copilot_metrics_port=0)
        h = Harness(addon, tctx, tmp_path)
        h.flow(samples.BY_NAME["vscode_completion"], request_id="before-midnight")
        now[0] += 0.2  # 00:00:00.1 UTC
        h.flow(samples.BY_NAME["vscode_completion"], request_id="after-midnight")
        h.flow(samples.BY_NAME["vscode_agent_turn"])
        addon.done()
    before = json.loads((tmp_path / "metrics" / "copilot-usage_2026-11-24.json").read_text())
    after = json.loads((tmp_path / "metrics" / "copilot-usage_2026-11-25.json").read_text())
    assert (before["total_completions_count"], before["total_chat_turns"]) == (1, 0)
    assert (after["total_completions_count"], after["total_chat_turns"]) == (1, 1)
    assert (tmp_path / "events" / "copilot-events_2026-11-24.jsonl").read_text().count("\n") == 1
    assert (tmp_path / "events" / "copilot-events_2026-11-25.jsonl").read_text().count("\n") == 2
