"""Prometheus sink: a private registry built from the metric table, recording the observations it is handed."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from exporter import metricdefs as md
from exporter.dispatch import (
    AuthFailure,
    ClientSeen,
    Emitted,
    ExporterError,
    Health,
    LabelEvicted,
    LabelOverflow,
    Observed,
)
from exporter.observe import Observation


def build_metrics(registry: CollectorRegistry) -> dict[str, Any]:
    """One prometheus_client collector per MetricDef, registered in `registry`."""
    # `_created` series double every counter's series for a timestamp nobody graphs; Prometheus exporters
    # commonly leave them out. prometheus_client only offers a process-wide switch for it.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    out: dict[str, Any] = {}
    for m in md.METRICS:
        if m.collected:  # exposed by its own collector (exporter.budgets.CostSink)
            continue
        if m.type is md.MetricType.COUNTER:
            out[m.name] = Counter(m.name, m.help, m.labels, registry=registry)
        elif m.type is md.MetricType.HISTOGRAM:
            out[m.name] = Histogram(m.name, m.help, m.labels, registry=registry, buckets=m.buckets)
        else:
            out[m.name] = Gauge(m.name, m.help, m.labels, registry=registry)
    return out


class PrometheusSink:
    """Records bounded observations into labelled children (cached: `labels()` validates and locks per call)."""

    name = "prometheus"

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._m = build_metrics(self.registry)
        self._children: dict[tuple[str, ...], Any] = {}
        self._team_pairs: set[tuple[str, str]] = set()

    def _child(self, metric: md.MetricDef, values: tuple[str, ...]) -> Any:
        key = (metric.name, *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._m[metric.name].labels(*values)
        return child

    def handle(self, item: Emitted) -> None:
        self._record(item.observations)

    def _record(self, observations: Iterable[Observation]) -> None:
        for obs in observations:
            child = self._child(obs.metric, obs.labels)
            if obs.metric.type is md.MetricType.HISTOGRAM:
                child.observe(obs.value)
            else:
                child.inc(obs.value)

    def health(self, signal: Health) -> None:
        if isinstance(signal, ExporterError):
            self._m[md.EXPORTER_ERRORS.name].labels(signal.component).inc()  # bounded: component names are ours
        elif isinstance(signal, LabelOverflow):
            self._m[md.LABEL_OVERFLOWS.name].labels(signal.label).inc()
        elif isinstance(signal, AuthFailure):
            self._m[md.PROXY_AUTH_FAILURES.name].inc()
        elif isinstance(signal, LabelEvicted):
            self._drop(signal.label, signal.value)
        elif isinstance(signal, ClientSeen):
            labels = (signal.user, signal.editor, signal.editor_version, signal.plugin, signal.plugin_version)
            self._child(md.CLIENT_INFO, labels).set(1)
        elif isinstance(signal, Observed):
            self._record(signal.observations)

    def _drop(self, label: str, value: str) -> None:
        """Removes every series whose `label` is `value` (a user who gave their slot to another)."""
        positions = {m.name: m.labels.index(label) for m in md.METRICS if label in m.labels}
        for key in [k for k in self._children if k[0] in positions and k[1 + positions[k[0]]] == value]:
            del self._children[key]
            self._m[key[0]].remove(*key[1:])

    def build_info(self, version: str, mitmproxy_version: str) -> None:
        self._m[md.BUILD_INFO.name].labels(version, mitmproxy_version).set(1)

    def team_info(self, pairs: set[tuple[str, str]]) -> None:
        """Sets copilot_user_team_info to exactly `pairs` (user, team): new ones to 1, stale ones removed.
        Called from the writer thread; prometheus_client's children are thread-safe."""
        gauge = self._m[md.USER_TEAM_INFO.name]
        for pair in self._team_pairs - pairs:
            gauge.remove(*pair)
        for pair in pairs - self._team_pairs:
            gauge.labels(*pair).set(1)
        self._team_pairs = set(pairs)

    def close(self) -> None:
        """Nothing to release: the registry lives as long as the addon (the metrics server reads it)."""
