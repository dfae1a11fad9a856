"""Hardening round 2, item 12, under real mitmdump: a malformed OTLP headers value must not print the API key.

The issue's case: `copilot_otel_headers=@file` whose file holds `Authorization: Bearer sk-…` (a header line,
not `key=value`). The start-up error used to quote the value (`expected key=value,key2=value2, got
'Authorization: Bearer sk-…'`), defeating the `@file` form. Besides, the OpenTelemetry library's header
parser (`opentelemetry.util.re.parse_env_headers`, which the addon and the OTLP exporters call) logs a
WARNING quoting the malformed entry, and mitmdump printed it. Now the addon's line names the entry's place
only, a malformed OTEL_EXPORTER_OTLP_HEADERS stops the start the same way, and the library's warning is
logged without the entry.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

import pytest

from tests.e2e.harness import Mitmdump, closed_port, free_port

pytestmark = pytest.mark.e2e

START_LIMIT_S = 30.0


def _canary() -> str:
    return f"sk-r2canary-{secrets.token_hex(12)}"


def _headers_file(tmp_path: Path, key: str) -> Path:
    path = tmp_path / "otlp-headers"
    path.write_text(f"Authorization: Bearer {key}\n")  # a header line, not key=value
    return path


def _start_with_headers_file(tmp_path: Path, key: str) -> tuple[int, str]:
    proxy = Mitmdump(
        None,
        tmp_path,
        options={
            "copilot_data_dir": tmp_path / "data",
            "copilot_otel": True,
            "copilot_otel_endpoint": f"http://127.0.0.1:{closed_port()}",
            "copilot_otel_headers": f"@{_headers_file(tmp_path, key)}",
        },
    )
    proxy.confdir.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        proxy.command(), capture_output=True, text=True, timeout=START_LIMIT_S, stdin=subprocess.DEVNULL
    )
    return done.returncode, done.stdout + done.stderr


def test_a_malformed_otlp_headers_file_stops_the_start_with_a_line_that_names_the_problem_not_the_value(
    tmp_path: Path,
) -> None:
    key = _canary()
    code, output = _start_with_headers_file(tmp_path, key)
    assert code != 0, output
    lines = [line for line in output.splitlines() if "bad option" in line]
    assert len(lines) == 1, output
    assert "OTLP headers: entry 1 is not key=value" in lines[0]
    # Before the fix this line ended `got 'Authorization: Bearer sk-…'`.
    assert key not in lines[0] and "Bearer" not in lines[0]
    assert "Traceback" not in output, output


def test_a_malformed_otlp_headers_file_prints_the_key_nowhere(tmp_path: Path) -> None:
    key = _canary()
    code, output = _start_with_headers_file(tmp_path, key)
    assert code != 0, output
    assert key not in output and "Bearer" not in output, output


@pytest.mark.parametrize("variable", ["OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"])
def test_malformed_otlp_headers_in_the_environment_stop_the_start_and_print_the_key_nowhere(
    tmp_path: Path, variable: str
) -> None:
    """The environment form: the exporters would leave the entry out and send without it (and the library
    quoted it three times); now the start stops with one line naming the variable and the entry's place."""
    key = _canary()
    proxy = Mitmdump(
        None,
        tmp_path,
        env={
            variable: f"x-tenant=acme,Authorization: Bearer {key}",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{closed_port()}",
        },
        options={
            "copilot_data_dir": tmp_path / "data",
            "copilot_otel": True,
            "copilot_metrics_port": free_port(),
        },
    )
    proxy.confdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **proxy.env}
    done = subprocess.run(
        proxy.command(), capture_output=True, text=True, timeout=START_LIMIT_S, stdin=subprocess.DEVNULL, env=env
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    lines = [line for line in output.splitlines() if "bad option" in line or variable in line]
    assert len(lines) == 1 and f"{variable}: entry 2 is not key=value" in lines[0], output
    assert key not in output and "Bearer" not in output, output
    assert "Traceback" not in output, output
