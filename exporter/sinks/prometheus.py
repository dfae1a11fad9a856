"""Prometheus sink: a private registry built from the metric table, and the HTTP /metrics server."""

from __future__ import annotations

import base64
import hmac
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler

from exporter import metricdefs as md
from exporter.events import UsageEvent
from exporter.labels import OTHER, LabelBounds

# Labels whose values come from the network; these fold into `other` once the series cap is reached.
FOLDABLE = frozenset({"user", "editor", "language", "model", "editor_version", "plugin", "plugin_version"})
_Environ = dict[str, Any]
_StartResponse = Callable[..., Any]
_App = Callable[[_Environ, _StartResponse], Iterable[bytes]]


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


def build_metrics(registry: CollectorRegistry) -> dict[str, Any]:
    """One prometheus_client collector per MetricDef, registered in `registry`."""
    # `_created` series double every counter's series for a timestamp nobody graphs; Prometheus
    # exporters commonly leave them out (a process-wide prometheus_client switch).
    disable_created_metrics()  # type: ignore[no-untyped-call]
    out: dict[str, Any] = {}
    for m in md.METRICS:
        if m.type is md.MetricType.COUNTER:
            out[m.name] = Counter(m.name, m.help, m.labels, registry=registry)
        elif m.type is md.MetricType.HISTOGRAM:
            out[m.name] = Histogram(m.name, m.help, m.labels, registry=registry, buckets=m.buckets)
        else:
            out[m.name] = Gauge(m.name, m.help, m.labels, registry=registry)
    return out


class PrometheusSink:
    def __init__(
        self, bounds: LabelBounds, registry: CollectorRegistry | None = None, max_series: int = 10_000
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.bounds = bounds
        self.max_series = max_series
        self._m = build_metrics(self.registry)
        self._fold = {m.name: tuple(label in FOLDABLE for label in m.labels) for m in md.METRICS}
        self._series: dict[tuple[str, ...], Any] = {}
        self._clients: set[tuple[str, ...]] = set()
        self._server: Any = None
        self._thread: threading.Thread | None = None

    # -- events ---------------------------------------------------------------------------------

    def handle(self, event: UsageEvent, detail: object = None) -> None:
        c = self._child
        b = self.bounds
        kind = event.kind
        user = b.capped("user", event.user)
        code = str(event.status) if event.status is not None else "error"
        c(md.RESPONSES, kind, code).inc()
        if event.duration_s is not None:
            c(md.REQUEST_DURATION, kind).observe(event.duration_s)
        if event.ttft_s is not None:
            c(md.TIME_TO_FIRST_TOKEN, kind).observe(event.ttft_s)
        if event.status is None or event.status >= 400:
            c(md.USER_ERRORS, user, kind, code).inc()
        if event.counted:
            c(md.REQUESTS, user, event.editor, event.language, kind).inc()
        else:
            c(md.SKIPPED, kind, event.skip_reason or "unknown").inc()
        if event.model_call:
            model = b.capped("model", event.model)
            c(md.MODEL_CALLS, user, kind, model, event.initiator).inc()
            if event.input_tokens:
                c(md.TOKENS, user, kind, model, "input").inc(event.input_tokens)
            if event.output_tokens:
                c(md.TOKENS, user, kind, model, "output").inc(event.output_tokens)

    def _child(self, metric: md.MetricDef, *values: str) -> Any:
        """The labelled child, folding network-derived values into `other` once the series cap is hit.

        Children are cached by label values: prometheus_client's labels() validates and locks per call."""
        key = (metric.name, *values)
        child = self._series.get(key)
        if child is None:
            if len(self._series) >= self.max_series:
                fold = self._fold[metric.name]
                values = tuple(OTHER if f else v for f, v in zip(fold, values, strict=True))
                key = (metric.name, *values)
                self.label_overflow("series")
                child = self._series.get(key)
            if child is None:
                child = self._m[metric.name].labels(*values)
                self._series[key] = child
        return child

    def client_seen(
        self, user: str, editor: str, editor_version: str | None, plugin: str | None, plugin_version: str | None
    ) -> None:
        key = (user, editor, editor_version or "", plugin or "", plugin_version or "")
        if key in self._clients:
            return
        self._clients.add(key)
        b = self.bounds
        self._child(
            md.CLIENT_INFO,
            b.capped("user", user),
            b.editor(editor),
            b.capped("editor_version", editor_version),
            b.capped("plugin", plugin),
            b.capped("plugin_version", plugin_version),
        ).set(1)

    def auth_failure(self) -> None:
        self._m[md.PROXY_AUTH_FAILURES.name].inc()

    def exporter_error(self, component: str) -> None:
        self._m[md.EXPORTER_ERRORS.name].labels(component).inc()  # bounded: component names are ours

    def label_overflow(self, label: str) -> None:
        self._m[md.LABEL_OVERFLOWS.name].labels(label).inc()

    def build_info(self, version: str, mitmproxy_version: str) -> None:
        self._m[md.BUILD_INFO.name].labels(version, mitmproxy_version).set(1)

    # -- HTTP server ----------------------------------------------------------------------------

    def start_server(
        self,
        host: str,
        port: int,
        basic_auth: tuple[str, str] | None = None,
        certfile: str | None = None,
        keyfile: str | None = None,
    ) -> None:
        """Serves /metrics (and an open /healthz) from a thread, optionally with basic auth and TLS.

        Raises OSError when the port cannot be bound and ssl.SSLError for a bad certificate or key."""
        self.stop_server()
        app: _App = _with_healthz(make_wsgi_app(self.registry))
        if basic_auth is not None:
            app = basic_auth_app(app, *basic_auth)

        class Server(ThreadingWSGIServer):
            address_family = socket_family(host)

        httpd = make_server(host, port, app, Server, handler_class=_SilentHandler)
        if certfile:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            try:
                context.load_cert_chain(certfile, keyfile or None)
            except BaseException:
                httpd.server_close()
                raise
            httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
        thread = threading.Thread(target=httpd.serve_forever, name="copilot-proxy-insight-metrics", daemon=True)
        thread.start()
        self._server, self._thread = httpd, thread

    @property
    def server_port(self) -> int | None:
        return int(self._server.server_address[1]) if self._server is not None else None

    def stop_server(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


def socket_family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
