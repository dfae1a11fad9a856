"""Reads the daily summary files (original and extended) of a data dir into per-user, per-day values."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from exporter.classify import CHAT_KINDS, Kind
from exporter.values import quick_init

ORIGINAL_PREFIX = "copilot-usage_"
EXTENDED_PREFIX = "copilot-insight_"
_CHAT = frozenset(k.value for k in CHAT_KINDS)
_COMPLETION = Kind.COMPLETION.value
# The original schema keeps the chat kinds together; days read only from it show them under this kind.
ORIGINAL_CHAT_KIND = "chat (any)"
_FILE_DAY = re.compile(r"^(copilot-usage|copilot-insight)_(\d{4}-\d{2}-\d{2})\.json$")
# `vscode-1.96.2`, `JetBrains-IC-2024.1`, `cli-1.0.3`: the editor is the part before the first `-<digit>`.
_EDITOR_KEY = re.compile(r"^(.*?)-\d")


class SummaryError(ValueError):
    """A summary file that cannot be used; the message starts with the file's path."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)


@quick_init
@dataclass(frozen=True, slots=True)
class Acceptance:
    """Completion telemetry of a user and day: shown, accepted and the lines they added."""

    shown: int
    accepted: int
    accepted_lines: int


@quick_init
@dataclass(frozen=True, slots=True)
class UserDay:
    """One user's figures on one UTC day; extended-only figures are None when only the original file exists."""

    user: str
    chat_turns: int
    completions: int
    cli_chat_turns: int
    editors: Mapping[str, int]
    languages: Mapping[str, int]
    kinds: Mapping[str, int]
    interactions: int | None = None
    model_calls: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    errors: int | None = None
    skipped: int | None = None
    models: Mapping[str, int] = field(default_factory=dict)
    model_tokens: Mapping[str, int] = field(default_factory=dict)
    # acceptance_known is False when the file has no "acceptance" key (older files, rebuilt days);
    # True with acceptance None means the proxy saw no telemetry from the user that day.
    acceptance_known: bool = False
    acceptance: Acceptance | None = None
    credits_nano: int | None = None
    credits_by_source: Mapping[str, int] = field(default_factory=dict)
    credits_by_model: Mapping[str, int] = field(default_factory=dict)
    teams: tuple[str, ...] = ()


@quick_init
@dataclass(frozen=True, slots=True)
class Day:
    """One UTC day read from its files; `sources` names the files found ("original", "extended")."""

    day: str
    sources: tuple[str, ...]
    users: Mapping[str, UserDay]
    file_totals: Mapping[str, int]


def count(value: Any) -> int:
    """A non-negative integer count from a file value; anything else counts as 0 (never bool)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return 0
    return value


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def editor_name(summary_key: str) -> str:
    """The editor label of an original-schema editor key (`vscode-1.96.2` → `vscode`)."""
    match = _EDITOR_KEY.match(summary_key)
    return (match.group(1) if match else summary_key).lower() or "unknown"


def _add(target: dict[str, int], key: str, n: int) -> None:
    if n:
        target[key] = target.get(key, 0) + n


def scan_days(metrics_dir: Path) -> list[str]:
    """The days that have an original or an extended summary file, sorted."""
    days = {m.group(2) for p in metrics_dir.iterdir() if (m := _FILE_DAY.match(p.name))}
    return sorted(days)


def day_range(first: str, last: str) -> list[str]:
    """Every day from first to last inclusive (YYYY-MM-DD)."""
    start, end = date.fromisoformat(first), date.fromisoformat(last)
    return [(start + timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise SummaryError(path, f"cannot read: {e}") from e
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise SummaryError(path, f"not JSON: {e}") from e
    if not isinstance(doc, dict):
        raise SummaryError(path, "not a summary object")
    return doc


def _original_user(user: str, entry: dict[str, Any]) -> dict[str, Any]:
    editors: dict[str, int] = {}
    languages: dict[str, int] = {}
    chat_turns = cli = completions = 0
    for key, n in _obj(entry.get("chat")).items():
        name = editor_name(str(key))
        _add(editors, name, count(n))
        chat_turns += count(n)
        cli += count(n) if name == "cli" else 0
    for key, langs in _obj(entry.get("completions")).items():
        for lang, n in _obj(langs).items():
            _add(editors, editor_name(str(key)), count(n))
            _add(languages, str(lang), count(n))
            completions += count(n)
    kinds: dict[str, int] = {}
    _add(kinds, ORIGINAL_CHAT_KIND, chat_turns)
    _add(kinds, _COMPLETION, completions)
    return {
        "user": user,
        "chat_turns": chat_turns,
        "completions": completions,
        "cli_chat_turns": cli,
        "editors": editors,
        "languages": languages,
        "kinds": kinds,
    }


def _interactions(entry: dict[str, Any]) -> dict[str, Any]:
    editors: dict[str, int] = {}
    languages: dict[str, int] = {}
    kinds: dict[str, int] = {}
    chat_turns = cli = completions = 0
    for kind, by_editor in _obj(entry.get("interactions")).items():
        for editor, by_lang in _obj(by_editor).items():
            for lang, n in _obj(by_lang).items():
                n = count(n)
                _add(kinds, str(kind), n)
                _add(editors, str(editor), n)
                if kind == _COMPLETION:
                    completions += n
                    _add(languages, str(lang), n)
                elif kind in _CHAT:
                    chat_turns += n
                    cli += n if editor == "cli" else 0
    return {
        "chat_turns": chat_turns,
        "completions": completions,
        "cli_chat_turns": cli,
        "editors": editors,
        "languages": languages,
        "kinds": kinds,
    }


def _models(entry: dict[str, Any]) -> tuple[dict[str, int], dict[str, int]]:
    calls: dict[str, int] = {}
    tokens: dict[str, int] = {}
    for by_model in _obj(entry.get("model_calls")).values():
        for model, by_initiator in _obj(by_model).items():
            for n in _obj(by_initiator).values():
                _add(calls, str(model), count(n))
    for by_model in _obj(entry.get("tokens")).values():
        for model, io in _obj(by_model).items():
            _add(tokens, str(model), count(_obj(io).get("input")) + count(_obj(io).get("output")))
    return calls, tokens


def _optional_parts(entry: dict[str, Any]) -> dict[str, Any]:
    """acceptance, credits and teams: each may be absent (older files) or, for acceptance, null."""
    parts: dict[str, Any] = {}
    if "acceptance" in entry:
        parts["acceptance_known"] = True
        acc = entry["acceptance"]
        if isinstance(acc, dict):
            parts["acceptance"] = Acceptance(
                count(acc.get("shown")), count(acc.get("accepted")), count(acc.get("accepted_lines"))
            )
    credits = entry.get("credits")
    if isinstance(credits, dict):
        parts["credits_nano"] = count(credits.get("nano_aiu"))
        parts["credits_by_source"] = {str(k): count(v) for k, v in _obj(credits.get("by_source")).items()}
        parts["credits_by_model"] = {str(k): count(v) for k, v in _obj(credits.get("by_model")).items()}
    teams = entry.get("teams")
    if isinstance(teams, list):
        parts["teams"] = tuple(sorted({str(t) for t in teams if isinstance(t, str | int) and str(t)}))
    return parts


def _extended_user(user: str, entry: dict[str, Any], original: dict[str, Any] | None) -> dict[str, Any]:
    totals = _obj(entry.get("totals"))
    values: dict[str, Any] = {"user": user, **_interactions(entry)}
    if original is not None:
        # The original file stays the reference for its own two counts (it is what the original tool showed).
        for key in ("chat_turns", "completions", "cli_chat_turns"):
            values[key] = original[key]
    values.update(
        interactions=count(totals.get("interactions")),
        model_calls=count(totals.get("model_calls")),
        input_tokens=count(totals.get("input_tokens")),
        output_tokens=count(totals.get("output_tokens")),
        errors=count(totals.get("errors")),
        skipped=count(totals.get("skipped")),
    )
    values["models"], values["model_tokens"] = _models(entry)
    values.update(_optional_parts(entry))
    return values


def _read_summary(path: Path, key: str, problems: list[SummaryError]) -> dict[str, Any] | None:
    """One file of a day; an unusable one is added to problems and treated as absent."""
    try:
        doc = _read_json(path)
        if doc is not None and not isinstance(doc.get(key), dict):
            raise SummaryError(path, f"no {key} object")
    except SummaryError as e:
        problems.append(e)
        return None
    return doc


def load_day(metrics_dir: Path, day: str, problems: list[SummaryError] | None = None) -> Day | None:
    """Both files of a day, None when neither is usable; an unusable file is appended to problems (or raised)."""
    found: list[SummaryError] = []
    original = _read_summary(metrics_dir / f"{ORIGINAL_PREFIX}{day}.json", "usage", found)
    extended = _read_summary(metrics_dir / f"{EXTENDED_PREFIX}{day}.json", "users", found)
    if problems is None and found:
        raise found[0]
    (problems if problems is not None else []).extend(found)
    if original is None and extended is None:
        return None
    orig_users = {str(u): _original_user(str(u), _obj(e)) for u, e in _obj((original or {}).get("usage")).items()}
    users: dict[str, UserDay] = {}
    for name, entry in _obj((extended or {}).get("users")).items():
        users[str(name)] = UserDay(**_extended_user(str(name), _obj(entry), orig_users.get(str(name))))
    for name, values in orig_users.items():
        if name not in users:
            users[name] = UserDay(**values)
    file_totals: dict[str, int] = {}
    if original is not None:
        file_totals["chat_turns"] = count(original.get("total_chat_turns"))
        file_totals["completions"] = count(original.get("total_completions_count"))
    for key, value in _obj((extended or {}).get("totals")).items():
        file_totals[str(key)] = count(value)
    sources = tuple(s for s, doc in (("original", original), ("extended", extended)) if doc is not None)
    return Day(day, sources, users, file_totals)


def sum_maps(maps: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """Key-wise sum, sorted by value descending then key."""
    total: dict[str, int] = {}
    for m in maps:
        for k, v in m.items():
            _add(total, k, v)
    return dict(sorted(total.items(), key=lambda kv: (-kv[1], kv[0])))
