"""Settings as values: one pure function from option values; errors name the option, the value and what is accepted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from exporter.options import BY_NAME, OPTIONS, parse_error
from exporter.settings import Caps, Files, MetricsEndpoint, Settings, SettingsError, settings_from

DEFAULTS: dict[str, Any] = {o.name: o.default for o in OPTIONS}


def _settings(**overrides: Any) -> Settings:
    values = {**DEFAULTS, **overrides}
    return settings_from(values.__getitem__)


def test_the_defaults_are_the_documented_ones() -> None:
    s = _settings()
    assert s.caps == Caps(500, 100, 10_000)
    assert s.files == Files(Path("logs"), "file", True, False, False, 1_000_000)
    assert s.metrics == MetricsEndpoint("127.0.0.1", 9180, None, "", "")
    assert (s.intercept_all, s.capture, s.flush_interval_s, s.pseudonym_key) == (False, False, 5.0, "")
    assert not s.otel.enabled and s.otel.export_interval_s == 0.0


def test_settings_are_values_that_compare_by_part() -> None:
    a, b = _settings(), _settings(copilot_metrics_port=9999)
    assert a.files == b.files and a.otel == b.otel and a.metrics != b.metrics
    with pytest.raises(AttributeError):
        a.capture = True  # type: ignore[misc]


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("copilot_metrics_port", 70000, "copilot_metrics_port=70000: expected 0..65535"),
        ("copilot_metrics_port", -1, "copilot_metrics_port=-1: expected 0..65535"),
        ("copilot_max_users", 0, "copilot_max_users=0: expected at least 1"),
        ("copilot_max_series", 99, "copilot_max_series=99: expected at least 100"),
        ("copilot_record_max_bytes", 0, "copilot_record_max_bytes=0: expected at least 1"),
        ("copilot_flush_interval", "abc", "copilot_flush_interval='abc': expected a positive number of seconds"),
        ("copilot_flush_interval", "inf", "copilot_flush_interval='inf': expected a positive number of seconds"),
        ("copilot_otel_export_interval", "-2", "copilot_otel_export_interval='-2': expected a positive number"),
        ("copilot_log_json", "sideways", "copilot_log_json='sideways': expected one of 'file', 'stdout', 'both'"),
        ("copilot_intercept", "none", "copilot_intercept='none': expected one of 'copilot', 'all'"),
        ("copilot_otel_protocol", "http/json", "copilot_otel_protocol='http/json': expected one of"),
        ("copilot_data_dir", " ", "copilot_data_dir='': expected a directory path"),
        ("copilot_hosts", ["(unclosed"], "copilot_hosts: '(unclosed' is not a valid regex"),
        ("copilot_metrics_auth", "nocolon", "copilot_metrics_auth: expected user:password"),
        ("copilot_metrics_keyfile", "/k.pem", "copilot_metrics_keyfile: needs copilot_metrics_certfile"),
        ("copilot_record", "yes", "copilot_record='yes': expected true or false"),
    ],
)
def test_a_bad_value_names_the_option_the_value_and_what_is_accepted(option: str, value: Any, message: str) -> None:
    with pytest.raises(SettingsError) as raised:
        _settings(**{option: value})
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)


def test_secret_files_are_read_and_never_echoed(tmp_path: Path) -> None:
    secret = tmp_path / "auth"
    secret.write_text("scraper:hunter2\n")
    assert _settings(copilot_metrics_auth=f"@{secret}").metrics.auth == ("scraper", "hunter2")
    with pytest.raises(SettingsError, match=r"copilot_pseudonym_key: cannot read .*missing"):
        _settings(copilot_pseudonym_key=f"@{tmp_path / 'missing'}")
    bad = tmp_path / "bad-auth"
    bad.write_text("Bearer sk-live-0123456789\n")
    with pytest.raises(SettingsError) as raised:
        _settings(copilot_metrics_auth=f"@{bad}")
    assert "sk-live" not in str(raised.value)


def test_pseudonymous_users_reach_the_otel_options() -> None:
    assert _settings(copilot_pseudonym_key="k").otel.pseudonymous_users
    assert not _settings().otel.pseudonymous_users


@pytest.mark.parametrize(
    ("option", "values", "message"),
    [
        ("copilot_metrics_port", ["abc"], "copilot_metrics_port='abc': expected a whole number"),
        ("copilot_max_users", ["1.5"], "copilot_max_users='1.5': expected a whole number"),
        ("copilot_record", ["yes"], "copilot_record='yes': expected true or false"),
        ("copilot_intercept", ["none"], "copilot_intercept='none': expected one of 'copilot', 'all'"),
        ("copilot_metrics_port", ["1", "2"], "copilot_metrics_port: given 2 times"),
    ],
)
def test_set_values_mitmproxy_cannot_parse_are_named(option: str, values: list[str], message: str) -> None:
    problem = parse_error(BY_NAME[option], values)
    assert problem is not None and problem.startswith(message)


@pytest.mark.parametrize(
    ("option", "values"),
    [("copilot_metrics_port", ["9181"]), ("copilot_record", ["true"]), ("copilot_record", [""]), ("copilot_hosts", [])],
)
def test_good_set_values_pass(option: str, values: list[str]) -> None:
    assert parse_error(BY_NAME[option], values) is None
