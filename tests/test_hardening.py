"""Hardening at the addon level: label cardinality caps, pseudonymous users, /metrics access control."""

from __future__ import annotations

import json
import random
import ssl
import string
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons
from prometheus_client import generate_latest

from exporter.hooks import CopilotInsight
from tests import samples
from tests.conftest import Harness
from tests.e2e.fakebackend import CertificateAuthority
from tests.e2e.harness import free_port


def _random(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.ascii_letters + string.digits + '-_./ é"{}') for _ in range(n))


def test_ten_thousand_hostile_label_values_stay_under_the_series_cap(harness: Harness) -> None:
    harness.tctx.configure(harness.addon, copilot_max_series=300, copilot_max_users=10_000)
    rng = random.Random(7)
    base = samples.BY_NAME["vscode_completion"]
    for i in range(10_000):
        body = json.loads(base.request_body)
        body["extra"]["language"] = _random(rng, 12).lower()
        ex = replace(
            base,
            request_headers=(
                *[(k, v) for k, v in base.request_headers if k.lower() not in ("editor-version", "x-request-id")],
                ("editor-version", f"{_random(rng, 10)}/{i}"),
            ),
            request_body=json.dumps(body).encode(),
        )
        harness.flow(ex, user=_random(rng, 16), request_id=f"card-{i}")
    text = generate_latest(harness.addon.prometheus.registry).decode()
    series = [line for line in text.splitlines() if line and not line.startswith("#")]
    # 300 label sets at most, plus the folded ones (bounded by kinds x codes, not by the input).
    requests = [s for s in series if s.startswith("copilot_requests_total")]
    assert sum(float(s.rsplit(" ", 1)[1]) for s in requests) == 10_000  # nothing lost, only folded
    assert len(requests) < 300
    assert len(series) < 300 + 100
    assert harness.sample("copilot_label_overflows_total", label="series") > 0
    assert harness.sample("copilot_label_overflows_total", label="editor") >= 10_000  # every fold counts


def test_pseudonymous_users_everywhere(harness: Harness, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("correct horse battery staple\n")
    harness.tctx.configure(harness.addon, copilot_pseudonym_key=f"@{key_file}")
    harness.flow(samples.BY_NAME["vscode_completion"], user="alice")
    harness.flow(samples.BY_NAME["neovim_completion"], user="alice")
    harness.flow(samples.BY_NAME["jetbrains_completion"], user="bob")
    harness.flush()
    users = [e.user for e in harness.events]
    assert users[0] == users[1] != users[2]
    assert all(u.startswith("u-") and len(u) == 18 for u in users)
    outputs = "".join(p.read_text() for p in harness.data_dir.rglob("*.json*"))
    outputs += generate_latest(harness.addon.prometheus.registry).decode()
    assert "alice" not in outputs and "bob" not in outputs
    assert users[0] in outputs


def test_metrics_auth_option_validation(tmp_path: Path) -> None:
    addon = CopilotInsight()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, copilot_data_dir=str(tmp_path), copilot_metrics_port=0)
        for bad in ("no-colon", ":nopass", "user:", f"@{tmp_path / 'missing'}"):
            with pytest.raises(exceptions.OptionsError):
                tctx.configure(addon, copilot_metrics_auth=bad)
        with pytest.raises(exceptions.OptionsError):
            tctx.configure(addon, copilot_max_series=5)
        addon.done()


def _get(url: str, auth: str | None = None, context: ssl.SSLContext | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url)
    if auth:
        import base64

        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=5, context=context) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""


def test_metrics_basic_auth_and_tls(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "ca")
    cert = ca._issue("127.0.0.1")
    (tmp_path / "auth").write_text("prom:scrape-secret\n")
    port = free_port()
    addon = CopilotInsight()
    with taddons.context(addon) as tctx:
        tctx.configure(
            addon,
            copilot_data_dir=str(tmp_path / "data"),
            copilot_metrics_port=port,
            copilot_metrics_auth=f"@{tmp_path / 'auth'}",
            copilot_metrics_certfile=str(cert),
            copilot_metrics_keyfile=str(ca._leaf_key_path),
        )
        addon.running()
        try:
            client = ssl.create_default_context(cafile=str(cert))
            url = f"https://127.0.0.1:{port}"
            assert _get(f"{url}/metrics", context=client)[0] == 401
            assert _get(f"{url}/metrics", "prom:wrong", context=client)[0] == 401
            status, body = _get(f"{url}/metrics", "prom:scrape-secret", context=client)
            assert status == 200 and "copilot_exporter_build_info" in body
            assert _get(f"{url}/healthz", context=client) == (200, "ok\n")
            with pytest.raises(OSError):  # plain HTTP to the TLS port is refused
                _get(f"http://127.0.0.1:{port}/metrics", "prom:scrape-secret")
        finally:
            addon.done()


def test_metrics_port_taken_is_counted_and_the_proxy_goes_on(tmp_path: Path) -> None:
    import socket

    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        addon = CopilotInsight()
        with taddons.context(addon) as tctx:
            tctx.configure(addon, copilot_data_dir=str(tmp_path), copilot_metrics_port=port)
            addon.running()
            h = Harness(addon, tctx, tmp_path)
            h.flow(samples.BY_NAME["vscode_completion"])
            assert h.sample("copilot_exporter_errors_total", component="metrics_server") == 1
            assert h.sample(
                "copilot_requests_total", user="alice", editor="vscode", language="python", kind="completion"
            )
            addon.done()


def test_flush_interval_is_parsed_and_checked(tmp_path: Path) -> None:
    addon = CopilotInsight()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, copilot_data_dir=str(tmp_path), copilot_metrics_port=0, copilot_flush_interval="0.25")
        assert addon.writer._interval == 0.25
        for bad in ("0", "-1", "soon", "inf", "nan"):
            with pytest.raises(exceptions.OptionsError):
                tctx.configure(addon, copilot_flush_interval=bad)
        addon.done()
