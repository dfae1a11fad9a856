"""Compares the proxy's day figures with GitHub's per user, day and field, and explains each difference."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date

from exporter.reconcile_github import GithubDay
from exporter.report_data import Day, UserDay
from exporter.values import quick_init

NANO = 1_000_000_000
FINAL_AFTER_DAYS = 3  # GitHub: data "typically finalizes within three full UTC days"

# Field -> whether GitHub derives it from IDE telemetry (missing for users who switched telemetry off).
FIELDS: dict[str, bool] = {
    "chat_turns": True,
    "completions": True,
    "accepted": True,
    "accepted_lines": True,
    "cli_prompts": False,  # CLI metrics are collected apart from IDE telemetry
    "ai_credits": False,  # billing, not telemetry
}
STATUSES = ("match", "differs", "not_final", "telemetry_off", "not_in_github_report", "not_via_proxy")
_HIGHER = {
    "completions": "GitHub also counts completions shown from the editor's cache, which send no request",
    "ai_credits": "credits spent outside the proxy (github.com, cloud agent, code review, other machines)",
}


@quick_init
@dataclass(frozen=True, slots=True)
class Row:
    """One compared figure; proxy/github are None where that side has no figure."""

    day: str
    user: str | None
    github_login: str
    field: str
    proxy: float | int | None
    github: float | int | None
    status: str
    note: str


def is_final(day: str, today: str) -> bool:
    """True once three full UTC days have passed since the day ended (day + 4 <= today)."""
    return (date.fromisoformat(today) - date.fromisoformat(day)).days > FINAL_AFTER_DAYS


def telemetry_off(entry: UserDay) -> bool:
    """The proxy's extended summary says it saw no completion telemetry from this user that day."""
    return entry.acceptance_known and entry.acceptance is None


def proxy_figures(entry: UserDay) -> dict[str, float | int | None]:
    """The proxy's side; a field is left out when the files cannot tell (no acceptance or credits key)."""
    out: dict[str, float | int | None] = {
        "chat_turns": entry.chat_turns - entry.cli_chat_turns,
        "completions": entry.completions,
        "cli_prompts": entry.cli_chat_turns,
    }
    if entry.acceptance_known:
        acc = entry.acceptance
        out["accepted"] = acc.accepted if acc else None
        out["accepted_lines"] = acc.accepted_lines if acc else None
    if entry.credits_nano is not None:
        out["ai_credits"] = entry.credits_nano / NANO
    return out


def github_figures(row: GithubDay) -> dict[str, float | int | None]:
    out: dict[str, float | int | None] = {
        "chat_turns": row.chat_turns,
        "completions": row.completions,
        "accepted": row.accepted,
        "accepted_lines": row.accepted_lines,
        "cli_prompts": row.cli_prompts,
    }
    if row.ai_credits is not None:
        out["ai_credits"] = row.ai_credits
    return out


def agrees(proxy: float, github: float, tolerance: float) -> bool:
    """Within tolerance of the larger figure; 1e-9 absorbs the decimal rounding of AI credits."""
    return abs(proxy - github) <= tolerance * max(abs(proxy), abs(github)) + 1e-9


@quick_init
@dataclass(frozen=True, slots=True)
class Context:
    """What every status decision of one user-day needs."""

    final: bool
    telemetry_off: bool
    tolerance: float


def status_both(field: str, p: float | int | None, g: float | int | None, ctx: Context) -> tuple[str, str]:
    """Both sides have the user-day."""
    if p is None or g is None:  # only acceptance can be None here: the proxy saw no telemetry
        return "telemetry_off", "the proxy saw no completion telemetry from the user"
    if agrees(p, g, ctx.tolerance):
        return "match", ""
    if not ctx.final:
        return "not_final", "GitHub's figures for this day may still change"
    if FIELDS[field] and ctx.telemetry_off and g < p:
        return "telemetry_off", "IDE telemetry off: GitHub's IDE figures lack this user's activity"
    if g > p:
        return "differs", "GitHub higher: " + _HIGHER.get(field, "activity that did not go through the proxy")
    return "differs", "GitHub lower"


def status_proxy_only(field: str, p: float | int | None, ctx: Context) -> tuple[str, str]:
    """The proxy has the user-day, GitHub's report has no row for the login."""
    if p == 0:
        return "match", "no activity on either side"
    if p is None:
        return "telemetry_off", "the proxy saw no completion telemetry from the user"
    if not ctx.final:
        return "not_final", "the day may still appear in GitHub's report"
    if FIELDS[field] and ctx.telemetry_off:
        return "telemetry_off", "IDE telemetry off: GitHub's report has no IDE activity for the user"
    return "not_in_github_report", "no row for the login in GitHub's report (unmapped login, or telemetry off)"


def status_github_only(g: float | int | None, proxy_has_day: bool) -> tuple[str, str]:
    """GitHub has the row, the proxy's files have no such user that day."""
    if g == 0:
        return "match", "no activity on either side"
    if not proxy_has_day:
        return "not_via_proxy", "no proxy summary for this day"
    return "not_via_proxy", "the user did not use Copilot through the proxy that day (or is not mapped)"


def compare_day(
    day: str,
    proxy_day: Day | None,
    github: Mapping[str, GithubDay],
    login_of: Mapping[str, str],
    today: str,
    tolerance: float,
) -> list[Row]:
    """Rows of one day: every proxy user and every GitHub login of the day, field by field."""
    rows: list[Row] = []
    users = dict(proxy_day.users) if proxy_day else {}
    by_login = {login_of.get(u, u).lower(): u for u in users}
    for login in sorted(set(by_login) | set(github)):
        user = by_login.get(login)
        entry = users.get(user) if user is not None else None
        gh = github.get(login)
        pf = proxy_figures(entry) if entry else {}
        gf = github_figures(gh) if gh else {}
        ctx = Context(is_final(day, today), entry is not None and telemetry_off(entry), tolerance)
        for field in FIELDS:
            # A field is compared where the side(s) that have the user-day have it: no acceptance key in an
            # older file, or no ai_credits_used on an older GitHub day, leaves nothing to compare.
            if (entry is not None and field not in pf) or (gh is not None and field not in gf):
                continue
            p, g = pf.get(field), gf.get(field)
            if entry is not None and gh is not None:
                status, note = status_both(field, p, g, ctx)
            elif entry is not None:
                status, note = status_proxy_only(field, p, ctx)
            else:
                status, note = status_github_only(g, proxy_day is not None)
            rows.append(Row(day, user, login, field, p, g, status, note))
    return rows
