"""Tests of exporter/startup.py: the start-up summary a new admin reads, and its wiring into the addon."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from mitmproxy.addons.proxyauth import ProxyAuth
from mitmproxy.test import taddons

from exporter import __version__
from exporter.hooks import CopilotInsight
from exporter.startup import (
    Line,
    Listener,
    StartupFacts,
    facts_from_options,
    is_loopback,
    listeners,
    metrics_url,
    startup_lines,
)


def facts(**changes: object) -> StartupFacts:
    base: dict[str, object] = {
        "version": "1.2.3",
        "listeners": (Listener("regular", "127.0.0.1", 8080),),
        "proxyauth": True,
        "ca_cert": "/home/ops/.mitmproxy/mitmproxy-ca-cert.pem",
        "data_dir": "/var/lib/copilot",
        "metrics_url": "http://127.0.0.1:9180/metrics",
        "metrics_port_option": 9180,
        "metrics_auth": False,
    }
    base.update(changes)
    return StartupFacts(**base)  # type: ignore[arg-type]


def text(lines: list[Line]) -> str:
    return "\n".join(line.text for line in lines)


def warnings(lines: list[Line]) -> list[str]:
    return [line.text for line in lines if line.level >= logging.WARNING]


@pytest.mark.parametrize(
    ("host", "port", "tls", "expected"),
    [
        ("127.0.0.1", 9180, False, "http://127.0.0.1:9180/metrics"),
        ("127.0.0.1", 9443, True, "https://127.0.0.1:9443/metrics"),
        ("0.0.0.0", 9180, True, "https://<this-host>:9180/metrics"),
        ("::1", 9180, False, "http://[::1]:9180/metrics"),
        ("metrics.example.internal", 9180, False, "http://metrics.example.internal:9180/metrics"),
        ("127.0.0.1", None, False, None),
        ("127.0.0.1", 0, True, None),
    ],
)
def test_metrics_url_has_the_scheme_the_server_speaks(host: str, port: int | None, tls: bool, expected: str) -> None:
    assert metrics_url(host, port, tls) == expected


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("", False),
        ("0.0.0.0", False),
        ("::", False),
        ("10.1.2.3", False),
        ("proxy.example.internal", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("modes", "host", "port", "bound", "expected"),
    [
        (["regular"], "", None, (), (Listener("regular", "", 8080),)),
        (["regular"], "127.0.0.1", 0, [("127.0.0.1", 40123)], (Listener("regular", "127.0.0.1", 40123),)),
        (["regular"], "", None, [("0.0.0.0", 8080), ("::", 8080, 0, 0)], (Listener("regular", "", 8080),)),
        (["upstream:http://corp:3128"], "10.0.0.5", 3129, (), (Listener("upstream", "10.0.0.5", 3129),)),
        (["socks5"], "", None, (), (Listener("socks5", "", 1080),)),
        (
            ["regular@127.0.0.1:8081", "socks5@1081"],
            "",
            None,
            (),
            (Listener("regular", "127.0.0.1", 8081), Listener("socks5", "", 1081)),
        ),
    ],
)
def test_listeners_follow_mitmproxy_mode_specs(
    modes: list[str], host: str, port: int | None, bound: list[tuple[object, ...]], expected: tuple[Listener, ...]
) -> None:
    assert listeners(modes, host, port, bound) == expected


def test_the_first_lines_say_how_to_point_an_ide_at_the_proxy() -> None:
    lines = startup_lines(facts())
    assert lines[0].text == "version 1.2.3 ready"
    assert "http://<user>:<password>@127.0.0.1:8080" in lines[1].text
    assert "proxyauth checks the password" in lines[1].text
    assert "CA certificate /home/ops/.mitmproxy/mitmproxy-ca-cert.pem" in lines[2].text
    assert "NODE_EXTRA_CA_CERTS=/home/ops/.mitmproxy/mitmproxy-ca-cert.pem" in lines[2].text
    assert lines[3].text == "/metrics on http://127.0.0.1:9180/metrics (no auth; /healthz open)"
    assert lines[4].text.startswith("data dir /var/lib/copilot: ")
    assert "loopback only" in text(lines) and not warnings(lines)
    assert all(line.level == logging.INFO for line in lines)


def test_https_metrics_with_basic_auth() -> None:
    lines = startup_lines(facts(metrics_url="https://127.0.0.1:9180/metrics", metrics_auth=True))
    assert "/metrics on https://127.0.0.1:9180/metrics (basic auth on (copilot_metrics_auth); /healthz open)" in [
        line.text for line in lines
    ]
    assert "http://127.0.0.1:9180" not in text(lines)


def test_metrics_off_and_metrics_failed_are_told_apart() -> None:
    off = text(startup_lines(facts(metrics_url=None, metrics_port_option=0)))
    failed = text(startup_lines(facts(metrics_url=None, metrics_port_option=9180)))
    assert "/metrics is off (copilot_metrics_port=0)" in off
    assert "/metrics is not serving" in failed and "is off" not in failed


def test_without_proxyauth_every_user_is_anonymous() -> None:
    lines = startup_lines(facts(proxyauth=False))
    assert "proxyauth is not set: every user is 'anonymous'" in text(lines)
    assert "no password check" in lines[1].text
    assert not warnings(lines)  # loopback only: nobody else can reach it
    assert "anonymous" not in text(startup_lines(facts(proxyauth=True)))


@pytest.mark.parametrize(
    ("listener", "where"),
    [
        (Listener("regular", "", 8080), "all interfaces port 8080"),
        (Listener("regular", "0.0.0.0", 8080), "all interfaces port 8080"),
        (Listener("regular", "10.0.0.5", 3128), "10.0.0.5 port 3128"),
        (Listener("socks5", "::", 1080), "all interfaces port 1080"),
    ],
)
def test_open_proxy_is_a_loud_warning(listener: Listener, where: str) -> None:
    lines = startup_lines(facts(listeners=(listener,), proxyauth=False))
    [warning] = warnings(lines)
    assert warning.startswith(f"OPEN PROXY: listening on {where} without proxyauth")
    # WARNING, never ERROR: mitmdump exits when an error is logged during start-up.
    assert all(line.level < logging.ERROR for line in lines)
    assert "loopback only" not in text(lines)


def test_no_warning_beyond_loopback_with_proxyauth() -> None:
    lines = startup_lines(facts(listeners=(Listener("regular", "", 8080),), proxyauth=True))
    assert not warnings(lines)
    assert "http://<user>:<password>@<proxy-host>:8080" in lines[1].text
    assert "listening on all interfaces" in lines[1].text


def test_proxyauth_any_is_said_to_accept_any_password() -> None:
    lines = startup_lines(facts(listeners=(Listener("regular", "", 8080),), proxyauth=True, proxyauth_any=True))
    assert "proxyauth=any: a user name is required, any password is accepted" in lines[1].text
    assert not warnings(lines) and "anonymous" not in text(lines)


def test_a_user_password_spec_never_reaches_the_lines(tmp_path: Path) -> None:
    f = facts_from_options(Options(proxyauth="admin:s3cret-pw", confdir=str(tmp_path)), "9.9", 9180)
    assert f.proxyauth and not f.proxyauth_any
    assert "s3cret-pw" not in text(startup_lines(f)) and "admin" not in text(startup_lines(f))
    assert facts_from_options(Options(proxyauth="any", confdir=str(tmp_path)), "9.9", 9180).proxyauth_any


def test_one_exposed_listener_among_loopback_ones_still_warns() -> None:
    both = (Listener("regular", "127.0.0.1", 8080), Listener("socks5", "", 1080))
    [warning] = warnings(startup_lines(facts(listeners=both, proxyauth=False)))
    assert "all interfaces port 1080" in warning and "8080" not in warning


class Options:
    """The attributes facts_from_options reads from ctx.options."""

    def __init__(self, **values: object) -> None:
        defaults: dict[str, object] = {
            "confdir": "~/.mitmproxy",
            "mode": ["regular"],
            "listen_host": "",
            "listen_port": None,
            "proxyauth": None,
            "copilot_data_dir": "logs",
            "copilot_metrics_host": "127.0.0.1",
            "copilot_metrics_port": 9180,
            "copilot_metrics_certfile": "",
            "copilot_metrics_auth": "",
        }
        defaults.update(values)
        self.__dict__.update(defaults)


def test_facts_from_options_make_paths_absolute(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    f = facts_from_options(Options(), "9.9", 9180)
    assert f.data_dir == str(tmp_path / "logs")
    assert f.ca_cert == str(tmp_path / "home" / ".mitmproxy" / "mitmproxy-ca-cert.pem")
    assert f.metrics_url == "http://127.0.0.1:9180/metrics" and not f.metrics_auth and not f.proxyauth
    assert f.listeners == (Listener("regular", "", 8080),)


def test_facts_from_options_tls_auth_and_proxyauth(tmp_path: Path) -> None:
    f = facts_from_options(
        Options(
            confdir=str(tmp_path / "conf"),
            copilot_metrics_certfile="/etc/cert.pem",
            copilot_metrics_auth="@/etc/metrics-auth",
            proxyauth="@/etc/htpasswd",
            listen_host="127.0.0.1",
        ),
        "9.9",
        40001,
        bound=[("127.0.0.1", 40002)],
    )
    assert f.metrics_url == "https://127.0.0.1:40001/metrics" and f.metrics_auth and f.proxyauth
    assert f.ca_cert == str(tmp_path / "conf" / "mitmproxy-ca-cert.pem")
    assert f.listeners == (Listener("regular", "127.0.0.1", 40002),)


def test_the_addon_logs_the_summary_when_running(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    addon = CopilotInsight()
    with taddons.context(addon, ProxyAuth()) as tctx:
        tctx.configure(
            addon,
            copilot_data_dir=str(tmp_path / "data"),
            copilot_metrics_port=0,
            confdir=str(tmp_path / "conf"),
            listen_host="0.0.0.0",
        )
        caplog.set_level(logging.INFO, logger="copilot_proxy_insight")
        try:
            addon.running()
        finally:
            addon.done()
    logged = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "copilot_proxy_insight"]
    messages = "\n".join(m for _, m in logged)
    assert f"copilot-proxy-insight: version {__version__} ready" in messages
    assert str(tmp_path / "conf" / "mitmproxy-ca-cert.pem") in messages
    assert f"data dir {tmp_path / 'data'}" in messages
    assert "/metrics is off (copilot_metrics_port=0)" in messages
    assert [m for level, m in logged if level == logging.WARNING] == [
        "copilot-proxy-insight: OPEN PROXY: listening on all interfaces port 8080 without proxyauth: anyone who "
        "reaches this port can use the proxy; set proxyauth=@/path/to/htpasswd or listen_host=127.0.0.1"
    ]
