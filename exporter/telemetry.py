"""Copilot's own telemetry posts (Application Insights envelopes) read into acceptance facts, with caps.

A `POST …/telemetry` body is a JSON array of envelopes (the language server) or newline-delimited envelopes
(VS Code); the caller has already undone its Content-Encoding with a cap. Only named ids and numbers of the
events that say something about suggestions are kept (`TelemetryFact`); every other property, code and prompt
snippets of the enhanced store above all, is dropped here and never reaches an output. Malformed or hostile
envelopes are skipped and counted by reason (`ParsedPost.skipped`). See copilot-telemetry-and-billing.md §1.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from exporter import jsoncodec
from exporter.identity import clean
from exporter.values import quick_init

STANDARD_IKEY = "7d7048df-6dd0-4048-bb23-b716c1461f8f"
ENHANCED_IKEY = "3fdd7f28-937a-48c8-9a21-ba337db23bd1"
STORES = ("standard", "enhanced", "other")

MAX_TELEMETRY_BYTES = 4 * 1024 * 1024  # decoded; a real post is a few kB, a full client batch well under 1 MB
MAX_ENVELOPES = 2000  # per post; the client SDKs send at most a few hundred at once
MAX_NUMBER = 10_000_000  # characters / lines / seconds: anything larger is not a real measurement
MAX_CHOICE = 1000

SKIP_REASONS = ("too_large", "malformed_body", "bad_envelope", "too_many_events")

# Event name prefixes the clients add (VS Code completions `copilot/`, VS Code chat and NES `copilot-chat/`,
# the language server `agent/`); matched case-insensitively and stripped until none is left.
_PREFIXES = ("github.copilot-chat/", "github.copilot/", "copilot-chat/", "copilot/", "agent/")

# The events `copilot_telemetry_events_total{event}` names; any other name is `other` (a bounded label).
KNOWN_EVENTS = frozenset(
    {
        "ghostText.issued",
        "ghostText.shown",
        "ghostText.accepted",
        "ghostText.rejected",
        "ghostText.stillInCode",
        "ghostText.canceled",
        "ghostText.produced",
        "ghostText.performance",
        "ghostText.capturedAfterAccepted",
        "ghostText.capturedAfterRejected",
        "copilot-nes/provideInlineEdit",
        "panel.edit.feedback",
        "inline.done",
        "request.sent",
        "conversation.turnCompleted",
        "conversation.suggestionShown",
        "conversation.suggestionSelected",
    }
)
# stillInCode checks are sent 15 s, 30 s, 2 min, 5 min and 10 min after an accept; these three are kept.
SURVIVAL_AFTER = {30: "30s", 300: "5m", 600: "10m"}
CHAT_EDIT_OUTCOMES = ("accepted", "rejected", "saved")


@quick_init
@dataclass(frozen=True, slots=True)
class TelemetryFact:
    """One telemetry event that says something about a suggestion: only ids, bounded strings and numbers.

    `signal`: shown, accepted, rejected (ghost text), still_in_code, next_edit (one event per NES lifetime,
    `shown` and `outcome` say what happened), chat_edit (a chat / inline chat edit decision, `outcome`)."""

    signal: str
    store: str
    request_id: str | None = None  # headerRequestId = the completion's X-Request-Id
    choice: int = 0
    language: str | None = None  # the raw languageId (bounded later, with the other labels)
    editor_version: str | None = None  # the raw editor_version property (vscode/1.111.0)
    plugin_version: str | None = None
    chars: int = 0  # accepted (cumulative over partial accepts) or rejected characters
    lines: int = 0
    partial: bool = False
    shown: bool = False
    outcome: str | None = None
    after: str | None = None  # still_in_code: 30s, 5m, 10m
    still: bool | None = None


@quick_init
@dataclass(frozen=True, slots=True)
class ParsedPost:
    """What one telemetry post said: its facts, its events per (store, event name), and what was skipped."""

    facts: tuple[TelemetryFact, ...] = ()
    events: tuple[tuple[str, str, int], ...] = ()
    skipped: tuple[tuple[str, int], ...] = ()


def skipped_post(reason: str) -> ParsedPost:
    return ParsedPost(skipped=((reason, 1),))


def store_of(ikey: Any) -> str:
    if not isinstance(ikey, str):
        return "other"
    key = ikey.strip().lower()
    if key == STANDARD_IKEY:
        return "standard"
    if key == ENHANCED_IKEY:
        return "enhanced"
    return "other"


@functools.lru_cache(maxsize=1024)  # a client sends a few dozen distinct names, over and over
def event_suffix(name: str) -> str:
    """`copilot/ghostText.shown` -> `ghostText.shown`; `copilot-chat/copilot-nes/provideInlineEdit` ->
    `copilot-nes/provideInlineEdit`."""
    for _ in range(3):
        lowered = name.lower()
        prefix = next((p for p in _PREFIXES if lowered.startswith(p)), None)
        if prefix is None:
            break
        name = name[len(prefix) :]
    return name


def envelopes(body: bytes) -> tuple[list[Any], int, int]:
    """The envelopes of a decoded body (a JSON array, NDJSON or one object), at most MAX_ENVELOPES of them;
    the count of unreadable lines and of envelopes over the cap. Raises ValueError when the body is neither."""
    text = body.decode("utf-8", "replace").strip()
    if not text:
        return [], 0, 0
    if text.startswith("["):
        doc = jsoncodec.loads(text)
        if not isinstance(doc, list):
            raise ValueError("not an array")
        return doc[:MAX_ENVELOPES], 0, max(0, len(doc) - MAX_ENVELOPES)
    if not text.startswith("{"):
        raise ValueError("neither a JSON array nor NDJSON")
    lines = [line for line in text.splitlines() if line.strip()]
    over = max(0, len(lines) - MAX_ENVELOPES)
    lines = lines[:MAX_ENVELOPES]
    try:  # one parse for the whole batch (much cheaper than one per line); a bad line: line by line
        return jsoncodec.loads("[" + ",".join(lines) + "]"), 0, over
    except (ValueError, RecursionError):
        pass
    out: list[Any] = []
    bad = 0
    for line in lines:
        try:
            out.append(jsoncodec.loads(line))
        except (ValueError, RecursionError):
            bad += 1
    return out, bad, over


def _number(value: Any) -> int | None:
    """A non-negative measurement (number or numeric string) as an int, None when absent or absurd."""
    if value is None or isinstance(value, bool):  # absent: the common case (a field in the other mapping)
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if not isinstance(value, int | float) or not math.isfinite(value) or value < 0 or value > MAX_NUMBER:
        return None
    return int(value)


def _field(props: Mapping[str, Any], meas: Mapping[str, Any], name: str) -> int | None:
    found = _number(meas.get(name))
    return found if found is not None else _number(props.get(name))


def _text(props: Mapping[str, Any], name: str, limit: int = 128) -> str | None:
    value = props.get(name)
    if not isinstance(value, str):
        return None
    if value.isascii() and value.isprintable() and len(value) <= limit:
        return value.strip() or None  # the common case, without clean()'s regex: nothing to remove
    return clean(value, limit)


def _flag(props: Mapping[str, Any], meas: Mapping[str, Any], name: str) -> bool | None:
    value = props.get(name, meas.get(name))
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1")
    return None


Common = tuple[str, str | None, int, str | None, str | None, str | None]  # TelemetryFact's fields after `signal`


def _common(store: str, props: Mapping[str, Any], meas: Mapping[str, Any]) -> Common:
    """store, request_id, choice, language, editor_version, plugin_version (TelemetryFact's positional order)."""
    choice = _field(props, meas, "choiceIndex")
    return (
        store,
        _text(props, "headerRequestId"),
        choice if choice is not None and choice <= MAX_CHOICE else 0,
        _text(props, "languageId", 64) or _text(props, "activeDocumentLanguageId", 64),
        _text(props, "editor_version"),
        _text(props, "editor_plugin_version"),
    )


def _ghost_text(signal: str, store: str, props: Mapping[str, Any], meas: Mapping[str, Any]) -> TelemetryFact | None:
    common = _common(store, props, meas)
    if signal in ("accepted", "rejected"):
        return TelemetryFact(
            signal,
            *common,
            _field(props, meas, "compCharLen") or 0,
            _field(props, meas, "numLines") or 0,
            (_text(props, "compType") or "").lower() == "partial",
        )
    if signal == "still_in_code":
        after = SURVIVAL_AFTER.get(_field(props, meas, "timeout") or -1)
        still = _flag(props, meas, "stillInCodeHeuristic")
        if after is None or still is None:
            return None
        return TelemetryFact(signal, *common, after=after, still=still)
    return TelemetryFact(signal, *common)


def _next_edit(store: str, props: Mapping[str, Any], meas: Mapping[str, Any]) -> TelemetryFact:
    _, request_id, choice, language, editor_version, plugin_version = _common(store, props, meas)
    if request_id is None:
        request_id = _text(props, "opportunityId")
    outcome = (_text(props, "acceptance", 32) or "").lower()
    return TelemetryFact(
        "next_edit",
        store,
        request_id,
        choice,
        language,
        editor_version,
        plugin_version,
        shown=_flag(props, meas, "isShown") is True,
        outcome=outcome if outcome in ("accepted", "rejected") else None,
    )


def _chat_edit(suffix: str, store: str, props: Mapping[str, Any], meas: Mapping[str, Any]) -> TelemetryFact | None:
    # The request id is a chat message id, not an HTTP request id: never joined.
    _, _, choice, language, editor_version, plugin_version = _common(store, props, meas)
    rest = (choice, language, editor_version, plugin_version)
    if suffix == "inline.done":
        accepted = _flag(props, meas, "accepted")
        if accepted is None:
            return None
        return TelemetryFact("chat_edit", store, None, *rest, outcome="accepted" if accepted else "rejected")
    outcome = (_text(props, "outcome", 32) or "").lower()
    if outcome not in CHAT_EDIT_OUTCOMES:
        return None
    return TelemetryFact("chat_edit", store, None, *rest, outcome=outcome)


_GHOST_SIGNALS = {
    "ghostText.shown": "shown",
    "ghostText.accepted": "accepted",
    "ghostText.rejected": "rejected",
    "ghostText.stillInCode": "still_in_code",
}


def fact_of(suffix: str, store: str, props: Mapping[str, Any], meas: Mapping[str, Any]) -> TelemetryFact | None:
    """The fact one event states, None for events that say nothing about a suggestion."""
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


_EMPTY: Mapping[str, Any] = {}


def _event(envelope: Any) -> tuple[str, str, Mapping[str, Any], Mapping[str, Any]] | None:
    """(store, event name, properties, measurements) of an envelope; None when it is not an event."""
    if not isinstance(envelope, dict):
        return None
    data = envelope.get("data")
    base = data.get("baseData") if isinstance(data, dict) else None
    if not isinstance(base, dict):
        return None
    name = base.get("name")
    if not isinstance(name, str) or not name or len(name) > 256:
        return None
    ikey = envelope.get("iKey", envelope.get("ikey"))
    store = _STORE_OF.get(ikey) if isinstance(ikey, str) else None  # the common case: exactly one of the two
    props, meas = base.get("properties"), base.get("measurements")
    return (
        store or store_of(ikey),
        event_suffix(name),
        props if isinstance(props, dict) else _EMPTY,
        meas if isinstance(meas, dict) else _EMPTY,
    )


_STORE_OF = {STANDARD_IKEY: "standard", ENHANCED_IKEY: "enhanced"}


def parse_post(body: bytes) -> ParsedPost:
    """Reads one decoded telemetry body; never raises on bad input (it is counted instead)."""
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
    events: dict[tuple[str, str], int] = {}
    for envelope in items:
        event = _event(envelope)
        if event is None:
            skipped["bad_envelope"] += 1
            continue
        store, suffix, props, meas = event
        key = (store, suffix if suffix in KNOWN_EVENTS else "other")
        events[key] = events.get(key, 0) + 1
        fact = fact_of(suffix, store, props, meas)
        if fact is not None:
            facts.append(fact)
    return ParsedPost(
        tuple(facts),
        tuple((store, name, n) for (store, name), n in sorted(events.items())),
        tuple(sorted(skipped.items())),
    )


# -- recordings (copilot_record_telemetry) ----------------------------------------------------------------

DROPPED = "[dropped]"
# Properties that hold code, prompts or message text in the standard store: never recorded either.
_CONTENT_PROPERTIES = frozenset(
    {
        "messagetext",
        "hypotheticalpromptjson",
        "capturedcodejson",
        "prompt",
        "completion",
        "completiontext",
        "suggestion",
        "code",
        "codeblock",
        "message",
        "query",
        "filepath",
        "uri",
    }
)


def _redacted_envelope(envelope: Any) -> Any:
    if not isinstance(envelope, dict):
        return DROPPED
    data = _dict(envelope.get("data"))
    base = _dict(data.get("baseData"))
    out_base: dict[str, Any] = {"name": base.get("name") if isinstance(base.get("name"), str) else None}
    if store_of(envelope.get("iKey", envelope.get("ikey"))) == "enhanced":
        # The enhanced (restricted) store carries code and prompt snippets: nothing of it is kept.
        out_base["properties"] = out_base["measurements"] = DROPPED
    else:
        props = _dict(base.get("properties"))
        out_base["properties"] = {
            str(k): DROPPED if str(k).lower() in _CONTENT_PROPERTIES or not isinstance(v, str) else v[:256]
            for k, v in props.items()
        }
        measurements = _dict(base.get("measurements"))
        out_base["measurements"] = {str(k): v for k, v in measurements.items() if _number(v) is not None}
    base_type = data.get("baseType")
    return {
        "iKey": envelope.get("iKey"),
        "time": envelope.get("time") if isinstance(envelope.get("time"), str) else None,
        "tags": DROPPED,  # device, session and tracking ids
        "data": {"baseType": base_type if isinstance(base_type, str) else None, "baseData": out_base},
    }


def redacted_for_recording(body: bytes) -> Any:
    """The body a recording may hold: envelopes with the enhanced store's content and every code or prompt
    property dropped; a body that cannot be read is not recorded at all."""
    if len(body) > MAX_TELEMETRY_BYTES:
        return {"dropped": "too_large"}
    try:
        items, _, _ = envelopes(body)
    except (ValueError, RecursionError):
        return {"dropped": "malformed_body"}
    return [_redacted_envelope(e) for e in items]
