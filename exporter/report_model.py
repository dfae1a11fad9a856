"""Sums the days of a report range into the figures the HTML report shows (totals, users, teams, series)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from exporter.report_data import Acceptance, Day, UserDay, sum_maps
from exporter.values import quick_init


def _opt_sum(values: Iterable[int | None]) -> int | None:
    """Sum of the known values; None when no value is known (no day had the figure)."""
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def ratio(acc: Acceptance | None) -> float | None:
    """accepted / shown; None without telemetry or with nothing shown (never rendered as 0 %)."""
    if acc is None or acc.shown == 0:
        return None
    return acc.accepted / acc.shown


def _acc_sum(items: Iterable[Acceptance | None]) -> Acceptance | None:
    seen = [a for a in items if a is not None]
    if not seen:
        return None
    return Acceptance(sum(a.shown for a in seen), sum(a.accepted for a in seen), sum(a.accepted_lines for a in seen))


@quick_init
@dataclass(frozen=True, slots=True)
class Totals:
    """Summed figures of a set of user-days (a user over the range, a team, a day, everything)."""

    chat_turns: int
    completions: int
    interactions: int | None
    model_calls: int | None
    input_tokens: int | None
    output_tokens: int | None
    errors: int | None
    acceptance: Acceptance | None
    credits_nano: int | None

    @property
    def acceptance_ratio(self) -> float | None:
        return ratio(self.acceptance)


def totals_of(entries: Sequence[UserDay]) -> Totals:
    return Totals(
        chat_turns=sum(e.chat_turns for e in entries),
        completions=sum(e.completions for e in entries),
        interactions=_opt_sum(e.interactions for e in entries),
        model_calls=_opt_sum(e.model_calls for e in entries),
        input_tokens=_opt_sum(e.input_tokens for e in entries),
        output_tokens=_opt_sum(e.output_tokens for e in entries),
        errors=_opt_sum(e.errors for e in entries),
        acceptance=_acc_sum(e.acceptance for e in entries),
        credits_nano=_opt_sum(e.credits_nano for e in entries),
    )


@quick_init
@dataclass(frozen=True, slots=True)
class UserRow:
    """One user over the range; teams is the union of the teams of their days."""

    user: str
    days_active: int
    totals: Totals
    teams: tuple[str, ...]


@quick_init
@dataclass(frozen=True, slots=True)
class TeamRow:
    """A team over the range: members are the users with that team on any day; a user counts in each team."""

    team: str
    members: int
    totals: Totals


@quick_init
@dataclass(frozen=True, slots=True)
class DayRow:
    """A day of the range; day is None-free, sources is empty for a day without files."""

    day: str
    sources: tuple[str, ...]
    users: int
    totals: Totals


@quick_init
@dataclass(frozen=True, slots=True)
class Report:
    """Everything the page shows, computed once."""

    first: str
    last: str
    days: tuple[DayRow, ...]
    totals: Totals
    users: tuple[UserRow, ...]
    teams: tuple[TeamRow, ...]
    editors: dict[str, int]
    languages: dict[str, int]
    kinds: dict[str, int]
    models: dict[str, int]
    model_tokens: dict[str, int]
    credits_by_source: dict[str, int]
    credits_by_model: dict[str, int]
    skipped_files: tuple[str, ...]

    @property
    def days_with_data(self) -> int:
        return sum(1 for d in self.days if d.sources)


def build_report(range_days: Sequence[str], loaded: dict[str, Day], skipped_files: Sequence[str] = ()) -> Report:
    """The report of range_days; days missing from loaded are days without data."""
    entries = [e for d in loaded.values() for e in d.users.values()]
    by_user: dict[str, list[UserDay]] = {}
    for e in entries:
        by_user.setdefault(e.user, []).append(e)
    users = tuple(
        UserRow(name, len(es), totals_of(es), tuple(sorted({t for e in es for t in e.teams})))
        for name, es in sorted(by_user.items())
    )
    by_team: dict[str, list[UserDay]] = {}
    for e in entries:
        for team in e.teams:
            by_team.setdefault(team, []).append(e)
    teams = tuple(TeamRow(team, len({e.user for e in es}), totals_of(es)) for team, es in sorted(by_team.items()))
    days = tuple(
        DayRow(day, loaded[day].sources, len(loaded[day].users), totals_of(list(loaded[day].users.values())))
        if day in loaded
        else DayRow(day, (), 0, totals_of([]))
        for day in range_days
    )
    return Report(
        first=range_days[0],
        last=range_days[-1],
        days=days,
        totals=totals_of(entries),
        users=users,
        teams=teams,
        editors=sum_maps(e.editors for e in entries),
        languages=sum_maps(e.languages for e in entries),
        kinds=sum_maps(e.kinds for e in entries),
        models=sum_maps(e.models for e in entries),
        model_tokens=sum_maps(e.model_tokens for e in entries),
        credits_by_source=sum_maps(e.credits_by_source for e in entries),
        credits_by_model=sum_maps(e.credits_by_model for e in entries),
        skipped_files=tuple(skipped_files),
    )
