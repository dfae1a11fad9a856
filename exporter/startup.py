"""The start-up summary: from plain option values, the lines a new admin needs to point one IDE at the proxy."""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from mitmproxy.proxy.mode_specs import ProxyMode

from exporter.values import quick_init

# Clients trust this file; mitmproxy writes it into its confdir on first start.
CA_CERT_NAME = "mitmproxy-ca-cert.pem"
# Modes whose listener is an HTTP proxy an IDE can be pointed at with http://user:password@host:port.
HTTP_PROXY_MODES = frozenset({"regular", "upstream"})
ALL_INTERFACES = frozenset({"", "0.0.0.0", "::"})


@quick_init
@dataclass(frozen=True, slots=True)
class Listener:
    """One proxy listener: its mitmproxy mode (e.g. regular, upstream, socks5) and the address it binds."""

    mode: str
    host: str
    port: int | None


@quick_init
@dataclass(frozen=True, slots=True)
class StartupFacts:
    """Everything the start-up summary says, as plain values (no mitmproxy objects)."""

    version: str
    listeners: tuple[Listener, ...]
    proxyauth: bool
    ca_cert: str
    data_dir: str
    metrics_url: str | None  # None: /metrics is off or failed to start
    metrics_port_option: int
    metrics_auth: bool
    proxyauth_any: bool = False  # proxyauth=any: a user name is required, every password accepted


@quick_init
@dataclass(frozen=True, slots=True)
class Line:
    """One log line of the summary and the level to log it at."""

    level: int
    text: str


def is_loopback(host: str) -> bool:
    """True when `host` only accepts connections from this machine ('' and 0.0.0.0 mean all interfaces)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a hostname other than localhost may resolve to any interface


def _url_host(host: str, placeholder: str) -> str:
    if host in ALL_INTERFACES:
        return placeholder
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def metrics_url(host: str, port: int | None, tls: bool) -> str | None:
    """The URL /metrics answers on, or None when it is not serving."""
    if port is None or port == 0:
        return None
    scheme = "https" if tls else "http"
    return f"{scheme}://{_url_host(host, '<this-host>')}:{port}/metrics"


def listeners(
    modes: Sequence[str], listen_host: str, listen_port: int | None, bound: Iterable[Sequence[Any]] = ()
) -> tuple[Listener, ...]:
    """The proxy's listeners from mitmproxy's mode specs and listen options.

    `bound` (the proxy server's real listen addresses, when known) replaces the configured port, so that
    `listen_port=0` shows the port the system picked.
    """
    result: list[Listener] = []
    for spec in modes:
        try:
            mode = ProxyMode.parse(spec)
        except ValueError:
            continue  # mitmproxy itself refuses it before start-up
        result.append(Listener(mode.type_name, mode.listen_host(listen_host), mode.listen_port(listen_port)))
    addresses = [tuple(a) for a in bound]
    if len(result) == 1 and len(addresses) >= 1 and len(addresses[0]) >= 2:
        # Several addresses for one mode are the IPv4 and IPv6 sockets of one listener on the same port.
        only = result[0]
        result[0] = Listener(only.mode, only.host, int(addresses[0][1]))
    return tuple(result)


def _auth_text(proxyauth: bool, proxyauth_any: bool) -> str:
    if proxyauth_any:
        return "proxyauth=any: a user name is required, any password is accepted"
    return "proxyauth checks the password" if proxyauth else "the user name is taken as sent, no password check"


def _proxy_line(listener: Listener, how: str) -> str:
    where = _url_host(listener.host, "<proxy-host>")
    port = "" if listener.port is None else f":{listener.port}"
    scope = "all interfaces" if listener.host in ALL_INTERFACES else listener.host
    if listener.mode in HTTP_PROXY_MODES:
        creds = "<user>:<password>@"
        return (
            f"point IDEs at the proxy http://{creds}{where}{port} ({listener.mode} mode, listening on {scope}; {how})"
        )
    if listener.mode == "socks5":
        return f"SOCKS5 proxy on socks5://{where}{port} (listening on {scope})"
    return f"{listener.mode} mode listening on {where}{port} ({scope})"


def _metrics_line(facts: StartupFacts) -> str:
    if facts.metrics_url is None:
        if facts.metrics_port_option == 0:
            return "/metrics is off (copilot_metrics_port=0)"
        return "/metrics is not serving (see the warning above); the proxy passes traffic regardless"
    auth = "basic auth on (copilot_metrics_auth)" if facts.metrics_auth else "no auth"
    return f"/metrics on {facts.metrics_url} ({auth}; /healthz open)"


def startup_lines(facts: StartupFacts) -> list[Line]:
    """The lines to log once the proxy is up, most useful first; the open-proxy warning is a WARNING.

    WARNING rather than ERROR: mitmdump exits when an error is logged during start-up.
    """
    info = logging.INFO
    lines = [Line(info, f"version {facts.version} ready")]
    how = _auth_text(facts.proxyauth, facts.proxyauth_any)
    lines += [Line(info, _proxy_line(listener, how)) for listener in facts.listeners]
    lines.append(
        Line(
            info,
            f"clients must trust the CA certificate {facts.ca_cert} "
            f"(OS trust store, or NODE_EXTRA_CA_CERTS={facts.ca_cert} for VS Code and the Copilot CLI)",
        )
    )
    lines.append(Line(info, _metrics_line(facts)))
    lines.append(Line(info, f"data dir {facts.data_dir}: daily summaries in metrics/, the JSON event log in events/"))
    if not facts.proxyauth:
        lines.append(
            Line(
                info,
                "proxyauth is not set: every user is 'anonymous' unless the IDE sends Proxy-Authorization "
                "anyway; set proxyauth=@/path/to/htpasswd (or proxyauth=any) to name users",
            )
        )
    exposed = [listener for listener in facts.listeners if not is_loopback(listener.host)]
    if exposed and not facts.proxyauth:
        where = ", ".join(
            f"{'all interfaces' if x.host in ALL_INTERFACES else x.host}"
            + ("" if x.port is None else f" port {x.port}")
            for x in exposed
        )
        lines.append(
            Line(
                logging.WARNING,
                f"OPEN PROXY: listening on {where} without proxyauth: anyone who reaches this port can "
                "use the proxy; set proxyauth=@/path/to/htpasswd or listen_host=127.0.0.1",
            )
        )
    elif facts.listeners and not exposed:
        lines.append(
            Line(
                info,
                "the proxy listens on loopback only: other machines cannot use it; to serve them set "
                "listen_host=0.0.0.0 together with proxyauth",
            )
        )
    return lines


def facts_from_options(
    options: Any, version: str, metrics_port: int | None, bound: Iterable[Sequence[Any]] = ()
) -> StartupFacts:
    """Reads the facts from mitmproxy's options (`ctx.options`) and the port /metrics really serves on."""
    confdir = os.path.abspath(os.path.expanduser(options.confdir))
    # The option belongs to mitmproxy's proxyauth addon, always loaded by mitmdump but not in every test context.
    # Only its kind is kept: a user:password spec must never reach the log.
    proxyauth = getattr(options, "proxyauth", None) or ""
    return StartupFacts(
        version=version,
        listeners=listeners(list(options.mode), options.listen_host, options.listen_port, bound),
        proxyauth=bool(proxyauth),
        proxyauth_any=proxyauth.strip().lower() == "any",
        ca_cert=os.path.join(confdir, CA_CERT_NAME),
        data_dir=os.path.abspath(os.path.expanduser(options.copilot_data_dir)),
        metrics_url=metrics_url(options.copilot_metrics_host, metrics_port, bool(options.copilot_metrics_certfile)),
        metrics_port_option=options.copilot_metrics_port,
        metrics_auth=bool(options.copilot_metrics_auth),
    )
