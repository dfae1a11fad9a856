"""Hardening round 2, item 8, under real mitmdump: a protocol error that quotes a Cookie never reaches an output.

An HTTP/2 header value with surrounding spaces (` session=<secret> `) makes mitmproxy's HTTP/2 layer end the
whole connection with an error that quotes the offending bytes, and every other stream in flight on it fails
with that text. The addon used to copy `flow.error.msg` into the `error` field of those streams' JSON log lines:
another call's line carried the Cookie. Flow errors now reach outputs as one word of a fixed vocabulary.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests import samples
from tests.e2e.fakebackend import FakeCopilotBackend, Gate
from tests.e2e.harness import H2Client, Mitmdump, free_port
from tests.e2e.test_e2e import scrape, variant

pytestmark = pytest.mark.e2e

DEADLINE = 15.0


def _log_lines(data_dir: Path) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    for path in sorted((data_dir / "events").glob("copilot-events_*.jsonl")):
        lines += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return lines


def test_a_protocol_error_quoting_a_cookie_reaches_no_log_line(tmp_path: Path) -> None:
    secret = f"s3cr3t-{secrets.token_hex(12)}"
    data_dir = tmp_path / "data"
    held = variant(samples.VSCODE_COMPLETION)
    bad = variant(samples.VSCODE_COMPLETION)
    bad = replace(bad, request_headers=(*bad.request_headers, ("Cookie", f" session={secret} ")))
    with FakeCopilotBackend() as backend:
        gate = Gate(after=1)
        backend.script_exchange(held, gate=gate)
        backend.script_exchange(bad)
        proxy = Mitmdump(
            backend,
            tmp_path / "m",
            proxyauth="any",
            options={
                "copilot_data_dir": data_dir,
                "copilot_metrics_port": free_port(),
                "copilot_log_json": "both",  # the JSON lines also on mitmdump's stdout
                "connection_strategy": "lazy",
            },
        ).start()
        try:
            with H2Client(proxy.port, "alice", "x", proxy.ca_cert_path, held.host) as h2:
                # Send what a browser would refuse to: the value as is, spaces and all.
                h2.conn.config.validate_outbound_headers = False
                h2.conn.config.normalize_outbound_headers = False
                first = h2.request(held)
                h2.pump(lambda: bool(first.chunks))  # the held stream is answering: in flight
                h2.request(bad)
                with pytest.raises((ConnectionError, TimeoutError)):
                    h2.pump(lambda: first.done)  # mitmproxy ends the connection
            gate.release()
            line = proxy.wait_for(
                lambda: next((r for r in _log_lines(data_dir) if r.get("request_id") == held.request_id), None),
                DEADLINE,
                "the held call's JSON log line",
            )
            metrics = scrape(proxy.metrics_url)
        finally:
            assert proxy.stop() == 0
    output = proxy.log_text()
    # The connection did die of the quoting protocol error: mitmproxy's own log line (not the addon's) quotes
    # it, `HTTP/2 protocol error: Received header value surrounded by whitespace b' session=…'`, as bare
    # mitmdump does. Before the fix the held call's `error` field was that text.
    assert f"surrounded by whitespace b' session={secret} '" in output, "the attack did not happen"
    assert line["error"] == "protocol_error" and line["skip_reason"] == "cancelled", line
    assert secret not in json.dumps(line)
    files = [p for p in data_dir.rglob("*") if p.is_file()]
    assert files and not [p for p in files if secret in p.read_text(errors="replace")]
    assert secret not in metrics
    json_lines = [ln for ln in output.splitlines() if ln.lstrip().startswith("{") or '"request_id"' in ln]
    assert json_lines and not [ln for ln in json_lines if secret in ln]
