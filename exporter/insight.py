"""The extended daily summary (copilot-insight_<day>.json): per user, everything /metrics knows of the day.

Versioned (`schema_version`) and documented in docs/reference.md. It holds every model call and every counted
interaction of the UTC day: interactions by kind, editor and language; model calls by kind, model and
initiator; tokens by kind, model and type; failed model calls by kind and code; skipped model calls by kind
and reason; AI credits (nano-AIU) by source, model and kind (only for users with credits); and, per
user, `acceptance` from the clients' telemetry posts (null when none was seen that day). Built from
events live, and from JSON log lines by the rebuild, with the same rule.
Since the teams feature (still schema_version 1: optional keys), a user with teams has `teams` (the teams of
the day's calls), and the document has a top-level `teams` roll-up: per team, its active users and the sum of
their totals (a user in two teams counts in both, so teams never sum to the org total).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from exporter.acceptance import AcceptanceTally
from exporter.events import UsageEvent
from exporter.teams import MAX_TEAMS_PER_USER

SCHEMA_VERSION = 1
TOTAL_KEYS = ("interactions", "model_calls", "input_tokens", "output_tokens", "errors", "skipped")
_SECTIONS = ("interactions", "model_calls", "tokens", "errors", "skipped")
_TOKEN_TYPES = ("input", "output", "cached", "reasoning")
CREDIT_SOURCES = ("server", "estimated")
_CREDIT_TREES = ("by_source", "by_model", "by_kind")


def insight_path(data_dir: Path, day: str, instance: str = "") -> Path:
    suffix = f".{instance}" if instance else ""
    return data_dir / "metrics" / f"copilot-insight_{day}{suffix}.json"


def _bump(tree: dict[str, Any], keys: Iterable[str], n: int) -> None:
    *path, last = keys
    for key in path:
        tree = tree.setdefault(key, {})
    tree[last] = tree.get(last, 0) + n


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _text(value: Any, default: str) -> str:
    return str(value) if value not in (None, "") else default


class InsightDay:
    """One UTC day of the extended summary, per user."""

    def __init__(self, day: str) -> None:
        self.day = day
        self.users: dict[str, dict[str, Any]] = {}
        self.acceptance: dict[str, AcceptanceTally] = {}

    def _user(self, user: str) -> dict[str, Any]:
        entry = self.users.get(user)
        if entry is None:
            entry = self.users[user] = {"totals": dict.fromkeys(TOTAL_KEYS, 0), **{s: {} for s in _SECTIONS}}
        return entry

    def add(self, rec: Mapping[str, Any]) -> bool:
        """Adds one call given as its JSON log fields (a UsageEvent's `log_fields()` or a parsed log line)."""
        counted = rec.get("counted") is True
        model_call = rec.get("model_call") is True
        telemetry = rec.get("telemetry")
        user = _text(rec.get("user"), "anonymous")
        if isinstance(telemetry, dict):
            self._user(user)
            self._tally(user).add(telemetry)
        if not (counted or model_call):
            return isinstance(telemetry, dict)
        entry = self._user(user)
        _add_teams(entry, rec.get("teams"))
        totals = entry["totals"]
        kind = _text(rec.get("kind"), "unknown")
        if counted:
            keys = (kind, _text(rec.get("editor"), "unknown"), _text(rec.get("language"), "unknown"))
            _bump(entry["interactions"], keys, 1)
            totals["interactions"] += 1
        if not model_call:
            return True
        model = _text(rec.get("model"), "unknown")
        _bump(entry["model_calls"], (kind, model, _text(rec.get("initiator"), "unknown")), 1)
        totals["model_calls"] += 1
        for kind_of_token in _TOKEN_TYPES:
            n = _int(rec.get(f"{kind_of_token}_tokens"))
            if n:
                _bump(entry["tokens"], (kind, model, kind_of_token), n)
                if kind_of_token in ("input", "output"):
                    totals[f"{kind_of_token}_tokens"] += n
        status = rec.get("status")
        if not isinstance(status, int) or status >= 400:
            _bump(entry["errors"], (kind, str(status) if isinstance(status, int) else "error"), 1)
            totals["errors"] += 1
        if not counted:
            _bump(entry["skipped"], (kind, _text(rec.get("skip_reason"), "unknown")), 1)
            totals["skipped"] += 1
        _add_credits(entry, rec, kind, model)
        return True

    def _tally(self, user: str) -> AcceptanceTally:
        tally = self.acceptance.get(user)
        if tally is None:
            tally = self.acceptance[user] = AcceptanceTally()
        return tally

    def add_event(self, event: UsageEvent) -> bool:
        return self.add(
            {
                "telemetry": event.telemetry.log() if event.telemetry is not None else None,
                "user": event.user,
                "counted": event.counted,
                "model_call": event.model_call,
                "kind": event.kind,
                "editor": event.editor,
                "language": event.language,
                "model": event.model,
                "initiator": event.initiator,
                "input_tokens": event.input_tokens,
                "output_tokens": event.output_tokens,
                "cached_tokens": event.cached_tokens,
                "reasoning_tokens": event.reasoning_tokens,
                "status": event.status,
                "skip_reason": event.skip_reason,
                "credits_nano_aiu": event.credits_nano_aiu,
                "credits_source": event.credits_source,
                "teams": event.teams,
            }
        )

    def add_count(self, user: str, section: str, keys: tuple[str, ...], n: int, total: str | None) -> None:
        """Adds `n` to one leaf of a user's section (and to a total): for summaries built from counters."""
        entry = self._user(user)
        _bump(entry[section], keys, n)
        if total is not None:
            entry["totals"][total] += n

    def add_teams(self, user: str, teams: Iterable[str]) -> None:
        _add_teams(self._user(user), list(teams))

    def merge(self, doc: Any) -> None:
        """Adds the counts of an extended summary document (a file written earlier the same day)."""
        if not isinstance(doc, dict) or not isinstance(doc.get("users"), dict):
            raise ValueError("not an extended daily summary document")
        for user, entry in doc["users"].items():
            if not isinstance(entry, dict):
                continue
            mine = self._user(str(user))
            totals = entry.get("totals")
            for key in TOTAL_KEYS:
                mine["totals"][key] += _int(totals.get(key)) if isinstance(totals, dict) else 0
            for section in _SECTIONS:
                _merge_tree(mine[section], entry.get(section))
            if isinstance(entry.get("acceptance"), dict):
                self._tally(str(user)).merge(entry["acceptance"])
            _merge_credits(mine, entry.get("credits"))
            _add_teams(mine, entry.get("teams"))

    def totals(self) -> dict[str, int]:
        out = dict.fromkeys(TOTAL_KEYS, 0)
        for entry in self.users.values():
            for key in TOTAL_KEYS:
                out[key] += entry["totals"][key]
        return out

    def _acceptance_doc(self, user: str) -> dict[str, Any] | None:
        """null, not zeros, for a user whose telemetry was not seen: unknown acceptance is not 0 %."""
        tally = self.acceptance.get(user)
        return tally.to_doc() if tally is not None and tally.seen else None

    def team_rollup(self) -> dict[str, dict[str, Any]]:
        """Per team: its users active this day and the sum of their totals."""
        out: dict[str, dict[str, Any]] = {}
        for entry in self.users.values():
            for team in entry.get("teams", ()):
                roll = out.setdefault(team, {"active_users": 0, "totals": dict.fromkeys(TOTAL_KEYS, 0)})
                roll["active_users"] += 1
                for key in TOTAL_KEYS:
                    roll["totals"][key] += entry["totals"][key]
        return dict(sorted(out.items()))

    def to_doc(self) -> dict[str, Any]:
        users = {user: {**entry, "acceptance": self._acceptance_doc(user)} for user, entry in self.users.items()}
        doc = {"schema_version": SCHEMA_VERSION, "day": self.day, "totals": self.totals(), "users": users}
        teams = self.team_rollup()
        if teams:
            doc["teams"] = teams
        return doc

    def to_json(self) -> str:
        return json.dumps(self.to_doc(), indent=4, ensure_ascii=False)


def _credits(entry: dict[str, Any]) -> dict[str, Any]:
    credits = entry.get("credits")
    if credits is None:
        credits = entry["credits"] = {"nano_aiu": 0, **{t: {} for t in _CREDIT_TREES}}
    return credits


def _add_credits(entry: dict[str, Any], rec: Mapping[str, Any], kind: str, model: str) -> None:
    """The call's counted credits (the same figure as copilot_nano_aiu_total) into the user's `credits`."""
    nano = _int(rec.get("credits_nano_aiu"))
    source = rec.get("credits_source")
    if not nano or source not in CREDIT_SOURCES:
        return
    credits = _credits(entry)
    credits["nano_aiu"] += nano
    for tree, key in zip(_CREDIT_TREES, (str(source), model, kind), strict=True):
        credits[tree][key] = credits[tree].get(key, 0) + nano


def _merge_credits(mine: dict[str, Any], other: Any) -> None:
    if not isinstance(other, dict) or not _int(other.get("nano_aiu")):
        return
    credits = _credits(mine)
    credits["nano_aiu"] += _int(other.get("nano_aiu"))
    for tree in _CREDIT_TREES:
        _merge_tree(credits[tree], other.get(tree), 4)


def _add_teams(entry: dict[str, Any], teams: Any) -> None:
    """Adds the teams of a call (a list of names) to the user's teams of the day (kept sorted, bounded)."""
    if not isinstance(teams, list | tuple) or not teams:
        return
    names = {str(t) for t in teams if isinstance(t, str) and t}
    known = entry.get("teams")
    if isinstance(known, list) and names.issubset(known):
        return
    entry["teams"] = sorted(names.union(known or ()))[:MAX_TEAMS_PER_USER]


def _merge_tree(into: dict[str, Any], other: Any, depth: int = 0) -> None:
    if not isinstance(other, dict) or depth > 4:
        return
    for key, value in other.items():
        if isinstance(value, dict):
            sub = into.setdefault(str(key), {})
            if isinstance(sub, dict):
                _merge_tree(sub, value, depth + 1)
        elif _int(value):
            into[str(key)] = into.get(str(key), 0) + _int(value)


def insight_from_records(day: str, records: Iterable[Mapping[str, Any]]) -> InsightDay:
    """Rebuilds a day's extended summary from parsed JSON log records (of any day: others are ignored)."""
    summary = InsightDay(day)
    for rec in records:
        if str(rec.get("timestamp", ""))[:10] == day:
            summary.add(rec)
    return summary
