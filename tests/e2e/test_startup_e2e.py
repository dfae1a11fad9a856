"""The first minute of a new admin, for real: the console script as the README's quick start runs it.

A real `copilot-proxy-insight` process (the .venv console script) with the fake HTTPS Copilot backend
upstream: what its first log lines say, that they are true (the /metrics URL answers with that scheme and
auth), the loopback default, the quiet per-flow default, and the htpasswd error an admin really meets.
Everything listens on 127.0.0.1; the open-proxy warning, which needs a listener beyond loopback, is covered
by tests/test_startup.py through the addon's `running` hook instead.
"""

from __future__ import annotations

import re
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest

from exporter import __version__
from tests import samples as S
from tests.e2e.fakebackend import CertificateAuthority, FakeCopilotBackend
from tests.e2e.harness import CONSOLE_SCRIPT, Mitmdump, free_port, proxy_client, send

pytestmark = pytest.mark.e2e

# mitmdump prefixes every line with a [HH:MM:SS.mmm] timestamp.
_STAMP = re.compile(r"^\[\d\d:\d\d:\d\d\.\d{3}\] ", re.M)


class QuickStart(Mitmdump):
    """The console script without the harness's `--listen-host 127.0.0.1`: the command's own default rules."""

    def command(self) -> list[str]:
        cmd = super().command()
        i = cmd.index("--listen-host")
        del cmd[i : i + 2]
        return cmd


def summary(log: str) -> list[str]:
    """The exporter's start-up lines, without timestamps and prefix."""
    prefix = "copilot-proxy-insight: "
    return [line[len(prefix) :] for line in _STAMP.sub("", log).splitlines() if line.startswith(prefix)]


def test_quick_start_listens_on_loopback_and_its_first_lines_say_how_to_connect(tmp_path: Path) -> None:
    metrics_port = free_port()
    with FakeCopilotBackend() as backend:
        ex = S.BY_NAME["vscode_completion"]
        backend.script_exchange(ex)
        proxy = QuickStart(
            backend,
            tmp_path / "mitmdump",
            executable=CONSOLE_SCRIPT,
            addon=None,
            options={"copilot_data_dir": tmp_path / "data", "copilot_metrics_port": metrics_port},
            cwd=tmp_path,
            repo_on_path=False,
        )
        assert "--listen-host" not in proxy.command() and "listen_host" not in " ".join(proxy.command())
        with proxy:
            log = proxy.wait_for_log("the proxy listens on loopback only")
            assert f"HTTP(S) proxy (upstream mode) listening at 127.0.0.1:{proxy.port}." in log, log
            lines = summary(log)
            assert lines[0] == f"version {__version__} ready"
            assert lines[1].startswith(f"point IDEs at the proxy http://<user>:<password>@127.0.0.1:{proxy.port} ")
            assert f"CA certificate {proxy.ca_cert_path} " in lines[2]
            assert lines[3] == f"/metrics on http://127.0.0.1:{metrics_port}/metrics (no auth; /healthz open)"
            assert lines[4].startswith(f"data dir {tmp_path / 'data'}: ")
            assert "every user is 'anonymous'" in lines[5]
            assert "OPEN PROXY" not in log
            # Everything a new admin needs comes within the first lines of the run.
            first = _STAMP.sub("", log).splitlines()[:12]
            assert sum(line.startswith("copilot-proxy-insight: ") for line in first) == len(lines) == 7, first
            # The lines tell the truth: the CA is there, /metrics answers at that URL.
            assert proxy.ca_cert_path.is_file()
            assert httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5, trust_env=False).status_code == 200
            with proxy_client(proxy.port, "alice", "x", proxy.ca_cert_path) as client:
                assert send(client, ex).status == 200
            proxy.wait_for(lambda: (tmp_path / "data" / "events").is_dir(), 10, "the event log")
        # flow_detail=0 by default: no per-flow line for the completion, no connection chatter either.
        assert proxy.returncode == 0
        assert "/v1/engines/" not in proxy.log_text(), proxy.log_text()[-2000:]
        assert "client connect" not in proxy.log_text(), proxy.log_text()[-2000:]


def test_flow_detail_set_by_the_user_brings_the_per_flow_lines_back(tmp_path: Path) -> None:
    """The counterpart of the quiet default: the same request with --set flow_detail=1 is printed."""
    with FakeCopilotBackend() as backend:
        ex = S.BY_NAME["vscode_completion"]
        backend.script_exchange(ex)
        proxy = Mitmdump(
            backend,
            tmp_path / "mitmdump",
            executable=CONSOLE_SCRIPT,
            addon=None,
            options={"copilot_data_dir": tmp_path / "data", "copilot_metrics_port": 0, "flow_detail": 1},
            cwd=tmp_path,
            repo_on_path=False,
        )
        with proxy:
            with proxy_client(proxy.port, "alice", "x", proxy.ca_cert_path) as client:
                assert send(client, ex).status == 200
            log = proxy.wait_for_log("/v1/engines/")
            assert "client connect" in log


def test_tls_metrics_with_basic_auth_and_proxyauth_are_said_as_they_are(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "ca")
    cert = ca._issue("127.0.0.1")
    (tmp_path / "metrics-auth").write_text("prom:scrape-secret\n")
    metrics_port = free_port()
    proxy = Mitmdump(
        None,
        tmp_path / "mitmdump",
        executable=CONSOLE_SCRIPT,
        addon=None,
        proxyauth="any",
        options={
            "copilot_data_dir": tmp_path / "data",
            "copilot_metrics_port": metrics_port,
            "copilot_metrics_certfile": cert,
            "copilot_metrics_keyfile": ca._leaf_key_path,
            "copilot_metrics_auth": f"@{tmp_path / 'metrics-auth'}",
        },
        cwd=tmp_path,
        repo_on_path=False,
        wait_metrics=False,  # the harness probes plain http
    )
    with proxy:
        log = proxy.wait_for_log("data dir ")
        url = f"https://127.0.0.1:{metrics_port}/metrics"
        assert f"/metrics on {url} (basic auth on (copilot_metrics_auth); /healthz open)" in summary(log)
        assert f"http://127.0.0.1:{metrics_port}" not in log
        assert "proxyauth=any: a user name is required, any password is accepted" in log
        assert "anonymous" not in log and "OPEN PROXY" not in log
        context = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(verify=context, trust_env=False, timeout=5) as client:
            assert client.get(url).status_code == 401
            assert client.get(url, auth=("prom", "scrape-secret")).status_code == 200


def test_an_md5_htpasswd_file_stops_the_start_with_the_message_the_guide_quotes(tmp_path: Path) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("alice:$apr1$R3a1s0lt$0a0a0a0a0a0a0a0a0a0a01\n")
    result = subprocess.run(
        [
            str(CONSOLE_SCRIPT),
            "--set",
            f"confdir={tmp_path / 'conf'}",
            "--set",
            f"proxyauth=@{htpasswd}",
            "--set",
            "copilot_metrics_port=0",
            "--set",
            f"copilot_data_dir={tmp_path / 'data'}",
            "-p",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert f"copilot-proxy-insight: Could not open htpasswd file: {htpasswd}\n" in result.stderr, result.stderr
    guide = (Path(__file__).resolve().parents[2] / "docs" / "admin-guide.md").read_text()
    assert '"copilot-proxy-insight: Could not open htpasswd file: <path>"' in guide
