"""Reads GitHub's per-user daily usage report (`users-1-day` NDJSON) into the figures reconcile compares."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from exporter.report_data import count
from exporter.values import quick_init

# The chat features of totals_by_feature: chat_panel_{ask,edit,agent,plan,custom,unknown}_mode and chat_inline.
_CHAT_FEATURE_PREFIX = "chat_"
_COMPLETION_FEATURE = "code_completion"


@quick_init
@dataclass(frozen=True, slots=True)
class GithubDay:
    """One row of the report: a GitHub login's figures on a UTC day (ai_credits None when the field is absent)."""

    login: str
    day: str
    chat_turns: int
    completions: int
    accepted: int
    accepted_lines: int
    cli_prompts: int
    ai_credits: float | None


@quick_init
@dataclass(frozen=True, slots=True)
class LineProblem:
    """A line of an NDJSON file that was skipped, and why."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


def _features(row: Mapping[str, Any]) -> list[dict[str, Any]]:
    value = row.get("totals_by_feature")
    return [f for f in value if isinstance(f, dict)] if isinstance(value, list) else []


def _chat_turns(row: Mapping[str, Any]) -> int:
    """User prompts in IDE chat: the chat features' sum, else the row's total (older rows lack the array)."""
    if not isinstance(row.get("totals_by_feature"), list):
        return count(row.get("user_initiated_interaction_count"))
    return sum(
        count(f.get("user_initiated_interaction_count"))
        for f in _features(row)
        if str(f.get("feature", "")).startswith(_CHAT_FEATURE_PREFIX)
    )


def figures(row: Mapping[str, Any]) -> GithubDay:
    """The compared figures of a validated row; absent arrays and objects count as no activity."""
    completion = [f for f in _features(row) if f.get("feature") == _COMPLETION_FEATURE]
    cli = row.get("totals_by_cli")
    credits = row.get("ai_credits_used")
    return GithubDay(
        login=str(row["user_login"]).lower(),  # GitHub logins are case-insensitive
        day=str(row["day"]),
        chat_turns=_chat_turns(row),
        completions=sum(count(f.get("code_generation_activity_count")) for f in completion),
        accepted=sum(count(f.get("code_acceptance_activity_count")) for f in completion),
        accepted_lines=sum(count(f.get("loc_added_sum")) for f in completion),
        cli_prompts=count(cli.get("prompt_count")) if isinstance(cli, dict) else 0,
        ai_credits=float(credits) if isinstance(credits, int | float) and not isinstance(credits, bool) else None,
    )


def _problem(row: Any) -> str | None:
    """Why a parsed line is not a usable row, or None."""
    if not isinstance(row, dict):
        return "not a JSON object"
    login = row.get("user_login")
    if not isinstance(login, str) or not login.strip():
        return "no user_login"
    day = row.get("day")
    try:
        if not isinstance(day, str) or len(day) != 10:
            raise ValueError
        date.fromisoformat(day)
    except ValueError:
        return f"no valid day (YYYY-MM-DD): {day!r}"
    return None


def parse_lines(name: str, lines: Iterable[str]) -> tuple[list[tuple[int, GithubDay]], list[LineProblem]]:
    """Rows of one NDJSON file with their 1-based line numbers; malformed lines are returned as problems."""
    rows: list[tuple[int, GithubDay]] = []
    problems: list[LineProblem] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            problems.append(LineProblem(name, number, f"not JSON: {e}"))
            continue
        reason = _problem(row)
        if reason:
            problems.append(LineProblem(name, number, reason))
            continue
        rows.append((number, figures(row)))
    return rows, problems


def read_reports(paths: Iterable[Path]) -> tuple[dict[tuple[str, str], GithubDay], list[LineProblem]]:
    """Every file's rows keyed by (login, day); a repeated key is a problem and the first row is kept.

    Raises OSError for a file that cannot be read at all."""
    merged: dict[tuple[str, str], GithubDay] = {}
    problems: list[LineProblem] = []
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            rows, found = parse_lines(str(path), f)
        problems.extend(found)
        for number, row in rows:
            key = (row.login, row.day)
            if key in merged:
                problems.append(LineProblem(str(path), number, f"a second row for {row.login} on {row.day}: skipped"))
                continue
            merged[key] = row
    return merged, problems
