"""The implementations of main's commit 8605799 that the performance work rewrote, kept as oracles
(the code unchanged, docstrings and comments dropped).

Tests compare the rewritten functions with these on tables and generated input (tests/test_reference.py): the
rewrite must say exactly what the old code said. Helpers that did not change are imported from the package.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

from exporter.scanner import ScanJob, SecretFinding, parse_body
from exporter.secrets import PATTERNS, Hit, fingerprint, nearest_path, path_hints
from exporter.telemetry import (
    CHAT_EDIT_OUTCOMES,
    KNOWN_EVENTS,
    MAX_CHOICE,
    MAX_TELEMETRY_BYTES,
    SURVIVAL_AFTER,
    ParsedPost,
    TelemetryFact,
    _field,
    _flag,
    _text,
    envelopes,
    event_suffix,
    skipped_post,
    store_of,
)

# -- exporter/telemetry.py -------------------------------------------------------------------------------


def _common(store: str, props: Mapping[str, Any], meas: Mapping[str, Any]) -> dict[str, Any]:
    choice = _field(props, meas, "choiceIndex")
    return {
        "store": store,
        "request_id": _text(props, "headerRequestId"),
        "choice": choice if choice is not None and choice <= MAX_CHOICE else 0,
        "language": _text(props, "languageId", 64) or _text(props, "activeDocumentLanguageId", 64),
        "editor_version": _text(props, "editor_version"),
        "plugin_version": _text(props, "editor_plugin_version"),
    }


def _ghost_text(signal: str, store: str, props: Mapping[str, Any], meas: Mapping[str, Any]) -> TelemetryFact | None:
    common = _common(store, props, meas)
    if signal in ("accepted", "rejected"):
        return TelemetryFact(
            signal,
            chars=_field(props, meas, "compCharLen") or 0,
            lines=_field(props, meas, "numLines") or 0,
            partial=(_text(props, "compType") or "").lower() == "partial",
            **common,
        )
    if signal == "still_in_code":
        after = SURVIVAL_AFTER.get(_field(props, meas, "timeout") or -1)
        still = _flag(props, meas, "stillInCodeHeuristic")
        if after is None or still is None:
            return None
        return TelemetryFact(signal, after=after, still=still, **common)
    return TelemetryFact(signal, **common)


def _next_edit(store: str, props: Mapping[str, Any], meas: Mapping[str, Any]) -> TelemetryFact:
    common = _common(store, props, meas)
    if common["request_id"] is None:
        common["request_id"] = _text(props, "opportunityId")
    outcome = (_text(props, "acceptance", 32) or "").lower()
    return TelemetryFact(
        "next_edit",
        shown=_flag(props, meas, "isShown") is True,
        outcome=outcome if outcome in ("accepted", "rejected") else None,
        **common,
    )


def _chat_edit(suffix: str, store: str, props: Mapping[str, Any], meas: Mapping[str, Any]) -> TelemetryFact | None:
    common = _common(store, props, meas)
    common["request_id"] = None
    if suffix == "inline.done":
        accepted = _flag(props, meas, "accepted")
        if accepted is None:
            return None
        return TelemetryFact("chat_edit", outcome="accepted" if accepted else "rejected", **common)
    outcome = (_text(props, "outcome", 32) or "").lower()
    if outcome not in CHAT_EDIT_OUTCOMES:
        return None
    return TelemetryFact("chat_edit", outcome=outcome, **common)


_GHOST_SIGNALS = {
    "ghostText.shown": "shown",
    "ghostText.accepted": "accepted",
    "ghostText.rejected": "rejected",
    "ghostText.stillInCode": "still_in_code",
}


def fact_of(suffix: str, store: str, props: Mapping[str, Any], meas: Mapping[str, Any]) -> TelemetryFact | None:
    signal = _GHOST_SIGNALS.get(suffix)
    if signal is not None:
        return _ghost_text(signal, store, props, meas)
    if suffix == "copilot-nes/provideInlineEdit":
        return _next_edit(store, props, meas)
    if suffix in ("panel.edit.feedback", "inline.done"):
        return _chat_edit(suffix, store, props, meas)
    return None


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _event(envelope: Any) -> tuple[str, str, Mapping[str, Any], Mapping[str, Any]] | None:
    if not isinstance(envelope, dict):
        return None
    base = _dict(_dict(envelope.get("data")).get("baseData"))
    name = base.get("name")
    if not isinstance(name, str) or not name or len(name) > 256:
        return None
    store = store_of(envelope.get("iKey", envelope.get("ikey")))
    return store, event_suffix(name), _dict(base.get("properties")), _dict(base.get("measurements"))


def parse_post(body: bytes) -> ParsedPost:
    if len(body) > MAX_TELEMETRY_BYTES:
        return skipped_post("too_large")
    try:
        items, bad, over = envelopes(body)
    except (ValueError, RecursionError):
        return skipped_post("malformed_body")
    skipped: Counter[str] = Counter()
    if bad:
        skipped["bad_envelope"] += bad
    if over:
        skipped["too_many_events"] += over
    facts: list[TelemetryFact] = []
    events: Counter[tuple[str, str]] = Counter()
    for store, suffix, props, meas in _events(items, skipped):
        events[(store, suffix if suffix in KNOWN_EVENTS else "other")] += 1
        fact = fact_of(suffix, store, props, meas)
        if fact is not None:
            facts.append(fact)
    return ParsedPost(
        tuple(facts),
        tuple((store, name, n) for (store, name), n in sorted(events.items())),
        tuple(sorted(skipped.items())),
    )


def _events(items: list[Any], skipped: Counter[str]) -> Iterator[tuple[str, str, Mapping[str, Any], Mapping[str, Any]]]:
    for envelope in items:
        event = _event(envelope)
        if event is None:
            skipped["bad_envelope"] += 1
            continue
        yield event


# -- exporter/secrets.py ---------------------------------------------------------------------------------


def find_secrets(text: str) -> list[Hit]:
    lowered = text.lower() if len(text) < 4 * 1024 * 1024 else text
    hits: list[Hit] = []
    for p in PATTERNS:
        haystack = lowered if p.fold else text
        if not any(n in haystack for n in p.needles):
            continue
        for m in p.regex.finditer(text):
            value = m.group(p.group)
            start, end = m.span(p.group)
            if p.check is not None and not p.check(value):
                continue
            if any(h.start < end and start < h.end for h in hits):
                continue
            hits.append(Hit(p.type, start, end, value))
    seen: set[str] = set()
    out = []
    for h in sorted(hits, key=lambda h: h.start):
        if h.value not in seen:
            seen.add(h.value)
            out.append(h)
    return out


# -- exporter/scanner.py ---------------------------------------------------------------------------------


def scan_job(job: ScanJob, key: bytes) -> list[SecretFinding]:
    found: dict[str, SecretFinding] = {}
    carried: str | None = None
    for where, text in parse_body(job.body):
        hints = list(path_hints(text))
        for hit in find_secrets(text):
            mark = fingerprint(key, hit.type, hit.value)
            if mark in found:
                continue
            hint = nearest_path(hints, hit.start, carried)
            if hint is not None and (hit.value in hint or hint in hit.value):
                hint = None
            found[mark] = SecretFinding(
                job.started,
                job.user,
                job.editor,
                job.kind,
                job.model,
                hit.type,
                where,
                hint[:256] if hint else None,
                mark,
                job.request_id,
                job.interaction_id,
            )
        if hints:
            carried = hints[-1][1]
    return list(found.values())
