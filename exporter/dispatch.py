"""The sink boundary: a `Sink` protocol, health signals, and the one dispatcher that fans out with failure isolation."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from exporter import metricdefs as md
from exporter.events import UsageEvent
from exporter.labels import LabelPolicy
from exporter.observe import Observation, observations
from exporter.values import quick_init
from exporter.writer import ErrorReporter


@quick_init
@dataclass(frozen=True, slots=True)
class ExporterError:
    """A component of the exporter failed (a sink, the parser, the metrics server, an OTLP export)."""

    component: str


@quick_init
@dataclass(frozen=True, slots=True)
class AuthFailure:
    """A client was answered 407 Proxy Authentication Required."""


@quick_init
@dataclass(frozen=True, slots=True)
class LabelOverflow:
    """A label value was folded into `other` (outside its bounded set, over its cap, or over the series cap)."""

    label: str


@quick_init
@dataclass(frozen=True, slots=True)
class LabelEvicted:
    """A user gave their label slot to a more active user: sinks drop the series labelled with them."""

    label: str
    value: str


@quick_init
@dataclass(frozen=True, slots=True)
class ClientSeen:
    """A client (user, editor and plugin versions) identified itself; the dispatcher bounds the labels."""

    user: str
    editor: str
    editor_version: str
    plugin: str
    plugin_version: str


@quick_init
@dataclass(frozen=True, slots=True)
class Observed:
    """A fact that is not one call (a secret the scanner found, a body it skipped): metric observations with
    raw labels (the dispatcher bounds them) and, when `log_event` is set, one JSON log line of `log_fields`."""

    observations: Sequence[Observation]
    log_event: str = ""
    log_fields: Mapping[str, Any] = field(default_factory=dict)


Health = ExporterError | AuthFailure | LabelOverflow | LabelEvicted | ClientSeen | Observed


@quick_init
@dataclass(frozen=True, slots=True)
class Emitted:
    """What every sink receives for one finished call: the event, its bounded metric observations, and the
    recording input (only when recording is on)."""

    event: UsageEvent
    observations: Sequence[Observation]
    recording: Any = None


class Sink(Protocol):
    """One output. `handle` and `health` run on mitmproxy's event loop and must only record in memory or
    queue work for a writer thread; `close` flushes and releases what the sink holds."""

    name: str

    def handle(self, item: Emitted) -> None: ...

    def health(self, signal: Health) -> None: ...

    def close(self) -> None: ...


@functools.cache
def _user_index(names: tuple[str, ...]) -> int:
    """Where a metric's `user` label is (-1: none); a handful of label tuples, looked up per observation."""
    return names.index("user") if "user" in names else -1


class Dispatcher:
    """Fans every event and health signal out to the sinks; a failing sink is counted and logged, the others
    still get it. Label bounding is applied here, once, for every sink."""

    def __init__(self, errors: ErrorReporter, policy: LabelPolicy, sinks: Iterable[Sink] = ()) -> None:
        self.errors = errors
        self.policy = policy
        self._sinks: list[Sink] = list(sinks)

    @property
    def sinks(self) -> tuple[Sink, ...]:
        return tuple(self._sinks)

    def get(self, name: str) -> Sink | None:
        return next((s for s in self._sinks if s.name == name), None)

    def replace(self, name: str, sink: Sink | None) -> Sink | None:
        """Puts `sink` in the place of the sink called `name` (or appends it); returns the old one unclosed."""
        old = self.get(name)
        sinks = [s for s in self._sinks if s.name != name]
        if sink is not None:
            index = self._sinks.index(old) if old is not None else len(sinks)
            sinks.insert(index, sink)
        self._sinks = sinks
        return old

    def bounded(self, event: UsageEvent) -> list[Observation]:
        policy = self.policy
        folded: set[str] = set()
        status = event.status or 0
        active = event.model_call and (200 <= status < 300 or status == 101)
        user = policy.user(event.user, active, event.timestamp.timestamp(), folded)
        out = []
        for o in observations(event):
            names = o.metric.labels
            labels = o.labels
            i = _user_index(names)
            if i >= 0 and labels[i] != user:
                labels = (*labels[:i], user, *labels[i + 1 :])
            bound = policy.bound(o.metric.name, labels, names, folded)
            # Most observations come out unchanged: keep them rather than build an equal copy.
            out.append(o if bound == o.labels else Observation(o.metric, o.value, bound, o.genai))
        return out

    def _bounded_observed(self, signal: Observed) -> Observed:
        """An Observed signal with its labels bounded by the same policy as the events' observations."""
        policy = self.policy
        folded: set[str] = set()
        bounded = []
        for o in signal.observations:
            names, labels = o.metric.labels, o.labels
            i = _user_index(names)
            if i >= 0:  # a user slot like a client's (no successful call of its own: it displaces nobody)
                labels = (*labels[:i], policy.user(labels[i], False, 0.0, folded), *labels[i + 1 :])
            bounded.append(Observation(o.metric, o.value, policy.bound(o.metric.name, labels, names, folded), o.genai))
        return replace(signal, observations=bounded)

    def _bounded_client(self, seen: ClientSeen) -> ClientSeen:
        folded: set[str] = set()
        user = self.policy.user(seen.user, False, 0.0, folded)
        raw = (user, seen.editor, seen.editor_version, seen.plugin, seen.plugin_version)
        return ClientSeen(*self.policy.bound(md.CLIENT_INFO.name, raw, md.CLIENT_INFO.labels, folded))

    def emit(self, event: UsageEvent, recording: Any = None) -> None:
        try:
            item = Emitted(event, self.bounded(event), recording)
        except Exception as e:
            self.errors.failed("labels", e)
            return
        for sink in self._sinks:
            try:
                sink.handle(item)
            except Exception as e:
                self.errors.failed(sink.name, e)

    def health(self, signal: Health) -> None:
        if isinstance(signal, ClientSeen):
            signal = self._bounded_client(signal)
        elif isinstance(signal, Observed):
            try:
                signal = self._bounded_observed(signal)
            except Exception as e:
                self.errors.failed("labels", e)
                return
        for sink in self._sinks:
            try:
                sink.health(signal)
            except Exception:  # a health signal must never raise (it is often reporting a failure already)
                continue

    def close(self) -> None:
        for sink in self._sinks:
            try:
                sink.close()
            except Exception as e:
                self.errors.failed(sink.name, e)
