"""Prometheus sink: a private registry built from the metric table, and the HTTP /metrics server."""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, start_http_server

from exporter import metricdefs as md
from exporter.events import UsageEvent
from exporter.labels import LabelBounds


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
    def __init__(self, bounds: LabelBounds, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.bounds = bounds
        self._m = build_metrics(self.registry)
        self._clients: set[tuple[str, ...]] = set()
        self._server: Any = None
        self._thread: threading.Thread | None = None

    # -- events ---------------------------------------------------------------------------------

    def handle(self, event: UsageEvent, detail: object = None) -> None:
        m = self._m
        b = self.bounds
        kind = event.kind
        user = b.capped("user", event.user)
        code = str(event.status) if event.status is not None else "error"
        m[md.RESPONSES.name].labels(kind, code).inc()
        if event.duration_s is not None:
            m[md.REQUEST_DURATION.name].labels(kind).observe(event.duration_s)
        if event.ttft_s is not None:
            m[md.TIME_TO_FIRST_TOKEN.name].labels(kind).observe(event.ttft_s)
        if event.counted:
            m[md.REQUESTS.name].labels(user, event.editor, event.language, kind).inc()
        else:
            m[md.SKIPPED.name].labels(kind, event.skip_reason or "unknown").inc()
        if event.model_call:
            model = b.capped("model", event.model)
            m[md.MODEL_CALLS.name].labels(user, kind, model, event.initiator).inc()
            if event.input_tokens:
                m[md.TOKENS.name].labels(user, kind, model, "input").inc(event.input_tokens)
            if event.output_tokens:
                m[md.TOKENS.name].labels(user, kind, model, "output").inc(event.output_tokens)

    def client_seen(
        self, user: str, editor: str, editor_version: str | None, plugin: str | None, plugin_version: str | None
    ) -> None:
        key = (user, editor, editor_version or "", plugin or "", plugin_version or "")
        if key in self._clients:
            return
        self._clients.add(key)
        b = self.bounds
        self._m[md.CLIENT_INFO.name].labels(
            b.capped("user", user),
            editor,
            b.capped("editor_version", editor_version),
            b.capped("plugin", plugin),
            b.capped("plugin_version", plugin_version),
        ).set(1)

    def auth_failure(self) -> None:
        self._m[md.PROXY_AUTH_FAILURES.name].inc()

    def exporter_error(self, component: str) -> None:
        self._m[md.EXPORTER_ERRORS.name].labels(component).inc()

    def label_overflow(self, label: str) -> None:
        self._m[md.LABEL_OVERFLOWS.name].labels(label).inc()

    def build_info(self, version: str, mitmproxy_version: str) -> None:
        self._m[md.BUILD_INFO.name].labels(version, mitmproxy_version).set(1)

    # -- HTTP server ----------------------------------------------------------------------------

    def start_server(self, host: str, port: int) -> None:
        """Serves /metrics from a thread; raises OSError when the port cannot be bound."""
        self.stop_server()
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)

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
