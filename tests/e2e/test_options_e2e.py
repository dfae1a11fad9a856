"""Options under a real mitmdump: a bad value stops start-up with one clear line; OTLP needs only the environment."""

from __future__ import annotations

import importlib.metadata
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.fakebackend import FakeCopilotBackend
from tests.e2e.harness import CONSOLE_SCRIPT, Mitmdump, free_port, proxy_client, send
from tests.e2e.test_e2e import PASSWORDS, write_htpasswd
from tests.e2e.test_otel_e2e import Receiver, _attrs, _spans
from tests.e2e.test_otel_mitmdump import _traffic

pytestmark = pytest.mark.e2e

START_LIMIT_S = 30.0  # "within seconds": a healthy start takes 1-3 s here


def _run_to_exit(proxy: Mitmdump) -> tuple[int, str, float]:
    """Runs mitmdump's command to its exit; returns the exit code, its output and how long it took."""
    proxy.confdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    done = subprocess.run(
        proxy.command(), capture_output=True, text=True, timeout=START_LIMIT_S, stdin=subprocess.DEVNULL
    )
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


BAD_OPTIONS = [
    # (kind of option, option, value, what the line must say)
    ("int", "copilot_metrics_port", "abc", "copilot_metrics_port='abc': expected a whole number"),
    ("int range", "copilot_max_users", "0", "copilot_max_users=0: expected at least 1"),
    ("bool", "copilot_record", "yes", "copilot_record='yes': expected true or false"),
    ("choice", "copilot_intercept", "none", "copilot_intercept='none': expected one of 'copilot', 'all'"),
    ("choice", "copilot_log_json", "sideways", "copilot_log_json='sideways': expected one of"),
    ("duration", "copilot_flush_interval", "abc", "copilot_flush_interval='abc': expected a positive number"),
    ("path", "copilot_pseudonym_key", "@/nonexistent/key", "copilot_pseudonym_key: cannot read /nonexistent/key"),
]


@pytest.mark.parametrize(("kind", "option", "value", "says"), BAD_OPTIONS, ids=[f"{b[0]}-{b[1]}" for b in BAD_OPTIONS])
def test_a_bad_option_stops_mitmdump_with_one_clear_line(
    tmp_path: Path, kind: str, option: str, value: str, says: str
) -> None:
    proxy = Mitmdump(None, tmp_path, options={"copilot_data_dir": tmp_path / "data", option: value})
    code, output, took = _run_to_exit(proxy)
    assert code != 0, output
    assert took < START_LIMIT_S
    lines = [line for line in output.splitlines() if "bad option" in line]
    assert len(lines) == 1, output
    assert says in lines[0], output
    assert "Traceback" not in output, output


def test_the_console_script_refuses_a_bad_option_the_same_way(tmp_path: Path) -> None:
    proxy = Mitmdump(None, tmp_path, addon=None, executable=CONSOLE_SCRIPT, options={"copilot_metrics_port": "abc"})
    code, output, _ = _run_to_exit(proxy)
    assert code != 0
    assert [line for line in output.splitlines() if "bad option" in line] != [], output
    assert "copilot_metrics_port='abc'" in output and "Traceback" not in output


def test_an_unwritable_data_dir_is_reported_at_start_and_the_proxy_still_serves(tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    with Mitmdump(
        None, tmp_path / "m", options={"copilot_data_dir": blocked / "data", "copilot_metrics_port": free_port()}
    ) as proxy:
        log = proxy.wait_for_log("cannot write to the data dir", timeout=10)
        assert str(blocked / "data") in log and "Not a directory" in log
        assert proxy.running()


def test_otel_packages_are_core_dependencies() -> None:
    """A plain `pip install copilot-proxy-insight` brings the OpenTelemetry SDK and its OTLP/HTTP exporter."""
    requires = importlib.metadata.requires("copilot-proxy-insight") or []
    core = {r.split(">")[0].split("<")[0].split("=")[0].strip() for r in requires if "extra ==" not in r}
    assert {"opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http"} <= core


def test_only_the_otlp_endpoint_variable_turns_the_export_on(tmp_path: Path) -> None:
    """No copilot_otel option at all: OTEL_EXPORTER_OTLP_ENDPOINT alone makes a real mitmdump export spans."""
    htpasswd = write_htpasswd(tmp_path / "htpasswd", PASSWORDS)
    with Receiver() as receiver, FakeCopilotBackend() as backend:
        calls = _traffic(backend)
        proxy = Mitmdump(
            backend,
            tmp_path / "m",
            proxyauth=f"@{htpasswd}",
            options={"copilot_data_dir": tmp_path / "data", "connection_strategy": "lazy"},
            env={"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}", "OTEL_SDK_DISABLED": "false"},
        ).start()
        try:
            with proxy_client(proxy.port, "alice", PASSWORDS["alice"], proxy.ca_cert_path) as client:
                for ex in calls:
                    send(client, ex)
        finally:
            assert proxy.stop() == 0, proxy.log_text()[-3000:]
    assert "OpenTelemetry on" in proxy.log_text()
    _, spans = _spans(receiver)
    assert len(spans) == len(calls)
    assert {_attrs(s.attributes)["enduser.id"] for s in spans} == {"alice"}
