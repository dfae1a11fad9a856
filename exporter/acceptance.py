"""Acceptance: telemetry facts deduplicated into counted suggestions, and their per-user daily tally.

`AcceptanceState` turns the facts of one telemetry post into `Suggestion`s, each an increment: a suggestion
`(headerRequestId, choiceIndex)` is shown and accepted at most once, its accepted characters and lines are
the maximum of the cumulative partial accepts (each later accept adds only what it grew by), a rejection
after a (partial) accept is not a rejection. The increments are what the metrics count and what the event
log line of the post holds (`TelemetryReport.log()`), so the daily rebuild adds exactly what /metrics added.
`AcceptanceTally` is the `acceptance` section of a user in the extended daily summary.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from exporter.identity import identify
from exporter.labels import OTHER, UNKNOWN, LabelBounds
from exporter.telemetry import CHAT_EDIT_OUTCOMES, STORES, SURVIVAL_AFTER, ParsedPost, TelemetryFact
from exporter.values import quick_init

KEY_TTL_S = 15 * 60  # longer than the last stillInCode check (10 min after the accept)
MAX_KEYS = 100_000
COUNTS = ("shown", "accepted", "rejected", "accepted_chars", "accepted_lines")
SUGGESTION_KINDS = ("completion", "next_edit")
SIGNALS = ("shown", "accepted", "rejected", "survival", "chat_edit")


@quick_init
@dataclass(frozen=True, slots=True)
class Suggestion:
    """One counted increment. `n`: suggestions (0 when only chars/lines grew); `outcome`: a chat edit's
    decision, or a survival check's `after`; `still`: whether the code was still there."""

    signal: str
    kind: str
    editor: str
    language: str
    request_id: str | None
    choice: int = 0
    n: int = 1
    chars: int = 0
    lines: int = 0
    outcome: str | None = None
    still: bool | None = None

    def log(self) -> dict[str, Any]:
        out: dict[str, Any] = {"signal": self.signal, "kind": self.kind, "editor": self.editor}
        out["language"] = self.language
        if self.request_id is not None:
            out["request_id"] = self.request_id
            out["choice"] = self.choice
        out["n"] = self.n
        if self.chars or self.lines:
            out["chars"], out["lines"] = self.chars, self.lines
        if self.outcome is not None:
            out["outcome"] = self.outcome
        if self.still is not None:
            out["still"] = self.still
        return out


@quick_init
@dataclass(frozen=True, slots=True)
class TelemetryReport:
    """What one telemetry post added: events per (store, event), skipped envelopes per reason, suggestions."""

    events: tuple[tuple[str, str, int], ...] = ()
    skipped: tuple[tuple[str, int], ...] = ()
    suggestions: tuple[Suggestion, ...] = ()

    def log(self) -> dict[str, Any]:
        """The `telemetry` object of the post's JSON log line (what the daily rebuild reads back)."""
        events: dict[str, dict[str, int]] = {}
        for store, name, n in self.events:
            events.setdefault(store, {})[name] = n
        return {
            "events": events,
            "skipped": dict(self.skipped),
            "suggestions": [s.log() for s in self.suggestions],
        }


@dataclass(slots=True)
class _Key:
    """What is already counted of one suggestion (or one next edit)."""

    expires: float
    editor: str
    language: str
    shown: bool = False
    accepted: bool = False
    rejected: bool = False
    chars: int = 0
    lines: int = 0
    checks: set[str] = field(default_factory=set)


class AcceptanceState:
    """Bounded, time-limited memory of the suggestions seen, per (user, headerRequestId, choiceIndex)."""

    def __init__(self, clock: Callable[[], float] = time.time, max_keys: int = MAX_KEYS) -> None:
        self.clock = clock
        self.max_keys = max_keys
        self._keys: OrderedDict[tuple[str, str, str, int], _Key] = OrderedDict()
        self._editors: dict[tuple[str | None, str | None], str | None] = {}  # a few distinct values per fleet

    def __len__(self) -> int:
        return len(self._keys)

    def _expire(self, now: float) -> None:
        while self._keys:
            key, state = next(iter(self._keys.items()))
            if state.expires > now and len(self._keys) <= self.max_keys:
                return
            del self._keys[key]

    def _key(self, user: str, kind: str, fact: TelemetryFact, editor: str, language: str, now: float) -> _Key:
        assert fact.request_id is not None
        k = (user, kind, fact.request_id, fact.choice)
        state = self._keys.get(k)
        if state is None:
            state = self._keys[k] = _Key(now + KEY_TTL_S, editor, language)
        # A later event without editor or language (an accept, a check) keeps those of the shown event.
        if state.editor == UNKNOWN:
            state.editor = editor
        if state.language == UNKNOWN:
            state.language = language
        return state

    def report(
        self, post: ParsedPost, user: str, fallback_editor: str, bounds: LabelBounds, now: float | None = None
    ) -> TelemetryReport:
        """The increments of one post by `user`; `fallback_editor` (a bounded label) for events naming none."""
        now = self.clock() if now is None else now
        self._expire(now)
        out: list[Suggestion] = []
        for fact in post.facts:
            editor = self._editor(fact, bounds) or fallback_editor
            language = bounds.language(fact.language)
            if fact.signal == "chat_edit":
                out.append(Suggestion("chat_edit", "chat_edit", editor, language, None, outcome=fact.outcome))
                continue
            kind = "next_edit" if fact.signal == "next_edit" else "completion"
            if fact.request_id is None:
                out.extend(_unkeyed(fact, kind, editor, language))
                continue
            state = self._key(user, kind, fact, editor, language, now)
            out.extend(_keyed(fact, kind, state))
        return TelemetryReport(post.events, post.skipped, tuple(s for s in out if s.n or s.chars or s.lines))

    def _editor(self, fact: TelemetryFact, bounds: LabelBounds) -> str | None:
        """The editor label the event names (cached: every event of a client repeats the same strings)."""
        key = (fact.editor_version, fact.plugin_version)
        if key in self._editors:
            return self._editors[key]
        found = _editor(fact, bounds)
        if found != OTHER:  # a fold is counted each time, like a fold of any other label value
            if len(self._editors) >= 1000:
                self._editors.clear()
            self._editors[key] = found
        return found


def _editor(fact: TelemetryFact, bounds: LabelBounds) -> str | None:
    if not fact.editor_version and not fact.plugin_version:
        return None
    headers = {"editor-version": fact.editor_version or "", "editor-plugin-version": fact.plugin_version or ""}
    client = identify(headers)
    return bounds.editor(client.editor) if client is not None and client.editor != UNKNOWN else None


def _unkeyed(fact: TelemetryFact, kind: str, editor: str, language: str) -> list[Suggestion]:
    """An event without a request id cannot be deduplicated: it counts as sent."""
    s = fact.signal
    if s in ("shown", "rejected"):
        return [Suggestion(s, kind, editor, language, None)]
    if s == "accepted":
        return [Suggestion(s, kind, editor, language, None, chars=fact.chars, lines=fact.lines)]
    if s == "next_edit":
        out = [Suggestion("shown", kind, editor, language, None)] if fact.shown else []
        if fact.outcome is not None:
            out.append(Suggestion(fact.outcome, kind, editor, language, None))
        return out
    return []  # a survival check of an unknown suggestion


def _keyed(fact: TelemetryFact, kind: str, st: _Key) -> list[Suggestion]:
    def one(signal: str, n: int = 1, **extra: Any) -> Suggestion:
        return Suggestion(signal, kind, st.editor, st.language, fact.request_id, fact.choice, n, **extra)

    s = fact.signal
    if s == "shown" or (s == "next_edit" and fact.shown):
        first, st.shown = not st.shown, True
        out = [one("shown")] if first else []
        if s == "shown":
            return out
    else:
        out = []
    if s == "accepted" or (s == "next_edit" and fact.outcome == "accepted"):
        first, st.accepted = not st.accepted, True
        chars, lines = max(0, fact.chars - st.chars), max(0, fact.lines - st.lines)
        st.chars, st.lines = max(st.chars, fact.chars), max(st.lines, fact.lines)
        if kind == "next_edit":
            chars = lines = 0  # NES reports tokens, not characters and lines
        return [*out, one("accepted", int(first), chars=chars, lines=lines)]
    if s == "rejected" or (s == "next_edit" and fact.outcome == "rejected"):
        # The remainder of a partly accepted suggestion dismissed: an accept, not a rejection.
        first = not (st.rejected or st.accepted)
        st.rejected = True
        return [*out, one("rejected")] if first else out
    if s == "still_in_code" and fact.after is not None and fact.after not in st.checks:
        st.checks.add(fact.after)
        return [one("survival", outcome=fact.after, still=fact.still)]
    return out


# -- the extended daily summary's `acceptance` section --------------------------------------------------------


def _pos(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _bump(tree: dict[str, Any], keys: tuple[str, ...], n: int) -> None:
    if n <= 0:
        return
    *path, last = keys
    for key in path:
        tree = tree.setdefault(key, {})
    tree[last] = tree.get(last, 0) + n


def _ratio(counts: Mapping[str, int]) -> float | None:
    shown = counts.get("shown", 0)
    return round(counts.get("accepted", 0) / shown, 4) if shown else None


def _rollup(detail: Mapping[str, Any], level: int, kind_only: str | None = None) -> dict[str, dict[str, Any]]:
    """detail[kind][editor][language][count] summed by one level (0 kind, 1 editor, 2 language), over one
    kind or all."""
    out: dict[str, dict[str, Any]] = {}
    for kind, editors in detail.items():
        if kind_only is not None and kind != kind_only:
            continue
        for editor, languages in editors.items():
            for language, counts in languages.items():
                key = (kind, editor, language)[level]
                into = out.setdefault(key, dict.fromkeys(COUNTS, 0))
                for name in COUNTS:
                    into[name] += _pos(counts.get(name))
    for counts in out.values():
        counts["ratio"] = _ratio(counts)
    return out


class AcceptanceTally:
    """One user's acceptance of one day: `detail[kind][editor][language]` counts, telemetry events per store,
    chat edit decisions per outcome, code survival per check. `seen`: some telemetry event arrived."""

    def __init__(self) -> None:
        self.detail: dict[str, Any] = {}
        self.events: dict[str, Any] = {}
        self.chat_edits: dict[str, Any] = {}
        self.survival: dict[str, Any] = {}

    @property
    def seen(self) -> bool:
        return any(_pos(n) for n in self.events.values())

    def add(self, telemetry: Mapping[str, Any]) -> None:
        """Adds a post's `telemetry` log object (`TelemetryReport.log()`, live or read back from the log)."""
        events = telemetry.get("events")
        for store, names in events.items() if isinstance(events, dict) else ():
            if store in STORES and isinstance(names, dict):
                _bump(self.events, (store,), sum(_pos(n) for n in names.values()))
        suggestions = telemetry.get("suggestions")
        for s in suggestions if isinstance(suggestions, list) else ():
            if isinstance(s, dict):
                self._suggestion(s)

    def _suggestion(self, s: Mapping[str, Any]) -> None:
        signal, kind = s.get("signal"), s.get("kind")
        editor, language = str(s.get("editor") or UNKNOWN), str(s.get("language") or UNKNOWN)
        n = _pos(s.get("n"))
        if signal == "chat_edit" and s.get("outcome") in CHAT_EDIT_OUTCOMES:
            _bump(self.chat_edits, (str(s["outcome"]),), n)
        elif signal == "survival" and s.get("outcome") in SURVIVAL_AFTER.values() and isinstance(s.get("still"), bool):
            _bump(self.survival, (str(s["outcome"]), "true" if s["still"] else "false"), n)
        elif signal in ("shown", "accepted", "rejected") and kind in SUGGESTION_KINDS:
            keys = (str(kind), editor, language)
            _bump(self.detail, (*keys, str(signal)), n)
            if signal == "accepted":
                _bump(self.detail, (*keys, "accepted_chars"), _pos(s.get("chars")))
                _bump(self.detail, (*keys, "accepted_lines"), _pos(s.get("lines")))

    def merge(self, doc: Any) -> None:
        """Adds a section written earlier (restart continuity); only its raw trees are read."""
        if not isinstance(doc, dict):
            return
        for attr, name, depth in (("detail", "detail", 4), ("events", "telemetry_events", 1)):
            _merge(getattr(self, attr), doc.get(name), depth)
        _merge(self.chat_edits, doc.get("chat_edits"), 1)
        _merge(self.survival, doc.get("code_survival"), 2)

    def to_doc(self) -> dict[str, Any]:
        """The top level, by_editor and by_language are of ghost-text completions (GitHub's code completion
        feature, what the report and reconcile tools read); next edits are in by_kind."""
        by_kind = _rollup(self.detail, 0)
        completions = by_kind.get("completion") or {**dict.fromkeys(COUNTS, 0), "ratio": None}
        return {
            **completions,
            "by_kind": by_kind,
            "by_editor": _rollup(self.detail, 1, "completion"),
            "by_language": _rollup(self.detail, 2, "completion"),
            "chat_edits": dict(self.chat_edits),
            "code_survival": {k: dict(v) for k, v in self.survival.items()},
            "telemetry_events": dict(self.events),
            "detail": self.detail,
        }


def _merge(into: dict[str, Any], other: Any, depth: int) -> None:
    """Adds the positive ints of `other` (a tree exactly `depth` levels deep) into `into`."""
    if not isinstance(other, dict):
        return
    for key, value in other.items():
        if depth > 1 and isinstance(value, dict):
            _merge(into.setdefault(str(key), {}), value, depth - 1)
        elif depth == 1 and _pos(value):
            into[str(key)] = into.get(str(key), 0) + _pos(value)
