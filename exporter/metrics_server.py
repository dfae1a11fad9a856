"""The HTTP(S) server for /metrics (and an open /healthz) on its own thread, with optional basic auth and TLS."""

from __future__ import annotations

import base64
import hmac
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

_Environ = dict[str, Any]
_StartResponse = Callable[..., Any]
_App = Callable[[_Environ, _StartResponse], Iterable[bytes]]


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr for every scrape."""

    def log_message(self, format: str, *args: Any) -> None:
        return


def basic_auth_app(app: _App, user: str, password: str) -> _App:
    """Wraps a WSGI app with HTTP basic auth (constant-time compare); /healthz stays open for probes."""
    expected = base64.b64encode(f"{user}:{password}".encode()).decode()

    def guarded(environ: _Environ, start_response: _StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/healthz":
            return app(environ, start_response)
        scheme, _, value = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        if scheme.lower() == "basic" and hmac.compare_digest(value.strip().encode(), expected.encode()):
            return app(environ, start_response)
        start_response(
            "401 Unauthorized",
            [("WWW-Authenticate", 'Basic realm="copilot-proxy-insight"'), ("Content-Type", "text/plain")],
        )
        return [b"authentication required\n"]

    return guarded


def _with_healthz(app: _App) -> _App:
    def routed(environ: _Environ, start_response: _StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        return app(environ, start_response)

    return routed


def socket_family(host: str, port: int) -> int:
    """IPv4 or IPv6 for a listen address, as getaddrinfo resolves it (like client_python's _get_best_family)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    return int(infos[0][0])


class MetricsServer:
    """A running /metrics server; `close()` stops it within a bound."""

    def __init__(self, httpd: Any, thread: threading.Thread, host: str, tls: bool, auth: bool) -> None:
        self._httpd = httpd
        self._thread = thread
        self.host = host
        self.tls = tls
        self.auth = auth

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


def serve_metrics(
    registry: CollectorRegistry,
    host: str,
    port: int,
    *,
    basic_auth: tuple[str, str] | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
) -> MetricsServer:
    """Serves `registry` on /metrics from a thread. Raises OSError when the port cannot be bound or a
    certificate file cannot be read (the message names the file), ssl.SSLError for a bad certificate or key."""
    app: _App = _with_healthz(make_wsgi_app(registry))
    if basic_auth is not None:
        app = basic_auth_app(app, *basic_auth)
    context = None
    if certfile:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        for path in (certfile, keyfile):
            if path:
                try:
                    with open(path, "rb"):
                        pass
                except OSError as e:
                    raise OSError(f"cannot read {path}: {e.strerror or e}") from None
        context.load_cert_chain(certfile, keyfile or None)

    class Server(ThreadingWSGIServer):
        address_family = socket_family(host, port)

    httpd = make_server(host, port, app, Server, handler_class=_QuietHandler)
    if context is not None:
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, name="copilot-proxy-insight-metrics", daemon=True)
    thread.start()
    return MetricsServer(httpd, thread, host, tls=context is not None, auth=basic_auth is not None)
